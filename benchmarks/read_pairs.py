"""Benchmark: reading a big pair file — peak memory and seconds before the first optimizer step.

Generates N image pairs (default 848,000, about 200 MB: the size a user measured) pointing at M real 32 px
PNGs (default 8, so most records repeat a path; `--media N` gives every pair its own file), in a scratch
folder outside the repo (default /tmp/mmpo-read-pairs), makes a tiny LLaVA there once, then measures each
variant in a fresh child process under `/usr/bin/time -v`:

- `read`: `mmpo.batches.read_records(...)` alone, media existence checked (what `train` does first);
- `read-nomedia`: the same without the media check (media_root None), to show what the per-record `stat`s cost;
- `read-index`: `mmpo.records.scan_records(...)` as training calls it now: from 32 MB on (error mode) only a numpy
  line index is built before it returns, and a thread validates the lines (`validate_in_background`); "read s" is
  the time until the records are usable, "wall s" includes the whole background validation (`wait()`);
- `train`: `mmpo train max_steps=1` (batch 4, LoRA r 4, no precomputed reference). "first step s" is the time
  from launch until `metrics.jsonl` appears (written right after optimizer step 1); "wall s" includes
  loading torch, the model and saving the adapter (which now waits for the background validation).

`--repo DIR` runs the children against another checkout (e.g. /work/main, the reader before this change), so the
two readers are measured side by side on the same files and machine; `--pairs 2000` gives the small-file baseline.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/read_pairs.py [--pairs 848000] [--media 8]
        [--dir /tmp/mmpo-read-pairs] [--only read read-nomedia read-index train] [--repo /work/main]
Prints a markdown table and, last, one JSON line of headline figures.
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
sys.path.insert(0, str(REPO))

VARIANTS = ("read", "read-nomedia", "read-index", "train")
COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
READ_CHILD = """
import sys, time
from mmpo.batches import read_records
start = time.perf_counter()
root = None if sys.argv[2] == "-" else sys.argv[2]
if sys.argv[3] == "index":
    records, skipped = read_records(sys.argv[1], root, "pair", "error")  # background validation from 32 MB on
    usable = time.perf_counter() - start
    records.wait()
else:
    from mmpo import records as R  # the full validation pass (background=False where this mmpo has it)
    full = "background" in R.scan_records.__code__.co_varnames
    records, skipped = (R.scan_records(sys.argv[1], "pair", root, "error", background=False) if full else
                        read_records(sys.argv[1], root, "pair", "error"))
    usable = time.perf_counter() - start
print("READ", len(records), len(skipped), usable)
"""


def make_images(folder: Path, n: int = 8) -> list[str]:
    """`n` small real PNGs (a coloured square on noise), 1000 a sub-folder; paths relative to `folder`'s parent."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rels = []
    for i in range(n):
        rel = f"{folder.name}/{i // 1000}/{i}.png"
        if not (folder.parent / rel).is_file():
            (folder.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            arr = (rng.random((32, 32, 3)) * 255).astype("uint8")
            arr[8:24, 8:24] = (40 * i % 256, 90, 200)
            Image.fromarray(arr).save(folder.parent / rel)
        rels.append(rel)
    return rels


def make_pairs(path: Path, n: int, media: list[str]) -> int:
    """Write `n` unique image pairs (about 239 bytes a line, like the user's 236) streaming; returns bytes."""
    from mmpo.records import PairRecord, make_id

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            truth, wrong = COLORS[i % len(COLORS)], COLORS[(i + 3) % len(COLORS)]
            rec = PairRecord(id=make_id("bench", i), media=(media[i % len(media)],), media_type="image",
                             prompt=f"what color is the square? {i}", chosen=truth, rejected=wrong,
                             scores={"delta": round((i % 7) / 7, 3)}, source="bench")
            f.write(json.dumps(rec.to_json()) + "\n")
    return path.stat().st_size


def timed(cmd: list[str], env: dict, watch: Path | None = None, cwd: Path = REPO) -> dict:
    """Run `cmd` under /usr/bin/time -v; wall seconds, max RSS (GiB), and seconds until `watch` exists."""
    started = time.perf_counter()
    # cwd: `python -c` / `-m` put the working folder first on sys.path, so run in the repo being measured
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:  # poll for the metrics file: the first optimizer step has finished
        if watch is not None and first is None and watch.exists():
            first = time.perf_counter() - started
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"wall_s": round(wall, 2), "max_rss_gib": round(rss_kib / 2**20, 3),
            "first_step_s": None if watch is None else round(first if first is not None else wall, 2),
            "stdout": out}


def run_variant(name: str, work: Path, pairs: Path, model: Path, repo: Path = REPO) -> dict:
    """Measure one variant in a fresh process, importing mmpo from `repo`."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    py = sys.executable
    if name.startswith("read"):
        root = "-" if name == "read-nomedia" else str(work)
        res = timed([py, "-c", READ_CHILD, str(pairs), root, "index" if name == "read-index" else "full"], env, cwd=repo)
        n, skipped, seconds = res.pop("stdout").split("READ")[1].split()
        res.update(records=int(n), skipped=int(skipped), read_s=round(float(seconds), 2))
        return res
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)  # a leftover run would resume instead of starting
    res = timed([py, "-m", "mmpo", "train", f"model.path={model}", f"data.train={pairs}", f"output_dir={out}",
                 "max_steps=1", "progress=false", "batch_size=4", "lora.r=4"], env, watch=out / "metrics.jsonl", cwd=repo)
    res.pop("stdout")
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=848_000)
    ap.add_argument("--media", type=int, default=8, help="distinct image files the pairs point at")
    ap.add_argument("--dir", default="/tmp/mmpo-read-pairs", help="scratch folder (pairs, images, tiny model)")
    ap.add_argument("--only", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--repo", default=str(REPO), help="the checkout whose mmpo the children import")
    args = ap.parse_args(argv)

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / f"pairs-{args.pairs}-{args.media}img.jsonl"
    if not pairs.is_file():  # generated once; later runs reuse it (same bytes: generation is deterministic)
        make_pairs(pairs, args.pairs, make_images(work / "img", args.media))
    model = work / "tiny"
    if not (model / "config.json").is_file():
        from mmpo.models import make_tiny_model

        make_tiny_model("llava", model)
    size_mb = pairs.stat().st_size / 1e6

    rows = {name: run_variant(name, work, pairs, model, Path(args.repo)) for name in args.only}
    print(f"\n{args.pairs} pairs on {args.media} images, {size_mb:.1f} MB ({pairs}), mmpo from {args.repo}\n")
    print("| variant | read s | first step s | wall s | max RSS GiB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r.get('read_s', '')} | {r['first_step_s'] or ''} | {r['wall_s']} | {r['max_rss_gib']} |")
    headline = {"pairs": args.pairs, "images": args.media, "file_mb": round(size_mb, 1), "repo": args.repo, **rows}
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()
