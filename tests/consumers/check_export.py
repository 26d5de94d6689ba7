"""Reads a `curate export` folder with the tools users load it with, and
checks it against what the test expects.

    python3 check_export.py hf|webdataset OUT EXPECTED.json

EXPECTED.json: {"KEY": {"sha256": hex of the source bytes, "text": str|None}}.
Prints one JSON line: {"samples": n, "read_s": seconds}. Exits 1 on a mismatch.
"""
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def check(key, data, text, expected, seen):
    if key not in expected:
        fail(f"unexpected key {key!r}")
    if key in seen:
        fail(f"key {key!r} twice")
    seen.add(key)
    want = expected[key]
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        fail(f"{key}: image bytes differ from the source")
    if text != want["text"]:
        fail(f"{key}: text {text!r}, expected {want['text']!r}")


def hf(out, expected):
    import datasets

    seen_counts = []
    for how in ("card", "data_dir"):
        if how == "card":
            ds = datasets.load_dataset(out, split="train")
        else:
            ds = datasets.load_dataset("parquet", data_dir=out, split="train")
        if not isinstance(ds.features["image"], datasets.Image):
            fail(f"{how}: image feature is {ds.features['image']!r}, not Image")
        for name in ("text", "caption", "aesthetic_score", "quality_tag", "width", "height", "url", "key"):
            if name not in ds.features:
                fail(f"{how}: no column {name}")
        raw = ds.cast_column("image", datasets.Image(decode=False))
        seen = set()
        for row in raw:
            check(row["key"], row["image"]["bytes"], row["text"], expected, seen)
        if seen != set(expected):
            fail(f"{how}: missing keys {sorted(set(expected) - seen)}")
        first = ds[0]
        img = first["image"]
        if img.size != (first["width"], first["height"]):
            fail(f"{how}: decoded size {img.size}, columns say {(first['width'], first['height'])}")
        seen_counts.append(len(seen))
    return seen_counts[0]


def webdataset(out, expected):
    import webdataset as wds

    tars = sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".tar"))
    seen = set()
    for tar in tars:
        keys = []
        for sample in wds.WebDataset(tar, shardshuffle=False, empty_check=False):
            key = sample["__key__"]
            keys.append(key)
            image = next(v for k, v in sample.items() if k in ("jpg", "png", "webp", "jpeg"))
            meta = json.loads(sample["json"])
            text = sample["txt"].decode()
            check(key, image, meta["caption"], expected, seen)
            if text != (meta["caption"] or ""):
                fail(f"{key}: txt {text!r} differs from the json caption")
            if meta["key"] != key:
                fail(f"{key}: json key {meta['key']!r}")
        if keys != sorted(keys):
            fail(f"{tar}: members not in key order")
        side = os.path.splitext(tar)[0] + ".parquet"
        import pyarrow.parquet as pq

        if pq.read_table(side).column("key").to_pylist() != keys:
            fail(f"{side}: keys differ from the tar's")
        stats = json.load(open(os.path.splitext(tar)[0] + "_stats.json"))
        if stats["successes"] != len(keys):
            fail(f"{tar}: stats say {stats['successes']} samples, the tar has {len(keys)}")
    if seen != set(expected):
        fail(f"missing keys {sorted(set(expected) - seen)}")
    return len(seen)


def main():
    fmt, out, exp = sys.argv[1:4]
    expected = json.load(open(exp))
    t = time.time()
    n = {"hf": hf, "webdataset": webdataset}[fmt](out, expected)
    print(json.dumps({"samples": n, "read_s": round(time.time() - t, 3)}))


if __name__ == "__main__":
    main()
