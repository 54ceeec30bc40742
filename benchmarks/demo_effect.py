"""The demo's effect, measured: SFT vs each method over several seeds (mean ± std), appended to RESULTS.md.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/demo_effect.py --seeds 3 --out /tmp/demo_effect [--no-video]

Runs every image method and (unless --no-video) every video method (DPO control, PaMi-VDPO, PaMi-VDPO + DPO,
VideoSAVi). Prints the tables and ends with one JSON line of headline figures: the SFT hallucination gap (random
F1 - adversarial F1), the SFT adversarial yes-ratio, each image method's adversarial F1 gain and CHAIR_s / CHAIR_i
change (captions of the held-out images), and each video method's gain in counter-prior temporal pair accuracy
and overall pair accuracy (with the seed std).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="/tmp/demo_effect")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--from-scratch", action="store_true")
    p.add_argument("--no-video", action="store_true", help="image methods only (about a quarter of the time)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from mmpo.demo import pipeline
    from mmpo.demo.video_models import video_methods

    result = pipeline.run(Path(args.out), from_scratch=args.from_scratch, seeds=args.seeds, video=not args.no_video,
                          methods=tuple(m.name for m in pipeline.METHODS),
                          video_methods=tuple(m.name for m in video_methods()))
    before, after = result["before"], result["after"]
    headline = {"sft_gap_f1": round(100 * (before["random"]["f1"] - before["adversarial"]["f1"]), 2),
                "sft_adv_yes_ratio": round(before["adversarial"]["yes_ratio"], 3)}
    chair = result["chair"]
    rows = []
    for name, runs in after.items():
        cells = []
        for key, values in (("adv_f1", [100 * (r["adversarial"]["f1"] - before["adversarial"]["f1"]) for r in runs]),
                            ("chair_s", [100 * (c["chair_s"] - chair["SFT"]["chair_s"]) for c in chair[name]]),
                            ("chair_i", [100 * (c["chair_i"] - chair["SFT"]["chair_i"]) for c in chair[name]])):
            mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            headline[f"{name}_{key}_gain"] = [round(mean, 2), round(std, 2)]
            cells.append(f"{mean:+.1f}" + (f" ± {std:.1f}" if len(values) > 1 else " (1 seed)"))
        rows.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(
            f"{statistics.fmean(100 * r[s]['f1'] for r in runs):.1f}" for s in before) + " |")
    table = "\n".join([
        f"## {datetime.date.today()} — demo_effect ({platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, 1 thread, {args.seeds} seeds)", "",
        "SFT: " + ", ".join(f"{s} F1 {100 * m['f1']:.1f}" for s, m in before.items())
        + f", adversarial yes-ratio {before['adversarial']['yes_ratio']:.3f} (gap {headline['sft_gap_f1']:.1f}); "
        f"captions CHAIR_s {100 * chair['SFT']['chair_s']:.1f}, CHAIR_i {100 * chair['SFT']['chair_i']:.1f}, "
        f"recall {100 * chair['SFT']['recall']:.1f}.", "",
        "| method | adversarial F1 gain | CHAIR_s change | CHAIR_i change | " + " | ".join(f"{s} F1" for s in before)
        + " |", "|---|---|---|---|" + "---|" * len(before), *rows, "",
        *(video_table(result["video"], headline) if result["video"] else []), ""])
    print(table)
    with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
        f.write("\n" + table + "\n")
    print(json.dumps(headline))


def video_table(video: dict, headline: dict) -> list[str]:
    """The video rows (pair accuracy, mean ± std over seeds) and their gains, added to `headline`."""
    from mmpo.demo.report import cell, video_columns

    before = video_columns(video["before"])
    lines = ["Video (tiny LLaVA-NeXT-Video, held-out VideoHallucer-style pairs, pair accuracy; temporal split by the "
             "temporal prior):", "",
             "| model | " + " | ".join(before) + " |", "|---|" + "---|" * len(before),
             "| SFT | " + " | ".join(f"{v:.3f}" for v in before.values()) + " |"]
    for name, runs in video["after"].items():
        cols = [video_columns(r) for r in runs]
        lines.append(f"| {name} | " + " | ".join(cell([c[k] for c in cols]) for k in before) + " |")
        for key in ("temporal counter", "overall"):
            gains = [c[key] - before[key] for c in cols]
            sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
            headline[f"video_{name}_{key.replace(' ', '_')}_gain"] = [round(statistics.fmean(gains), 3), round(sd, 3)]
    if video.get("self_qa"):
        lines += ["", f"VideoSAVi builder counts: {video['self_qa']}"]
    return lines


if __name__ == "__main__":
    main()
