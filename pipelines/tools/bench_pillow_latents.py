"""Pillow baseline for `curate bench latents`: the preprocessing of
`curate encode-latents` (decode, RGB, antialiased bicubic resize to the
placement's size, crop the placement's box, to float in [-1, 1], CHW),
timed on one core over the same photos and the same placements, and the
sha256 of the uint8 crops (equal to curate's `--decode-scale full` line
when the pixels are identical).

    curate bench latents --keep /tmp/photos     # writes photos + placements-{256,512}.json
    python pipelines/tools/bench_pillow_latents.py /tmp/photos

Needs pillow and numpy only.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
from PIL import Image


def prepare(path, resize, box):
    im = Image.open(path).convert("RGB")
    im = im.resize(tuple(resize), resample=Image.BICUBIC, reducing_gap=None)
    a = np.asarray(im.crop(tuple(box)))
    x = (a.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
    return a, np.ascontiguousarray(x)


def main():
    folder = sys.argv[1]
    for stage in (256, 512):
        placements = json.load(open(os.path.join(folder, f"placements-{stage}.json")))
        digest = hashlib.sha256()
        t = time.perf_counter()
        for p in placements:
            a, _ = prepare(os.path.join(folder, p["file"]), p["resize"], p["box"])
            digest.update(a.tobytes())
        dt = time.perf_counter() - t
        print(
            f"stage {stage}: Pillow {Image.__version__}: {len(placements) / dt:.1f} images/s on one core; "
            f"sha256 of the uint8 crops {digest.hexdigest()[:16]}…"
        )


if __name__ == "__main__":
    main()
