"""Experiment: a tiny video LLaVA that follows a temporal prior on VideoHallucer-style pairs, and what the video
preference methods do to it.

Pipeline (mmpo.demo.video_models, each stage timed):
1. world (mmpo.demo.world.build_world, video side; `--order-prob` is the temporal prior) + held-out evaluation
   videos (`video_eval_world`, half the pair videos counter-prior);
2. SFT of a tiny LLaVA-NeXT-Video (mmpo trainer, stage sft) -> VideoHallucer object_relation/temporal
   basic / hallucinated / pair accuracy with mmpo.eval.videohallucer_runner.run_videohallucer (logits mode), temporal pairs also
   split by the prior (t_prior, t_counter, t_none);
3. preference stage on the SFT model (`--sft TAG --pref ...`): PaMi-VDPO bags from mmpo.builders.augment
   (pami, pami+dpo, single-clip vdpo; `--ops`, `--k`, `--delta-min`, `--floor-from`, `--tau-*`,
   `--anneal-until` study the selection), plain DPO on ground-truth yes/no pairs (dpo_gt), or VideoSAVi
   (savi: self-QA pairs on unlabelled videos, `--savi-judge`, `--savi-preset`, `--savi-clip-check`,
   `--savi-temperatures`, `--savi-order-prob`; the pairs' label accuracy is checked against the unlabelled
   videos' ground truth, which the method never reads), then the same eval; `--sft shipped` starts from the
   demo's shipped video model (with `--max-objects 3 --linger 1` the world is the demo's);
4. `--js N`: PaMi's prompt-aware JS distance per augmentation and question kind under the SFT model.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_probe.py --tag T2 --max-objects 3 --linger 1 --steps 1000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_probe.py --tag Pe --sft T2 --max-objects 3 --linger 1 \
        --pref pami+dpo
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_probe.py --tag So --sft shipped --max-objects 3 --linger 1 \
        --pref savi --pref-steps 50 --pref-lr 5e-4 --savi-clip-check order
Prints one JSON line of results (and appends it to --results if given). The world options must repeat the
SFT run's (they name the world folder).
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

torch.set_num_threads(1)  # docs/ENVIRONMENT.md "Threads": 2 threads on the busy 2-core box are 10-100x slower

from mmpo.demo import video_models as vm  # noqa: E402
from mmpo.demo.world import WorldConfig, build_world  # noqa: E402
from mmpo.records import read_sft  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--tag", default="run"), a("--out", default="/tmp/video_probe"), a("--results", default="")
    a("--seed", type=int, default=0), a("--world-seed", type=int, default=0)
    a("--n-videos", type=int, default=400), a("--n-eval", type=int, default=vm.EVAL_VIDEOS)
    a("--co-prob", type=float, default=0.95), a("--eval-co-prob", type=float, default=vm.EVAL_CO_PROB)
    a("--order-prob", type=float, default=0.95), a("--eval-order-prob", type=float, default=vm.EVAL_ORDER_PROB)
    a("--order-qa", type=int, default=4), a("--max-objects", type=int, default=4), a("--linger", type=int, default=0)
    a("--qa-per-image", type=int, default=4), a("--qa-partner-frac", type=float, default=0.0)
    a("--steps", type=int, default=vm.SFT_STEPS), a("--lr", type=float, default=vm.SFT_LR)
    a("--batch", type=int, default=vm.SFT_BATCH), a("--train-tower", action="store_true")
    a("--clip-steps", type=int, default=vm.CLIP_STEPS), a("--feature-layer", type=int, default=None)
    a("--no-captions", action="store_true"), a("--judge", type=int, default=vm.JUDGE_RECORDS)
    a("--sft", default="", help="tag of an earlier SFT run to start the preference stage from")
    a("--js", type=int, default=0, help="only print PaMi's JS distance per op and question kind on N training videos")
    a("--judge-check", action="store_true", help="only check the --sft model's yes/no judge on held-out pairs")
    a("--pref", default="", choices=["", "pami", "vdpo", "dpo_gt", "pami+dpo", "savi"])
    a("--savi-videos", type=int, default=vm.SAVI_VIDEOS), a("--savi-clip", default=str(vm.SHIPPED_CLIP))
    a("--savi-judge", default=vm.SAVI_JUDGE, choices=list(vm.SAVI_JUDGES))
    a("--savi-preset", default="videosavi_v1", choices=["videosavi_v1", "critique_refine"])
    a("--savi-clip-check", default="answer", choices=list(vm.SAVI_CLIP_CHECKS))
    a("--savi-temperatures", default=",".join(map(str, vm.SAVI_TEMPERATURES)))
    a("--savi-order-prob", type=float, default=None, help="the unlabelled videos' temporal prior (default: the world's)")
    a("--savi-min-gap", type=float, default=vm.SAVI_MIN_GAP)
    a("--reuse-pairs", default="", help="tag of an earlier savi run whose pairs to train on again")
    a("--pref-steps", type=int, default=vm.PAMI_STEPS), a("--pref-lr", type=float, default=vm.PAMI_LR)
    a("--beta", type=float, default=vm.PAMI_BETA), a("--k", type=int, default=vm.PAMI_K)
    a("--pref-batch", type=int, default=vm.PAMI_BATCH)
    a("--ops", default=",".join(vm.PAMI_OPS)), a("--delta-min", type=float, default=1e-3)
    a("--dpo-weight", type=float, default=1.0), a("--mil-reduce", default="weighted_loss")
    a("--tau-start", type=float, default=10.0), a("--tau-end", type=float, default=0.01)
    a("--anneal-until", type=float, default=0.5), a("--floor-from", type=float, default=0.0)
    return p.parse_args(argv)


def world(args, out: Path) -> tuple[Path, Path]:
    """Training world (video side; images kept tiny) and the held-out VideoHallucer folder."""
    wdir = out / "world"
    if not (wdir / "world.json").exists():
        cfg = WorldConfig(seed=args.world_seed, n_images=8, n_test_images=8, n_videos=args.n_videos,
                          co_prob=args.co_prob, qa_per_image=args.qa_per_image, qa_partner_frac=args.qa_partner_frac,
                          order_prob=args.order_prob, order_qa_per_video=args.order_qa,
                          max_video_objects=args.max_objects, video_linger=args.linger)
        build_world(cfg, wdir, videos=True)
    edir = out / "eval_world"
    if not (edir / "videohallucer").exists():
        vm.video_eval_world(wdir, edir, n_videos=args.n_eval, co_prob=args.eval_co_prob,
                            order_prob=args.eval_order_prob)
    return wdir, edir


def evaluate(model_dir: Path, adapter: str, eval_dir: Path, out: Path) -> dict:
    """VideoHallucer (object_relation, temporal) by yes/no logits with the project's runner."""
    from mmpo.config import ModelConfig
    from mmpo.eval.videohallucer_runner import VideoHallucerEvalConfig, run_videohallucer

    cfg = VideoHallucerEvalConfig(model=ModelConfig(path=str(model_dir), adapter=adapter, device="cpu",
                                                    num_frames=vm.NUM_FRAMES),
                                  data_dir=str(eval_dir / "videohallucer"), video_root=str(eval_dir / "videos"),
                                  categories=["object_relation", "temporal"], out_dir=str(out), mode="logits",
                                  batch_size=16)
    res = run_videohallucer(cfg)
    keep = ("basic_accuracy", "hallucinated_accuracy", "pair_accuracy")
    by_prior = vm.prior_breakdown(out, eval_dir / "videohallucer")
    return {c: {k[:5]: round(res[c][k], 4) for k in keep} for c in ("object_relation", "temporal")} | {
        "overall_pair": round(res["overall"]["pair_accuracy"], 4)} | {
        f"t_{t}": {k[:5]: round(v[k], 4) for k in keep} | {"n": v["n_pairs"]} for t, v in by_prior.items()}


