"""Compares two work directories of the same pipeline row for row: every
parquet file of every stage folder (shards and stage-level outputs), the
train metrics and the sample PNGs. Wall-clock columns are not compared, and
URLs are compared with the local test server's port masked.

    python3 pipelines/tools/compare_runs.py WORK_A WORK_B   # needs pyarrow

Exit status 1 when anything differs (each difference is printed)."""
import sys, os, glob, json, hashlib
import pyarrow.parquet as pq

a, b = sys.argv[1], sys.argv[2]
TIME_COLS = {"fetched_unix", "duration_s", "elapsed_s", "wall_s", "time_unix", "created_unix", "step_time_s", "seconds", "fetch_ms"}
import re
def norm(col):
    return [re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", v) if isinstance(v, str) else v for v in col.to_pylist()]
bad = 0; files = 0; rows = 0
for pa in sorted(glob.glob(os.path.join(a, "**", "*.parquet"), recursive=True)):
    rel = os.path.relpath(pa, a)
    if "/state/" in rel or rel.startswith("report/"):
        continue
    pb = os.path.join(b, rel)
    if not os.path.exists(pb):
        print("MISSING in B:", rel); bad += 1; continue
    ta, tb = pq.read_table(pa), pq.read_table(pb)
    files += 1; rows += ta.num_rows
    if ta.column_names != tb.column_names:
        print("COLUMNS differ:", rel, ta.column_names, tb.column_names); bad += 1; continue
    if ta.num_rows != tb.num_rows:
        print("ROWS differ:", rel, ta.num_rows, tb.num_rows); bad += 1; continue
    for c in ta.column_names:
        if c in TIME_COLS:
            continue
        if c in ("url", "source"):
            if norm(ta.column(c)) != norm(tb.column(c)):
                print("VALUES differ:", rel, c); bad += 1
            continue
        if not ta.column(c).equals(tb.column(c)):
            print("VALUES differ:", rel, c); bad += 1
    ma = {k: v for k, v in (ta.schema.metadata or {}).items()}
    mb = {k: v for k, v in (tb.schema.metadata or {}).items()}
    if ma != mb:
        diff = sorted(set(ma) ^ set(mb)) + [k.decode() for k in ma if k in mb and ma[k] != mb[k]]
        print("METADATA differs:", rel, diff)
for pb in sorted(glob.glob(os.path.join(b, "**", "*.parquet"), recursive=True)):
    rel = os.path.relpath(pb, b)
    if "/state/" in rel or rel.startswith("report/"):
        continue
    if not os.path.exists(os.path.join(a, rel)):
        print("EXTRA in B:", rel); bad += 1
def sha(p): return hashlib.sha256(open(p, "rb").read()).hexdigest()
for pat in ["**/*.png", "**/metrics.jsonl"]:
    for pa in sorted(glob.glob(os.path.join(a, pat), recursive=True)):
        rel = os.path.relpath(pa, a)
        if rel.startswith("report/"):
            continue
        pb = os.path.join(b, rel)
        if not os.path.exists(pb):
            print("MISSING in B:", rel); bad += 1; continue
        files += 1
        if rel.endswith(".jsonl"):
            la = [json.loads(l) for l in open(pa)]; lb = [json.loads(l) for l in open(pb)]
            strip = lambda d: {k: v for k, v in d.items() if not any(t in k for t in ("time", "_s", "per_s", "rss"))}
            if [strip(x) for x in la] != [strip(x) for x in lb]:
                print("METRICS differ:", rel); bad += 1
        elif sha(pa) != sha(pb):
            print("BYTES differ:", rel); bad += 1
print(f"{files} files, {rows} parquet rows compared, {bad} differences")
sys.exit(1 if bad else 0)
