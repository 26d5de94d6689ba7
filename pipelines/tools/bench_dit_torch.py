#!/usr/bin/env python3
"""One oboro DiT block in PyTorch with the weights curate's candle benchmark wrote.

Run after `cargo test -p curate-gen --test bench_dit -- --ignored --nocapture
report_block_vs_torch` (which writes target/bench-dit/{block.safetensors,
block_config.json, candle.json}):

    python pipelines/tools/bench_dit_torch.py [--dir target/bench-dit] [--threads N]

It rebuilds the block (crates/curate-gen/src/dit.rs `Block`: sandwich RMS
norms with time-conditioned scale and gate, joint attention with QK RMS-norm
and partial 2D RoPE, SwiGLU), checks that its output equals candle's, times
forward and forward+backward the same way, and prints the candle/torch ratio
and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

import torch
from safetensors.torch import load_file


def rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(prefix, h, w, hd, theta):
    q = hd // 4
    freqs = torch.tensor([theta ** (-(4.0 * k) / hd) for k in range(q)], dtype=torch.float64)
    s = prefix + h * w
    cos = torch.ones(s, hd, dtype=torch.float64)
    sin = torch.zeros(s, hd, dtype=torch.float64)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    ang = torch.cat([rows[:, None] * freqs[None], cols[:, None] * freqs[None]], dim=1)  # [N, hd/2]
    full = torch.cat([ang, ang], dim=1)
    cos[prefix:] = torch.cos(full)
    sin[prefix:] = torch.sin(full)
    return cos.float(), sin.float()


def block(x, c_act, W, cfg, rope):
    w, heads, eps = cfg["width"], cfg["heads"], cfg["eps"]
    hd = w // heads
    b, s, _ = x.shape
    m = (c_act @ W["adaln.weight"].T + W["adaln.bias"])[:, None, :]
    s1, g1, s2, g2 = m.split(w, dim=-1)
    h = rms(x, W["norm1.weight"], eps) * (1 + s1)
    qkv = h @ W["attn.qkv.weight"].T + W["attn.qkv.bias"]
    q, k, v = [t.reshape(b, s, heads, hd).transpose(1, 2) for t in qkv.split(w, dim=-1)]
    q = rms(q, W["attn.q_norm.weight"], eps)
    k = rms(k, W["attn.k_norm.weight"], eps)
    cos, sin = rope

    def rot(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], dim=-1) * sin

    q, k = rot(q), rot(k)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    a = (p @ v).transpose(1, 2).reshape(b, s, w)
    a = a @ W["attn.proj.weight"].T + W["attn.proj.bias"]
    x = x + rms(a, W["norm2.weight"], eps) * g1
    h = rms(x, W["norm3.weight"], eps) * (1 + s2)
    f = (torch.nn.functional.silu(h @ W["mlp.w1.weight"].T) * (h @ W["mlp.w3.weight"].T)) @ W["mlp.w2.weight"].T
    return x + rms(f, W["norm4.weight"], eps) * g2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="target/bench-dit")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: candle's count)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    t = load_file(os.path.join(args.dir, "block.safetensors"))
    cfg = json.load(open(os.path.join(args.dir, "block_config.json")))
    cand = json.load(open(os.path.join(args.dir, "candle.json")))
    torch.set_num_threads(args.threads or cand["threads"])
    W = {k[2:]: v for k, v in t.items() if k.startswith("w.")}
    x, c_act, y_ref = t["x"], t["c_act"], t["y"]
    gh, gw = cfg["grid"]
    rope = rope_tables(cfg["text_tokens"] + 1, gh, gw, cfg["width"] // cfg["heads"], cfg["rope_theta"])
    with torch.no_grad():
        y = block(x, c_act, W, cfg, rope)
        diff = (y - y_ref).abs().max().item()
        for _ in range(2):
            block(x, c_act, W, cfg, rope)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            block(x, c_act, W, cfg, rope)
        fwd = (time.perf_counter() - t0) / args.reps
    Wg = {k: v.clone().requires_grad_(True) for k, v in W.items()}
    xg = x.clone().requires_grad_(True)
    block(xg, c_act, Wg, cfg, rope).pow(2).mean().backward()
    t0 = time.perf_counter()
    for _ in range(args.reps):
        block(xg, c_act, Wg, cfg, rope).pow(2).mean().backward()
    fb = (time.perf_counter() - t0) / args.reps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "bench": "report_block",
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "max_abs_diff_vs_candle": diff,
        "forward_ms": round(fwd * 1e3, 1),
        "forward_backward_ms": round(fb * 1e3, 1),
        "peak_rss_mib": round(rss),
        "candle_over_torch_forward": round(cand["forward_ms"] / (fwd * 1e3), 2),
        "candle_over_torch_forward_backward": round(cand["forward_backward_ms"] / (fb * 1e3), 2),
    }
    print(json.dumps(out))
    assert diff < 1e-3 * max(1.0, y_ref.abs().max().item()), f"torch block differs from candle's by {diff}"


if __name__ == "__main__":
    main()