def losses(args) -> list[dict]:
    pami = {"name": "pami", "params": {"beta": args.beta, "delta_min": args.delta_min, "mil_reduce": args.mil_reduce,
                                       "tau_start": args.tau_start, "tau_end": args.tau_end,
                                       "anneal_until": args.anneal_until, "floor_from": args.floor_from}}
    dpo = {"name": "dpo", "params": {"beta": args.beta}}
    return {"pami": [pami], "vdpo": [pami], "dpo_gt": [dpo], "savi": [dpo],
            "pami+dpo": [pami, dict(dpo, weight=args.dpo_weight)]}[args.pref]


def unlabelled_folder(args, wdir: Path) -> Path:
    """VideoSAVi's unlabelled videos: one folder per count (and temporal prior, when not the world's)."""
    prior = "" if args.savi_order_prob is None else f"_order{args.savi_order_prob}"
    return wdir.parent / f"unlabelled_{args.savi_videos}{prior}"


def savi(args, model_dir: Path, wdir: Path, out: Path) -> tuple[Path, dict]:
    """VideoSAVi pairs on unlabelled videos (vm.savi_pairs with the self_qa builder) and the builder's counts."""
    folder = unlabelled_folder(args, wdir)
    videos = folder / "videos.jsonl" if folder.joinpath("videos.jsonl").exists() else \
        vm.unlabelled_videos(wdir, folder, n_videos=args.savi_videos, order_prob=args.savi_order_prob)
    pairs = vm.savi_pairs(model_dir, wdir, videos, out / "savi", clip_model=args.savi_clip, seed=args.seed,
                          min_gap=args.savi_min_gap, judge=args.savi_judge, preset=args.savi_preset,
                          clip_check=args.savi_clip_check,
                          temperatures=tuple(float(t) for t in args.savi_temperatures.split(",")))
    counts = json.loads((pairs.parent / "manifest.json").read_text())["counts"]
    return pairs, counts | pair_label_accuracy(pairs, videos.parent, vm.world_config(wdir))


