"""Reads a `curate export` folder with the tools users load it with, and
checks it against what the test expects.

    python3 check_export.py hf|webdataset OUT EXPECTED.json
    python3 check_export.py kohya|musubi OUT EXPECTED.json LATENTS_DIR [SAMPLED]

EXPECTED.json: {"KEY": {"sha256": hex of the source bytes, "text": str|None}}.
LATENTS_DIR: the encode-latents stage exported, read here with pyarrow (its
`part-*.parquet` shards) as the truth for the cache files; SAMPLED ("1")
when the export drew from the posterior (then the draws are checked to be
standard normal around the stored mean, not equal to it).
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


def stored_latents(latents_dir):
    """Key -> (row dict, f32 array [C, H, W]) of the ok rows, and the schema metadata."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq

    rows, meta = {}, {}
    for f in sorted(glob.glob(os.path.join(latents_dir, "part-*.parquet"))):
        t = pq.read_table(f)
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
        for r in t.to_pylist():
            if r["status"] != "ok":
                continue
            raw = np.frombuffer(r["latent"], dtype=np.uint8)
            dt = r["latent_dtype"]
            if dt == "bf16":
                v = (raw.view("<u2").astype(np.uint32) << 16).view("<f4")
            elif dt == "f16":
                v = raw.view("<f2").astype(np.float32)
            else:
                v = raw.view("<f4")
            rows[r["key"]] = (r, v.reshape(r["latent_shape"]))
    return rows, meta


def image_and_text(out, key, expected, seen):
    import glob

    images = [
        p
        for p in glob.glob(os.path.join(glob.escape(out), glob.escape(key) + ".*"))
        if os.path.splitext(p)[1].lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp")
    ]
    if len(images) != 1:
        fail(f"{key}: expected one image file beside the cache, found {images}")
    text = open(os.path.join(out, key + ".txt"), encoding="utf-8").read()
    # The caption file of an image without a caption is empty.
    check(key, open(images[0], "rb").read(), text or None, expected, seen)


def split_mean(arr, store):
    return arr[: arr.shape[0] // 2] if store == "mean-logvar" else arr


def latent_caches(fmt, out, expected, latents_dir, sampled):
    import glob

    import numpy as np

    rows, meta = stored_latents(latents_dir)
    shift, scale, store = float(meta["shift_factor"]), float(meta["scale_factor"]), meta["store"]
    if set(rows) != set(expected):
        fail(f"the latents stage's ok keys differ from the expected ones")
    suffix = {"kohya": "_flux.npz", "musubi": "_zi.safetensors"}[fmt]
    caches = sorted(glob.glob(os.path.join(out, "*" + suffix)))
    seen, normals = set(), []
    for path in caches:
        name = os.path.basename(path)[: -len(suffix)]
        # Both trainers split the name so: KEY_WWWWxHHHH (musubi: "_".join(tokens[:-2])).
        tokens = os.path.basename(path).split("_")
        key, size = "_".join(tokens[:-2]), tokens[-2]
        if name != f"{key}_{size}":
            fail(f"{path}: name does not parse as KEY_WWWWxHHHH{suffix}")
        if key not in rows:
            fail(f"{path}: key {key!r} is not an ok row of the latents stage")
        row, stored = rows[key]
        w, h = map(int, size.split("x"))
        if (w, h) != (row["orig_width"], row["orig_height"]):
            fail(f"{path}: size {w}x{h}, the source image is {row['orig_width']}x{row['orig_height']}")
        mean = split_mean(stored, store)
        lh, lw = row["bucket_h"] // 8, row["bucket_w"] // 8
        if fmt == "kohya":
            npz = np.load(path)
            # strategy_flux.py's FluxLatentsCachingStrategy.is_disk_cached_latents_expected:
            # multi-resolution keys for bucket_reso (W, H) at stride 8, "latents_{H/8}x{W/8}".
            sfx = f"_{lh}x{lw}"
            want = {"latents" + sfx, "original_size" + sfx, "crop_ltrb" + sfx}
            if set(npz.files) != want:
                fail(f"{path}: keys {npz.files}, expected {sorted(want)}")
            lat = npz["latents" + sfx]
            if npz["original_size" + sfx].tolist() != [row["orig_width"], row["orig_height"]]:
                fail(f"{path}: original_size {npz['original_size' + sfx]}")
            l, t = row["crop_left"], row["crop_top"]
            if npz["crop_ltrb" + sfx].tolist() != [l, t, l + row["bucket_w"], t + row["bucket_h"]]:
                fail(f"{path}: crop_ltrb {npz['crop_ltrb' + sfx]}")
            scaled = lat
        else:
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                md = f.metadata()
                keys = list(f.keys())
                want = f"latents_1x{lh}x{lw}_float32"
                if keys != [want]:
                    fail(f"{path}: tensors {keys}, expected [{want}]")
                lat = f.get_tensor(want)
            if md != {"architecture": "z_image", "width": str(w), "height": str(h), "format_version": "1.0.1"}:
                fail(f"{path}: metadata {md}")
            # musubi caches the raw posterior (shift and scale at training time).
            scaled = (lat.astype(np.float64) - shift) * scale
        if lat.dtype != np.float32 or lat.shape != mean.shape:
            fail(f"{path}: {lat.dtype} {lat.shape}, expected float32 {mean.shape}")
        if sampled:
            logvar = stored[stored.shape[0] // 2 :].astype(np.float64)
            normals.append(((scaled - mean) / (scale * np.exp(0.5 * logvar))).ravel())
        elif not np.allclose(scaled, mean, rtol=1e-5, atol=1e-6):
            fail(f"{path}: latents differ from the stored mean by {np.abs(scaled - mean).max()}")
        image_and_text(out, key, expected, seen)
    if seen != set(expected):
        fail(f"missing keys {sorted(set(expected) - seen)}")
    if sampled:
        eps = np.concatenate(normals)
        if not (abs(eps.mean()) < 0.05 and 0.95 < eps.std() < 1.05):
            fail(f"posterior draws: eps mean {eps.mean()}, std {eps.std()}; expected N(0, 1)")
    return len(seen)


def main():
    fmt, out, exp = sys.argv[1:4]
    expected = json.load(open(exp))
    t = time.time()
    if fmt in ("kohya", "musubi"):
        n = latent_caches(fmt, out, expected, sys.argv[4], len(sys.argv) > 5 and sys.argv[5] == "1")
    else:
        n = {"hf": hf, "webdataset": webdataset}[fmt](out, expected)
    print(json.dumps({"samples": n, "read_s": round(time.time() - t, 3)}))


if __name__ == "__main__":
    main()
