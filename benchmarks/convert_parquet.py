"""Benchmark: converting an RLAIF-V-style parquet with embedded images — rows/s and peak memory vs. set size.

Writes an `openbmb/RLAIF-V-Dataset`-schema parquet (an `image` struct {bytes, path} per row, 100 rows per row
group as `datasets` writes image sets) of N rows in a scratch folder outside the repo (default
/tmp/mmpo-convert-parquet). Every row embeds a distinct JPEG (the fixture's 64x48 placeholder, ~0.2 KB,
with the row number appended
after its end marker, so each is stored as its own content-addressed file), then measures in fresh child
processes under `/usr/bin/time -v`, one core (OMP_NUM_THREADS=1):

- `mmpo`: `mmpo.formats.convert(src, out, "rlaif_v")` — pairs.jsonl + media/ + manifest.json;
- `datasets`: the by-hand route a user takes today: `datasets.load_dataset("parquet", ..., streaming=True)`
  with the image column cast to `Image(decode=False)`, each image written to a file and a JSON line per row
  (no validation, no content addressing): the reading cost of the library alone, for comparison.

Run at two sizes (`--rows 20000 100000`): peak RSS that does not grow with the rows is "bounded".

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/convert_parquet.py [--rows 20000 100000] [--only mmpo datasets]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests/fixtures/datasets/rlaif-v-dataset/RLAIF-V-Dataset_sample.parquet"

MMPO_CHILD = """
import sys, time
from mmpo.formats import convert
start = time.perf_counter()
out = convert(sys.argv[1], sys.argv[2], "rlaif_v")
print("ROWS", sum(1 for _ in open(out)), time.perf_counter() - start)
"""

DATASETS_CHILD = """
import hashlib, json, os, sys, time
import datasets
start = time.perf_counter()
ds = datasets.load_dataset("parquet", data_files=sys.argv[1] + "/*.parquet", split="train", streaming=True)
ds = ds.cast_column("image", datasets.Image(decode=False))
os.makedirs(sys.argv[2] + "/img", exist_ok=True)
n = 0
with open(sys.argv[2] + "/pairs.jsonl", "w") as f:
    for i, row in enumerate(ds):
        rel = f"img/{i}.jpg"
        with open(os.path.join(sys.argv[2], rel), "wb") as g:
            g.write(row["image"]["bytes"])
        f.write(json.dumps({"media": [rel], "media_type": "image", "prompt": row["question"], "chosen": row["chosen"],
                            "rejected": row["rejected"]}) + "\\n")
        n += 1
print("ROWS", n, time.perf_counter() - start)
"""


def make_parquet(folder: Path, rows: int) -> Path:
    """An RLAIF-V-schema parquet of `rows` rows, each with its own embedded JPEG (streamed, 100-row groups)."""
    import pyarrow.parquet as pq

    src = pq.read_table(FIXTURE)
    template = src.to_pylist()
    path = folder / "data" / "RLAIF-V-Dataset_000.parquet"
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return folder / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa

    with pq.ParquetWriter(path, src.schema) as writer:
        for start in range(0, rows, 100):
            batch = []
            for i in range(start, min(start + 100, rows)):
                row = dict(template[i % len(template)])
                image = row["image"]
                row["image"] = {"bytes": image["bytes"] + str(i).encode(), "path": f"{i}.jpg"}
                row["idx"], row["image_path"] = str(i), f"{i}.jpg"
                batch.append(row)
            writer.write_table(pa.Table.from_pylist(batch, schema=src.schema))
    return folder / "data"


def timed(code: str, src: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code, str(src), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    n, seconds = proc.stdout.split("ROWS")[1].split()
    return {"rows": int(n), "convert_s": round(float(seconds), 2), "rows_per_s": round(int(n) / float(seconds)),
            "cpu_user_s": user, "wall_s": round(wall, 2), "max_rss_mib": round(rss_kib / 1024)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--only", nargs="*", default=["mmpo", "datasets"], choices=["mmpo", "datasets"])
    ap.add_argument("--dir", default="/tmp/mmpo-convert-parquet")
    args = ap.parse_args(argv)
    results = []
    for rows in args.rows:
        work = Path(args.dir) / f"{rows}"
        src = make_parquet(work, rows)
        size_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        for name in args.only:
            res = timed(MMPO_CHILD if name == "mmpo" else DATASETS_CHILD, src, work / f"out-{name}")
            results.append({"variant": name, "parquet_mb": round(size_mb, 1), **res})
            shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    print("| variant | rows | parquet MB | convert s | rows/s | CPU user s | max RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['rows']} | {r['parquet_mb']} | {r['convert_s']} | {r['rows_per_s']} | "
              f"{r['cpu_user_s']} | {r['max_rss_mib']} |")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
