#!/usr/bin/env python3
"""diffusers baseline for `curate bench vae`: the real-size FLUX.1 VAE
(AutoencoderKL, block_out_channels 128/256/512/512) on CPU, float32.

Weights are random (seeded), never downloaded. Three jobs:

    # 1. write seeded real-size weights in Black Forest Labs' ae.safetensors layout (~335 MB)
    python pipelines/tools/bench_vae_diffusers.py --write-weights /tmp/flux-vae-random/ae.safetensors

    # 2. time encode (latent_dist.mean) at each size, one JSON line per size
    python pipelines/tools/bench_vae_diffusers.py --weights /tmp/flux-vae-random/ae.safetensors \\
        --sizes 256,512 --batch 1 --iters 3 --threads 2 [--decode]

    # 3. save one 256x256 input and its diffusers outputs, for the Rust side to compare
    python pipelines/tools/bench_vae_diffusers.py --weights /tmp/flux-vae-random/ae.safetensors \\
        --dump-latent /tmp/flux-vae-random/latent256.safetensors

(2 and 3 can be combined.) The key map and the seeded init are shared with
fixtures/models/make_flux_vae_tiny.py (imported from there). The weights come
from the same init as the tiny fixture: in sorted BFL-key order from
torch.Generator().manual_seed(seed): GroupNorm gains 1 + 0.1 N(0,1), biases
0.05 N(0,1), conv weights N(0, 1/fan_in).

Needs torch, diffusers, safetensors, numpy, pillow. diffusers 0.42.1 needs
huggingface-hub >= 1.32, which transformers 4.57.1 refuses, so run it from an
environment without transformers (see fixtures/models/flux-vae-tiny/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "fixtures", "models"))

import torch  # noqa: E402

import make_flux_vae_tiny as fv  # noqa: E402

BOC = fv.FLUX_BLOCK_OUT_CHANNELS
DUMP_PHOTO = "photos/astronaut-full.jpg"  # 256x256 in fixtures/images


def write_weights(path: str, seed: int) -> None:
    from safetensors.torch import save_file

    t = time.perf_counter()
    sd = fv.seeded_bfl_weights(BOC, seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(dict(sorted(sd.items())), path, metadata={"format": "pt"})
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {path}: {len(sd)} tensors, {n} parameters, {os.path.getsize(path)} bytes, "
          f"seed {seed}, {time.perf_counter() - t:.1f} s", file=sys.stderr)


def load_vae(path: str):
    from safetensors.torch import load_file

    sd = load_file(path)
    for k, v in sd.items():
        assert v.dtype == torch.float32, (k, v.dtype)
    return fv.build_diffusers(BOC, sd)


def make_input(size: int, batch: int) -> torch.Tensor:
    """A real photo (astronaut, 256x256) resized to size x size, repeated batch times."""
    crop = fv.photo_crop(DUMP_PHOTO, (size, size))
    return fv.to_model_input([crop] * batch)


def bench(vae, size: int, batch: int, iters: int, threads: int, decode: bool) -> list[dict]:
    import diffusers

    x = make_input(size, batch)
    base = {"impl": "diffusers", "size": size, "batch": batch, "threads": threads,
            "torch": torch.__version__, "diffusers": diffusers.__version__}
    rows = []
    with torch.inference_mode():
        def enc():
            return vae.encode(x).latent_dist.mean

        mean = enc()  # warm-up
        t = time.perf_counter()
        for _ in range(iters):
            mean = enc()
        s = time.perf_counter() - t
        rows.append({**base, "op": "encode", "iters": iters, "images_per_s": iters * batch / s,
                     "s_per_image": s / (iters * batch)})
        if decode:
            z = mean.clone()  # decode input = latent / scale + shift = the posterior mean

            def dec():
                return vae.decode(z).sample

            dec()
            t = time.perf_counter()
            for _ in range(iters):
                dec()
            s = time.perf_counter() - t
            rows.append({**base, "op": "decode", "iters": iters, "images_per_s": iters * batch / s,
                         "s_per_image": s / (iters * batch)})
    return rows


def dump_latent(vae, path: str) -> None:
    from safetensors.torch import save_file

    x = make_input(256, 1)
    with torch.inference_mode():
        dist = vae.encode(x).latent_dist
        latent = (dist.mean - fv.SHIFT_FACTOR) * fv.SCALING_FACTOR
    out = {
        "input": x.contiguous(),                   # [1,3,256,256] in [-1,1]
        "mean": dist.mean.contiguous().clone(),    # [1,16,32,32] posterior mean (unscaled)
        "latent": latent.contiguous().clone(),     # (mean - 0.1159) * 0.3611
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(out, path, metadata={"format": "pt"})
    print(f"wrote {path}: input {list(x.shape)}, mean {list(dist.mean.shape)}; mean std "
          f"{float(dist.mean.std()):.4f}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-weights", metavar="PATH", help="write seeded real-size BFL-layout weights and exit")
    ap.add_argument("--seed", type=int, default=fv.SEED, help="seed for --write-weights (default 0)")
    ap.add_argument("--weights", metavar="PATH", help="BFL-layout (ae.safetensors-style) f32 weights")
    ap.add_argument("--sizes", default="256,512", help="square input sizes, multiples of 8 (default 256,512)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=0, help="timed iterations after 1 warm-up (0: no timing)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--decode", action="store_true", help="also time decode of the encoded mean")
    ap.add_argument("--dump-latent", metavar="PATH", help="save input/mean/latent of one 256x256 photo")
    args = ap.parse_args()

    if args.write_weights:
        write_weights(args.write_weights, args.seed)
        return
    if not args.weights:
        ap.error("--weights (or --write-weights) is required")
    if args.iters <= 0 and not args.dump_latent:
        ap.error("nothing to do: give --iters N and/or --dump-latent PATH")

    torch.set_num_threads(args.threads)
    vae = load_vae(args.weights)
    if args.dump_latent:
        dump_latent(vae, args.dump_latent)
    if args.iters > 0:
        for size in (int(s) for s in args.sizes.split(",") if s.strip()):
            assert size % 8 == 0, size
            for row in bench(vae, size, args.batch, args.iters, args.threads, args.decode):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
