#!/usr/bin/env python3
"""Export Aesthetic Predictor V2.5 to one ONNX file that curate can run.

Upstream: https://github.com/discus0434/aesthetic-predictor-v2-5 (PyPI
`aesthetic-predictor-v2-5`, module `aesthetic_predictor_v2_5/siglip_v2_5.py`).
Its `AestheticPredictorV2_5Model` subclasses transformers'
`SiglipVisionModel` (vision tower of `google/siglip-so400m-patch14-384`),
takes `pooler_output` (SigLIP's attention-pooling head), divides it by its L2
norm, and feeds it to `layers.scoring_head`, an `nn.Sequential` of
Linear(1152, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64),
Dropout, Linear(64, 16), Dropout, Linear(16, 1) with no activations.
`convert_v2_5_from_siglip(predictor_name_or_path, encoder_model_name)` loads
the SigLIP weights with `from_pretrained` and the head from a `.pth` state
dict (keys `scoring_head.{0,2,4,6,8}.{weight,bias}`).

The repository and its weights are AGPL-3.0. curate ships no weights: run
this script yourself on weights you have. Nothing here is copied from the
upstream code; it only calls it.

What it writes into --out DIR:

    model.onnx                input  `pixel_values` float32 [batch, 3, 384, 384]
                              output `score`        float32 [batch]
    preprocessor_config.json  a plain `SiglipImageProcessor`: squash-resize
                              to 384x384, bicubic (PIL resample 3), x 1/255,
                              mean = std = 0.5
    export_info.json          what was exported, and with which versions

Install and run (CPU is enough; the export runs in float32):

    pip install aesthetic-predictor-v2-5==2024.12.18.1 transformers==4.57.1 \\
        torch onnx==1.23.2 onnxruntime==1.31.1
    python pipelines/tools/export_aesthetic_v2_5.py --out models/aesthetic-v2.5 \\
        --checkpoint aesthetic_predictor_v2_5.pth

Without --checkpoint the upstream package downloads the head from its GitHub
repository itself. --encoder may name a local copy of
`google/siglip-so400m-patch14-384`; --cache-dir and --offline are passed to
transformers' `from_pretrained`.

The model's float32 weights are about 1.6 GB. ONNX files over 2 GB are
written with external data next to `model.onnx` (not the case for so400m).

`export()` is also used by `fixtures/models/make_aesthetic_tiny.py` on a tiny
random SigLIP, so the fixture tests this exact export path. The upstream
package is only imported inside `load_upstream()`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

ONNX_OPSET = 17
# ONNX Runtime 1.31 (what curate's `ort` crate targets) loads IR <= 10 safely.
MAX_IR_VERSION = 10
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "score"
DEFAULT_ENCODER = "google/siglip-so400m-patch14-384"


def make_scoring_head(in_features: int) -> nn.Sequential:
    """The upstream `scoring_head` structure, for any input width.

    Same layer order as upstream, so the state-dict keys are
    `{0,2,4,6,8}.{weight,bias}` (upstream prefixes them with `scoring_head.`).
    """
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.Dropout(0.5),
        nn.Linear(1024, 128),
        nn.Dropout(0.5),
        nn.Linear(128, 64),
        nn.Dropout(0.5),
        nn.Linear(64, 16),
        nn.Dropout(0.2),
        nn.Linear(16, 1),
    )


class AestheticScorer(nn.Module):
    """pixel_values -> SigLIP pooler_output -> / L2 norm -> scoring_head -> [B].

    `vision` is anything with a `vision_model` attribute that is a
    transformers `SiglipVisionTransformer`: a `SiglipVisionModel`, or the
    upstream `AestheticPredictorV2_5Model` (a subclass of it). Calling
    `vision.vision_model` directly skips the upstream class's own `forward`,
    so both kinds give the same graph.
    """

    def __init__(self, vision: nn.Module, scoring_head: nn.Module):
        super().__init__()
        if not hasattr(vision, "vision_model"):
            raise TypeError("expected a SiglipVisionModel (with a .vision_model attribute)")
        self.vision = vision
        self.scoring_head = scoring_head

    @classmethod
    def from_upstream(cls, model: nn.Module) -> "AestheticScorer":
        """Wrap an upstream `AestheticPredictorV2_5Model`."""
        return cls(model, model.layers.scoring_head)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision.vision_model(pixel_values=pixel_values).pooler_output
        # Same arithmetic as upstream (no epsilon).
        normed = pooled / pooled.norm(dim=-1, keepdim=True)
        return self.scoring_head(normed).squeeze(-1)


def plain_siglip_processor(processor, image_size: int = 384):
    """A plain `SiglipImageProcessor` with the settings of `processor`.

    The upstream processor class is a subclass, and saving it would write its
    own class name into preprocessor_config.json. Consumers only need the
    plain one.
    """
    from transformers import SiglipImageProcessor

    if processor is None:
        return SiglipImageProcessor(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=3,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    return SiglipImageProcessor(
        do_resize=processor.do_resize,
        size=dict(processor.size),
        resample=int(processor.resample),
        do_rescale=processor.do_rescale,
        rescale_factor=processor.rescale_factor,
        do_normalize=processor.do_normalize,
        image_mean=list(processor.image_mean),
        image_std=list(processor.image_std),
    )


def _versions() -> dict:
    import onnx
    import transformers

    v = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
    try:
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return v


def export(model: nn.Module, out_dir: str, processor=None, *, opset: int = ONNX_OPSET,
           verify: bool = True, info: dict | None = None) -> str:
    """Export `model` to `out_dir/model.onnx` and write the preprocessor config.

    `model` is an `AestheticScorer`, or an upstream `AestheticPredictorV2_5Model`
    (wrapped here). `processor` is a SiglipImageProcessor (or the upstream
    subclass); None means the upstream defaults (384x384, bicubic, 0.5/0.5).
    Returns the path of model.onnx.
    """
    import onnx

    if not isinstance(model, AestheticScorer):
        model = AestheticScorer.from_upstream(model)
    model = model.float().eval()
    config = model.vision.config
    size = int(config.image_size)
    proc = plain_siglip_processor(processor, size)
    if (proc.size.get("height"), proc.size.get("width")) != (size, size):
        raise ValueError(f"processor size {proc.size} does not match the model's image_size {size}")

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    dummy = torch.zeros(2, 3, size, size, dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    # Keep external data (if any) where it is: only the graph file is rewritten.
    m = onnx.load(path, load_external_data=False)
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
    onnx.save(m, path)
    onnx.checker.check_model(path, full_check=True)

    proc.save_pretrained(out_dir)

    meta = {
        "model": "model.onnx",
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, size, size]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch"]},
        "opset": opset,
        "ir_version": int(m.ir_version),
        "preprocessing": "preprocessor_config.json (SiglipImageProcessor)",
        "versions": _versions(),
    }
    if info:
        meta.update(info)
    with open(os.path.join(out_dir, "export_info.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")

    if verify:
        _verify(model, path, size)
    return path


def _verify(model: nn.Module, path: str, size: int, tol: float = 1e-3) -> None:
    """Compare ONNX Runtime with PyTorch on a seeded random batch (skipped without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipped the check", file=sys.stderr)
        return
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(abs(got - want).max())
    print(f"ORT vs torch on random input: max abs diff {diff:.3g}", file=sys.stderr)
    if got.shape != want.shape or diff > tol:
        raise SystemExit(f"ONNX export does not match PyTorch (shape {got.shape}, diff {diff})")


def load_upstream(checkpoint: str | None, encoder: str = DEFAULT_ENCODER, cache_dir: str | None = None,
                  offline: bool = False):
    """Load the real predictor through the upstream package's own loader."""
    from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

    if checkpoint is not None and not os.path.exists(checkpoint):
        # Upstream would silently download instead: refuse.
        raise SystemExit(f"checkpoint not found: {checkpoint}")
    kwargs = {"local_files_only": offline}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    model, processor = convert_v2_5_from_siglip(
        predictor_name_or_path=checkpoint,
        encoder_model_name=encoder,
        **kwargs,
    )
    model = model.float().eval()
    # Plain attention ops in the graph (no SDPA).
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return model, processor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--checkpoint", help="local aesthetic_predictor_v2_5.pth (default: upstream downloads it)")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER,
                    help=f"SigLIP name or local folder (default {DEFAULT_ENCODER})")
    ap.add_argument("--cache-dir", help="transformers/HF cache folder")
    ap.add_argument("--offline", action="store_true", help="use only local files (local_files_only=True)")
    ap.add_argument("--opset", type=int, default=ONNX_OPSET)
    ap.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    args = ap.parse_args(argv)

    model, processor = load_upstream(args.checkpoint, args.encoder, args.cache_dir, args.offline)
    scorer = AestheticScorer.from_upstream(model)
    # The wrapper must give what the upstream forward gives.
    g = torch.Generator().manual_seed(0)
    size = int(model.config.image_size)
    x = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        want = model(pixel_values=x).logits.squeeze(-1)
        got = scorer(x)
    if float((want - got).abs().max()) > 1e-4:
        raise SystemExit("wrapper does not match the upstream model")
    info = {"source": "discus0434/aesthetic-predictor-v2-5 via aesthetic_predictor_v2_5.convert_v2_5_from_siglip",
            "encoder": args.encoder,
            "checkpoint": os.path.basename(args.checkpoint) if args.checkpoint else "upstream default URL"}
    path = export(scorer, args.out, processor, opset=args.opset, verify=not args.no_verify, info=info)
    print(path)


if __name__ == "__main__":
    main()
