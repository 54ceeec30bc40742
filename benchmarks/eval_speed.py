"""Benchmark: POPE answering speed of the three runner paths on the same model and questions.

Paths (mmpo/eval/answering.py): `generate` (greedy, the published protocol), `logits` (one forward per batch of
full prompts, yes-vs-no token scores) and `logits+prefix` (each image + template head encoded once: one packed
row `[head | q1 | q2 | ...]` per image). The question set mimics POPE: N images x 6 questions x 3 splits,
the same images in every split (docs/BENCHMARKS.md §1.1), so an image carries 18 questions.

A random tiny model rarely answers a clean "yes"/"no", so by default the tiny model is first tuned for a
few steps on a text-only rule (yes for questions about red/green); agreement is then measured on the
generations that are exactly "yes"/"no". 7B-shaped models (random weights, CUDA only) skip the tuning;
agreement is then reported over whatever clean answers there are (often none).

The tiny model's default layout is 16 tokens per image, where per-call overhead dominates; `--layout llava15`
keeps tiny widths but LLaVA-1.5's sequence layout (336 px, patch 14: 576 image tokens), where the cost of
re-encoding an image for every question shows as it does on a 7B model.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_speed.py --device cpu --family llava [--layout llava15]
    .venv/bin/python benchmarks/eval_speed.py --device cuda --size 7b --images 20
Prints a markdown table and, last, one JSON line of headline figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmpo.config import ModelConfig  # noqa: E402
from mmpo.eval import pope  # noqa: E402
from mmpo.eval.answering import Item, answer_items  # noqa: E402
from mmpo.logprobs import plain_logps  # noqa: E402
from mmpo.models import build_model, encode_answers, encode_prompts, load_model, make_tiny_model  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def make_questions(n_images: int, size: int, seed: int = 0) -> tuple[dict, list[Item]]:
    """N noise images and 6 questions per image per split (3 splits), grouped by image like POPE files."""
    rng = np.random.default_rng(seed)
    images = {f"img{i}": Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for i in range(n_images)}
    items = []
    for split in pope.SPLITS:
        for i in range(n_images):
            for j in range(6):
                color = COLORS[int(rng.integers(len(COLORS)))]
                items.append(Item((split, f"{i}-{j}"), f"img{i}", f"is there a {color} square in the image ?"))
    return images, items


def tune_tiny(model, processor, images: dict, steps: int) -> None:
    """A few Adam steps on a text-only yes/no rule so greedy generation answers with one clean word."""
    model.train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    imgs = list(images.values())[:4]
    for step in range(steps):
        colors = [COLORS[(step + k) % 4] for k in range(4)]
        prompts = [f"is there a {c} square in the image ?" for c in colors]
        answers = ["yes" if c in ("red", "green") else "no" for c in colors]
        batch = encode_prompts(processor, prompts, imgs, "image")
        lp, _ = plain_logps(model, batch, encode_answers(processor, answers))
        opt.zero_grad()
        (-lp.mean()).backward()
        opt.step()
    model.eval().requires_grad_(False)


def load(args, workdir: Path):
    """(model, processor) for the requested family/size/device."""
    from transformers import AutoProcessor

    layout = dict(image_size=336, patch_size=14) if args.layout == "llava15" else {}
    mdir = make_tiny_model(args.family, workdir / args.family, size=args.size, **layout)
    if args.size == "7b":
        if args.device != "cuda":
            raise SystemExit("--size 7b needs --device cuda")
        return build_model(mdir, device="cuda", dtype=torch.bfloat16), AutoProcessor.from_pretrained(mdir)
    model, processor = load_model(ModelConfig(path=str(mdir), device=args.device), trainable=True)
    return model, processor


def timed(fn) -> tuple[dict, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--family", default="llava")
    p.add_argument("--size", default="tiny", choices=["tiny", "7b"])
    p.add_argument("--layout", default="tiny", choices=["tiny", "llava15"],
                   help="tiny model's sequence layout: tiny (32 px, 16 image tokens) or llava15 (336 px, patch 14: "
                        "LLaVA-1.5's 576 image tokens with tiny widths)")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=18)
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--tune-steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3, help="time each path this many times, keep the fastest")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load(args, Path(tmp))
    size = processor.image_processor.crop_size["height"] if hasattr(processor.image_processor, "crop_size") else 32
    images, items = make_questions(args.images, size)
    if args.size == "tiny" and args.tune_steps:
        tune_tiny(model, processor, images, args.tune_steps)
    model.eval().requires_grad_(False)
    run = dict(model=model, processor=processor, items=items, media_type="image", load_fn=images.__getitem__,
               batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    answer_items(**{**run, "items": items[:2]}, mode="logits")  # warm-up (lazy init, CUDA kernels)
    results, secs = {}, {}
    for name, kw in (("generate", dict(mode="generate")), ("logits", dict(mode="logits")),
                     ("logits+prefix", dict(mode="logits", prefix_reuse=True))):
        # fastest of a few repeats: the shared 2-core CI box is noisy (single runs swung by 1.5x)
        for _ in range(args.repeats):
            results[name], t = timed(lambda kw=kw: answer_items(**run, **kw))
            secs[name] = min(secs.get(name, t), t)
    n = len(items)
    clean = [k for k, (a, _) in results["generate"].items() if pope.parse_lmms(a) != "unknown"]
    agree = sum(results["generate"][k][0].strip().lower() == results["logits"][k][0] for k in clean)
    same = sum(results["logits"][k][0] == results["logits+prefix"][k][0] for k in results["logits"])
    diff = max(abs(results["logits"][k][1] - results["logits+prefix"][k][1]) for k in results["logits"])
    cpu = f"{platform.processor() or platform.machine()} CPU, 1 thread"
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    tokens = getattr(model.config, "image_seq_length", "?")
    print(f"\n### eval_speed {datetime.date.today()} ({args.family} {args.size}, {tokens} image tokens, {device}; "
          f"torch {torch.__version__}, transformers {__import__('transformers').__version__})\n")
    print(f"{args.images} images x 6 questions x 3 splits = {n} questions, batch {args.batch_size}, "
          f"generate max_new_tokens {args.max_new_tokens}, fastest of {args.repeats} runs\n")
    print("| path | seconds | questions/s | speed-up vs generate |\n|---|---:|---:|---:|")
    for name in secs:
        print(f"| {name} | {secs[name]:.2f} | {n / secs[name]:.1f} | {secs['generate'] / secs[name]:.1f}x |")
    print(f"\nclean yes/no generations: {len(clean)}/{n}; logits agree on {agree}/{len(clean)}; "
          f"prefix reuse = plain logits on {same}/{n} answers (max margin diff {diff:.2e})\n")
    print(json.dumps({"family": args.family, "size": args.size, "layout": args.layout, "device": args.device,
                      "questions": n, "batch_size": args.batch_size,
                      "logits_prefix_vs_generate_speedup": round(secs["generate"] / secs["logits+prefix"], 2),
                      "logits_prefix_vs_logits_speedup": round(secs["logits"] / secs["logits+prefix"], 2),
                      "agreement": round(agree / len(clean), 4) if clean else None, "n_clean": len(clean),
                      "prefix_same_answers": same / n, "prefix_max_margin_diff": diff}))


if __name__ == "__main__":
    main()
