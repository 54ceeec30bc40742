"""Experiment: a tiny video LLaVA that hallucinates on VideoHallucer-style pairs, and what PaMi-VDPO does to it.

Pipeline (mmpo.demo.video_models, each stage timed):
1. world (mmpo.demo.world.build_world, video side) + held-out evaluation videos (`video_eval_world`);
2. SFT of a tiny LLaVA-NeXT-Video (mmpo trainer, stage sft) -> VideoHallucer object_relation/temporal
   basic / hallucinated / pair accuracy with eval.runner.run_videohallucer (logits mode);
3. preference stage on the SFT model: PaMi-VDPO bags from data_builders.augment, or a comparison loss
   (single-clip VDPO = pami K=1, plain DPO on ground-truth yes/no pairs, pami + dpo), then the same eval.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_probe.py --tag S0              # world + SFT + eval
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_probe.py --tag P0 --sft S0 --pref pami
Prints one JSON line of results (and appends it to --results if given).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)  # ENVIRONMENT.md "Threads": 2 threads on the busy 2-core box are 10-100x slower

from mmpo.demo import video_models as vm  # noqa: E402
from mmpo.demo.world import WorldConfig, build_world  # noqa: E402
from mmpo.records import PairRecord, pair_id, read_sft, write_jsonl  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--tag", default="run"), a("--out", default="/tmp/video_probe"), a("--results", default="")
    a("--seed", type=int, default=0), a("--world-seed", type=int, default=0)
    a("--n-videos", type=int, default=400), a("--n-eval", type=int, default=200)
    a("--co-prob", type=float, default=0.95), a("--eval-co-prob", type=float, default=0.2)
    a("--qa-per-image", type=int, default=4), a("--qa-partner-frac", type=float, default=0.0)
    a("--steps", type=int, default=vm.SFT_STEPS), a("--lr", type=float, default=vm.SFT_LR)
    a("--batch", type=int, default=vm.SFT_BATCH), a("--train-tower", action="store_true")
    a("--clip-steps", type=int, default=vm.CLIP_STEPS), a("--feature-layer", type=int, default=None)
    a("--no-captions", action="store_true")
    a("--sft", default="", help="tag of an earlier SFT run to start the preference stage from")
    a("--pref", default="", choices=["", "pami", "vdpo", "dpo_gt", "pami+dpo"])
    a("--pref-steps", type=int, default=vm.PAMI_STEPS), a("--pref-lr", type=float, default=vm.PAMI_LR)
    a("--beta", type=float, default=vm.PAMI_BETA), a("--k", type=int, default=vm.PAMI_K)
    a("--ops", default=",".join(vm.PAMI_OPS)), a("--delta-min", type=float, default=1e-3)
    a("--dpo-weight", type=float, default=1.0), a("--mil-reduce", default="weighted_loss")
    return p.parse_args(argv)


def world(args, out: Path) -> tuple[Path, Path]:
    """Training world (video side; images kept tiny) and the held-out VideoHallucer folder."""
    wdir = out / "world"
    if not (wdir / "world.json").exists():
        cfg = WorldConfig(seed=args.world_seed, n_images=8, n_test_images=8, n_videos=args.n_videos,
                          co_prob=args.co_prob, qa_per_image=args.qa_per_image, qa_partner_frac=args.qa_partner_frac)
        build_world(cfg, wdir, videos=True)
    edir = out / "eval_world"
    if not (edir / "videohallucer").exists():
        vm.video_eval_world(wdir, edir, n_videos=args.n_eval, co_prob=args.eval_co_prob)
    return wdir, edir


def evaluate(model_dir: Path, adapter: str, eval_dir: Path, out: Path) -> dict:
    """VideoHallucer (object_relation, temporal) by yes/no logits with the project's runner."""
    from eval.runner import VideoHallucerEvalConfig, run_videohallucer
    from mmpo.config import ModelConfig

    cfg = VideoHallucerEvalConfig(model=ModelConfig(path=str(model_dir), adapter=adapter, device="cpu",
                                                    num_frames=vm.NUM_FRAMES),
                                  data_dir=str(eval_dir / "videohallucer"), video_root=str(eval_dir / "videos"),
                                  categories=["object_relation", "temporal"], out_dir=str(out), mode="logits",
                                  batch_size=16)
    res = run_videohallucer(cfg)
    keep = ("basic_accuracy", "hallucinated_accuracy", "pair_accuracy")
    return {c: {k[:5]: round(res[c][k], 4) for k in keep} for c in ("object_relation", "temporal")} | {
        "overall_pair": round(res["overall"]["pair_accuracy"], 4)}