def pair_label_accuracy(pairs: Path, video_dir: Path, cfg) -> dict:
    """How often a self-QA pair's chosen answer is the true one, by question kind, from the unlabelled videos'
    ground truth (video_events.json), which VideoSAVi itself never reads."""
    import re

    from mmpo.demo.world import order_prior

    truth = {g["video"]: g["order"] for g in json.loads((video_dir / "video_events.json").read_text())}
    hits: dict = {}
    chosen = {"yes": 0, "no": 0, "other": 0}
    for line in pairs.read_text().splitlines():
        p = json.loads(line)
        seq = truth[p["media"][0]]
        m = re.match(r"Does the (\w+) appear before the (\w+)\?", p["prompt"])
        if m:
            x, y = m.groups()
            ans = "yes" if x in seq and y in seq and seq.index(x) < seq.index(y) else "no"
            first = (x, y) if ans == "yes" else (y, x)
            kind = "order_" + (order_prior(*first, cfg) if x in seq and y in seq else "absent")
        else:
            obj = re.match(r"Is there a (\w+) in the video\?", p["prompt"]).group(1)
            ans, kind = ("yes" if obj in seq else "no"), "presence"
        hits.setdefault(kind, []).append(p["chosen"].strip().lower().rstrip(".") == ans)
        chosen[vm.yes_no_word(p["chosen"]) or "other"] += 1
    return {f"label_acc_{k}": [round(sum(v) / len(v), 3), len(v)] for k, v in sorted(hits.items())} | {
        "label_acc_all": round(sum(map(sum, hits.values())) / max(1, sum(map(len, hits.values()))), 3),
        "chosen": dict(chosen)}


SHIPPED = "shipped"  # --sft shipped: the demo's shipped video model (mmpo/demo/assets/models/video_llava)


def shipped_sft(wdir: Path, edir: Path, sft_out: Path) -> tuple[Path, Path]:
    """The shipped video model and its SFT data on this world, evaluated once (cached in sft_out/result.json).

    With the demo's world options (`--max-objects 3 --linger 1`, the rest default) the training, held-out and
    unlabelled videos are the demo's, so this is the demo's SFT row."""
    model_dir = Path(vm.SHIPPED_CLIP).parent / "video_llava"
    sft_out.mkdir(parents=True, exist_ok=True)
    sft_data = vm.suffixed_sft(wdir, sft_out / "sft_video_vh.jsonl")
    if not (sft_out / "result.json").exists():
        (sft_out / "result.json").write_text(json.dumps({"eval": evaluate(model_dir, "", edir, sft_out / "eval")}))
    return model_dir, sft_data


