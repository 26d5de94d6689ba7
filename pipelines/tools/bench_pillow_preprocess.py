"""Pillow baseline for `curate bench embed`: the same preprocessing as
transformers' slow CLIPImageProcessor (decode, RGB, shortest edge 224
bicubic, centre crop 224 with top = (H - 224) // 2, x/255, normalise,
CHW float32), timed on one core over a folder of images.

    curate bench embed --keep /tmp/photos     # writes the photos it measures
    python pipelines/tools/bench_pillow_preprocess.py /tmp/photos

Needs pillow and numpy only.
"""

import os
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(path, size=224):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    im = im.resize((nw, nh), resample=Image.BICUBIC, reducing_gap=None)
    top, left = (nh - size) // 2, (nw - size) // 2
    a = np.asarray(im)[top : top + size, left : left + size]
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - MEAN) / STD
    return x.transpose(2, 0, 1)


def main():
    folder = sys.argv[1]
    files = sorted(
        os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs
    )
    for f in files:  # warm the page cache
        with open(f, "rb") as fh:
            fh.read()
    t = time.perf_counter()
    for f in files:
        preprocess(f)
    s = time.perf_counter() - t
    print(f"Pillow {Image.__version__}: {len(files)} images in {s:.2f} s = {len(files) / s:.1f} images/s on one core")


if __name__ == "__main__":
    main()