def gt_pairs(sft_path: Path, out: Path) -> Path:
    """Plain DPO pairs from SFT QA: chosen = the true yes/no answer, rejected = the other one, same video."""
    recs = []
    for r in read_sft(sft_path):
        if r.answer not in ("yes", "no"):
            continue  # captions have no single wrong answer
        wrong = {"yes": "no", "no": "yes"}[r.answer]
        recs.append(PairRecord(id=pair_id(list(r.media), r.prompt, r.answer, wrong), media=r.media,
                               media_type=r.media_type, prompt=r.prompt, chosen=r.answer, rejected=wrong))
    write_jsonl(out, recs)
    return out


def losses(args) -> list[dict]:
    pami = {"name": "pami", "params": {"beta": args.beta, "delta_min": args.delta_min, "mil_reduce": args.mil_reduce}}
    dpo = {"name": "dpo", "params": {"beta": args.beta}}
    return {"pami": [pami], "vdpo": [pami], "dpo_gt": [dpo],
            "pami+dpo": [pami, dict(dpo, weight=args.dpo_weight)]}[args.pref]


def preference(args, out: Path, wdir: Path, edir: Path) -> dict:
    """Pairs -> LoRA preference training on the SFT model -> evaluation."""
    from data_builders.augment import AugmentConfig, build

    sft_out = Path(args.out) / args.sft
    model_dir, sft_data = sft_out / "sft" / "model", sft_out / "sft_video_vh.jsonl"
    t0 = time.time()
    k = 1 if args.pref == "vdpo" else args.k
    bag = vm.pami_pairs(sft_data, wdir, out / "pairs", lambda **kw: build(AugmentConfig(**kw)),
                        num_candidates=k, ops=args.ops.split(","), seed=args.seed)
    pairs = bag
    if args.pref == "dpo_gt":
        pairs = gt_pairs(sft_data, out / "gt_pairs.jsonl")
    elif args.pref == "pami+dpo":
        # one file: bag pairs carry chosen = rejected; the dpo term needs chosen != rejected, so each
        # record gets rejected = the wrong answer and its bag (pami ignores *_rejected, METHODS §1)
        pairs = vm.with_wrong_answers(bag, out / "pami_dpo_pairs.jsonl")
    res = {"pairs_s": round(time.time() - t0, 1)}
    t0 = time.time()
    adapter = vm.train_pami(model_dir, pairs, out / "pref", wdir, seed=args.seed, steps=args.pref_steps,
                            lr=args.pref_lr, loss=losses(args))
    res["pref_s"] = round(time.time() - t0, 1)
    res["pref_metrics"] = last_metrics(out / "pref")
    res["before"] = json.loads((sft_out / "result.json").read_text())["eval"]
    res["eval"] = evaluate(model_dir, str(adapter), edir, out / "eval")
    return res


def last_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    pick = lambda r: {k: round(v, 4) for k, v in r.items() if isinstance(v, float) and ("loss" in k or "pami" in k
                                                                                         or "margin" in k)}
    return {"first": pick(first), "last": pick(last)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out) / args.tag
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wdir, edir = world(args, Path(args.out) / f"w{args.world_seed}_{args.n_videos}_{args.co_prob}_{args.eval_co_prob}"
                       f"_{args.qa_partner_frac}")
    res = {"tag": args.tag, "args": vars(args), "world_s": round(time.time() - t0, 1)}
    if args.pref:
        res.update(preference(args, out, wdir, edir))
    else:
        t0 = time.time()
        model_dir = vm.train_video_model(wdir, out, seed=args.seed, steps=args.steps, lr=args.lr,
                                         batch_size=args.batch, train_tower=args.train_tower,
                                         clip_steps=args.clip_steps, feature_layer=args.feature_layer,
                                         captions=not args.no_captions)
        res["sft_s"] = round(time.time() - t0, 1)
        rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
        res["sft_loss"] = [round(r["loss"], 4) for r in rows]
        t0 = time.time()
        res["eval"] = evaluate(model_dir, "", edir, out / "eval")
        res["eval_s"] = round(time.time() - t0, 1)
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "args"}))
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


if __name__ == "__main__":
    main()