def preference(args, out: Path, wdir: Path, edir: Path) -> dict:
    """Pairs -> LoRA preference training on the SFT model -> evaluation."""

    sft_out = Path(args.out) / args.sft
    if args.sft == SHIPPED:
        model_dir, sft_data = shipped_sft(wdir, edir, sft_out)
    else:
        model_dir, sft_data = sft_out / "sft" / "model", sft_out / "sft_video_vh.jsonl"
    t0 = time.time()
    res = {}
    k = 1 if args.pref == "vdpo" else args.k
    if args.pref == "savi" and args.reuse_pairs:
        earlier = json.loads((Path(args.out) / args.reuse_pairs / "result.json").read_text())
        pairs, res["savi_counts"] = Path(args.out) / args.reuse_pairs / "savi" / "pairs.jsonl", earlier["savi_counts"]
    elif args.pref == "savi":
        pairs, res["savi_counts"] = savi(args, model_dir, wdir, out)
    elif args.pref == "dpo_gt":  # the demo's DPO control: true vs wrong answer, each SFT question once
        pairs = vm.answer_pairs(vm.yes_no_records(sft_data, out / "yes_no_sft.jsonl"), out / "gt_pairs.jsonl")
    else:
        source = vm.yes_no_records(sft_data, out / "yes_no_sft.jsonl")
        pairs = bag = vm.pami_pairs(source, wdir, out / "pairs", num_candidates=k, ops=args.ops.split(","), seed=args.seed)
    if args.pref == "pami+dpo":
        # one file: bag pairs carry chosen = rejected; the dpo term needs chosen != rejected, so each
        # record gets rejected = the wrong answer and its bag (pami ignores *_rejected, METHODS §1)
        pairs = vm.with_wrong_answers(bag, out / "pami_dpo_pairs.jsonl")
    res["pairs_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    # self-QA pairs name the unlabelled videos (relative to their folder), every other set the world's
    media_root = unlabelled_folder(args, wdir) if args.pref == "savi" else wdir
    adapter = vm.train_pami(model_dir, pairs, out / "pref", media_root, seed=args.seed, steps=args.pref_steps,
                            lr=args.pref_lr, loss=losses(args), batch_size=args.pref_batch)
    res["pref_s"] = round(time.time() - t0, 1)
    res["pref_metrics"] = last_metrics(out / "pref")
    res["before"] = json.loads((sft_out / "result.json").read_text())["eval"]
    res["eval"] = evaluate(model_dir, str(adapter), edir, out / "eval")
    return res


JS_OPS = ["temporal_reverse", "frame_shuffle", "segment_swap", "spatial_crop", "frame_drop", "gaussian_noise",
          "gaussian_blur"]


def question_kind(prompt: str, kind: str, cfg) -> str:
    """presence | order_pair (the two objects are a co-occurring pair) | order_none."""
    import re

    from mmpo.demo.world import order_prior

    if kind == "qa":
        return "presence"
    x, y = re.match(r"Does the (\w+) appear before the (\w+)\?", prompt).groups()
    return "order_none" if order_prior(x, y, cfg) == "none" else "order_pair"


@torch.no_grad()
def js_table(model_dir: Path, wdir: Path, n_videos: int, adapter: str = "") -> dict:
    """PaMi's prompt-aware distance as the trainer computes it (JS of the answer-token distributions, original vs
    augmented clip, mean over answer + EOS) for each op and question kind, on the yes/no SFT records of the
    first n training videos: {kind: {op: {"median": .., "kept": share >= 1e-3, "n": ..}}}."""
    import numpy as np

    from mmpo.config import ModelConfig
    from mmpo.logprobs import plain_logps
    from mmpo.media import augment, load_video
    from mmpo.models import encode_answers, encode_prompts, load_model
    from mmpo.pami import js_divergence
    from mmpo.records import AugSpec

    model, proc = load_model(ModelConfig(path=str(model_dir), adapter=adapter, num_frames=vm.NUM_FRAMES, device="cpu"))
    cfg = vm.world_config(wdir)
    recs = [r for r in read_sft(wdir / "sft_video.jsonl") if r.meta.get("kind") in ("qa", "order")]
    keep = set(sorted({r.media for r in recs})[:n_videos])
    recs = [r for r in recs if r.media in keep]
    dist: dict = {}
    for i in range(0, len(recs), 16):
        batch = recs[i:i + 16]
        clips = [load_video(wdir / r.media[0], num_frames=vm.NUM_FRAMES) for r in batch]
        prompts = [r.prompt + vm.VH_SUFFIX for r in batch]
        answers = encode_answers(proc, [r.answer for r in batch])
        base = plain_logps(model, encode_prompts(proc, prompts, clips, "video"), answers, keep_logits=True)[2]
        for j, op in enumerate(JS_OPS):
            aug = [augment(c, AugSpec(op, {}, 1000 * i + 17 * j + k)) for k, c in enumerate(clips)]
            logits = plain_logps(model, encode_prompts(proc, prompts, aug, "video"), answers, keep_logits=True)[2]
            for r, v in zip(batch, js_divergence(base, logits, answers["attention_mask"]).tolist()):
                dist.setdefault(question_kind(r.prompt, r.meta["kind"], cfg), {}).setdefault(op, []).append(v)
    return {k: {op: {"median": round(float(np.median(v)), 5), "kept": round(float(np.mean(np.array(v) >= 1e-3)), 3),
                     "n": len(v)} for op, v in ops.items()} for k, ops in sorted(dist.items())}


@torch.no_grad()
def judge_check(model_dir: Path, edir: Path, n_pairs: int = 60) -> dict:
    """Does the model's yes/no judge (mmpo.builders.judging, VideoSAVi's self-judge) prefer the true answer?

    For the first n held-out pairs of each category, both questions are judged with "yes" and with "no" as the
    candidate answer: {category: [share where S_judge(true) > S_judge(wrong), mean |S_judge(yes) - S_judge(no)|]}.
    """
    from mmpo.builders.judging import yes_no_judge
    from mmpo.config import ModelConfig
    from mmpo.media import load_video
    from mmpo.models import load_model

    model, proc = load_model(ModelConfig(path=str(model_dir), num_frames=vm.NUM_FRAMES, device="cpu"))
    judge = yes_no_judge(model, proc, "video")
    out = {}
    for cat in ("object_relation", "temporal"):
        right, gaps = [], []
        for pair in json.loads((edir / "videohallucer" / cat / f"{cat}.json").read_text())[:n_pairs]:
            for side in ("basic", "hallucination"):
                q = pair[side]
                clip = load_video(edir / "videos" / q["video"], num_frames=vm.NUM_FRAMES)
                yes, no = judge([(q["question"] + vm.VH_SUFFIX, "yes"), (q["question"] + vm.VH_SUFFIX, "no")],
                                [clip, clip], "video")
                right.append((yes > no) == (q["answer"] == "yes"))
                gaps.append(abs(yes - no))
        out[cat] = [round(sum(right) / len(right), 3), round(sum(gaps) / len(gaps), 4)]
    return out


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
                       f"_{args.qa_partner_frac}_{args.order_prob}_{args.eval_order_prob}_{args.order_qa}_{args.n_eval}"
                       f"_{args.max_objects}_{args.linger}")
    res = {"tag": args.tag, "args": vars(args), "world_s": round(time.time() - t0, 1)}
    if args.js:
        res["js"] = js_table(Path(args.out) / args.sft / "sft" / "model", wdir, args.js)
    elif args.judge_check:
        res["judge_check"] = judge_check(Path(args.out) / args.sft / "sft" / "model", edir)
    elif args.pref:
        res.update(preference(args, out, wdir, edir))
    else:
        t0 = time.time()
        model_dir = vm.train_video_model(wdir, out, seed=args.seed, steps=args.steps, lr=args.lr,
                                         batch_size=args.batch, train_tower=args.train_tower,
                                         clip_steps=args.clip_steps, feature_layer=args.feature_layer,
                                         captions=not args.no_captions, judge=args.judge)
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
