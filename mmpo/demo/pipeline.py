"""`mmpo demo`: the whole build -> train -> evaluate loop on the synthetic world, with measured numbers.

Stages (each prints what it does and how long it took):
1. world: images with COCO annotations, videos with events and a temporal prior, SFT data (`demo.world`);
2. world models: the shipped tiny CLIP + SFT LLaVA (or `--from-scratch`: `demo.image_models`);
3. POPE random / popular / adversarial questions from the held-out annotations (the POPE builder);
4. evaluate the SFT model (POPE in logits mode with image-prefix reuse; CHAIR of its held-out captions);
5. build preference sets: world answer pairs (`demo.pairs`) and, for DA-DPO, difficulty scores;
6. train each image method (LoRA, the one trainer) for each seed, evaluate both again;
7. video: held-out VideoHallucer-style videos (half the pair videos break the temporal prior), the shipped
   video LLaVA (or trained here), PaMi bags from the augmentation builder, VideoSAVi pairs from the self-QA
   builder on unlabelled videos, each video method trained and evaluated (`demo.video_models`);
8. report.md with before/after tables (mean ± std over seeds; one seed: the value alone) and PNG plots.

The demo is the layer above everything: it uses the builders (`mmpo.builders`) and the evaluators (`mmpo.eval`)
directly, as a user's script would; nothing below imports it (tests/test_cli_and_configs.py checks the layers).
The report's text and plots are in `demo.report`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmpo.builders import difficulty
from mmpo.config import ModelConfig, TrainConfig, from_dict
from mmpo.demo import report
from mmpo.demo.world import CAPTION_Q, WorldConfig, build_world
from mmpo.eval import chair_runner, pope_build, pope_runner, videohallucer_runner

ASSETS = Path(__file__).parent / "assets"
RUN_FOLDERS = ("world", "models", "runs", "eval", "pairs", "video")  # what `run` writes under `out`, besides the report


@dataclass
class Method:
    """One preference-optimisation recipe the demo compares."""

    name: str  # row label
    data: str  # which pair set: answers | difficulty | captions
    loss: list = field(default_factory=list)  # loss terms (mmpo.config.LossTerm dicts)
    note: str = ""  # one line for the report
    lr: float | None = None  # None: DemoSettings.lr


# Tuned on the SFT model, seed 0 (benchmarks/LOG.md, "Demo DPO recipes"): beta 0.5, lr 2e-3, 300 LoRA steps.
METHODS = [
    Method("DPO", "answers", [{"name": "dpo", "params": {"beta": 0.5}}],
           "sigmoid DPO on ground-truth yes/no pairs (negatives: absent co-occurring partners)"),
    Method("DA-DPO", "difficulty", [{"name": "dadpo", "params": {"beta": 0.5, "alpha": 1.0}}],
           "the same pairs, per-pair beta*(1+|delta|) from CLIP + generative difficulty (distribution-aware voting)"),
    Method("mDPO", "answers", [{"name": "dpo", "params": {"beta": 0.5}}, {"name": "mdpo_conditional", "params": {"beta": 0.5}},
                               {"name": "mdpo_anchor", "params": {"beta": 0.5}}],
           "DPO + conditional image preference (keep 1-20% of the image) + anchor, equal weights"),
    # benchmarks/LOG.md (2026-11-28, caption pairs): DPO alone at beta 0.5 / lr 2e-3 collapsed the captions into
    # "no yes yes ..."; the NLL term on the chosen caption (RPO) keeps them fluent.
    Method("Caption-DPO", "captions", [{"name": "dpo", "params": {"beta": 0.1}}, {"name": "sft", "weight": 1.0}],
           "DPO + NLL on the chosen caption (RPO) on true captions vs the same caption with an absent partner added "
           "(HA-DPO / POVID-style hallucination injection)", lr=5e-4),
]


@dataclass
class DemoSettings:
    """Sizes of a demo run (the quick variant is the end-to-end test)."""

    world: WorldConfig = field(default_factory=lambda: WorldConfig(n_videos=400))
    pair_images: int = 600  # training images that give preference pairs (one yes-pair, one no-pair each)
    steps: int = 300  # DPO steps per method and seed
    batch_size: int = 16
    lr: float = 2e-3
    lora_r: int = 16
    seeds: int = 1
    video: bool = True  # run the video part (PaMi-VDPO on VideoHallucer-style pairs)
    video_eval: int = 300  # held-out evaluation videos (video_models.EVAL_VIDEOS)
    video_sft_steps: int = 1000  # video SFT steps when the model is trained here (not shipped)
    video_clip_steps: int = 150  # contrastive steps of the video model's CLIP when trained here
    video_steps: int | None = None  # steps of every video method (None: each method's own)
    savi_videos: int = 160  # unlabelled videos VideoSAVi questions, answers and judges (video_models.SAVI_VIDEOS)
    savi_min_gap: float = 1.0  # VideoSAVi judge gap (the quick demo's 4-step model judges everything alike: 0)
    methods: tuple = ("DPO", "DA-DPO", "Caption-DPO")  # image methods to run (names in METHODS); mDPO adds ~50 s
    # video methods (names in video_models.video_methods()); benchmarks/demo_effect.py adds DPO and PaMi-VDPO alone
    video_methods: tuple = ("PaMi-VDPO + DPO", "VideoSAVi")


def quick_settings() -> DemoSettings:
    world = WorldConfig(n_images=120, n_test_images=40, n_videos=12)
    return DemoSettings(world=world, pair_images=40, steps=4, batch_size=8, video_eval=6, video_sft_steps=4,
                        video_clip_steps=2, video_steps=2, savi_videos=3,
                        savi_min_gap=0.0)


class Timer:
    """Prints each stage with its wall time; keeps the totals for the report."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                print(f"\n== {name}", flush=True)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = time.perf_counter() - self.t0
                print(f"   ({timer.times[name]:.1f} s)", flush=True)
        return _Stage()


def world_models(out: Path, settings: DemoSettings, world_dir: Path, from_scratch: bool, quick: bool) -> dict:
    """Shipped models when they match the world config, else train them (about 3 minutes on CPU)."""
    shipped = ASSETS / "models"
    if not from_scratch and not quick and (shipped / "llava" / "config.json").is_file():
        return {"clip": shipped / "clip", "llava": shipped / "llava"}
    from mmpo.demo.image_models import train_image_models

    steps = {"clip_steps": 10, "sft_steps": 20} if quick else {}
    return train_image_models(world_dir, out / "models", settings.world, **steps)


def pope_files(world_dir: Path, seed: int) -> list[str]:
    """POPE splits built from the held-out annotations by the reference procedure (2 objects per image)."""
    ann = json.loads((world_dir / "annotations.json").read_text())
    files = pope_build.build_files(world_dir / "annotations.json", world_dir / "pope", sample_num=2,
                                   img_num=_eligible(ann, 2), seed=seed)
    return [str(p) for p in files.values()]


def _eligible(ann: dict, k: int) -> int:
    """Images with at least k distinct objects (POPE asks k objects per image; all of them are used)."""
    counts: dict[int, set] = {}
    for a in ann["annotations"]:
        counts.setdefault(a["image_id"], set()).add(a["category_id"])
    return sum(len(v) >= k for v in counts.values())


def evaluate_pope(model_path: Path, adapter: str, questions: list[str], world_dir: Path, out_dir: Path) -> dict:
    """POPE (logits mode, prefix reuse) -> {split: {f1, accuracy, precision, recall, yes_ratio}}."""
    cfg = pope_runner.PopeEvalConfig(model=ModelConfig(path=str(model_path), adapter=adapter), questions=questions,
                                image_root=str(world_dir), out_dir=str(out_dir), mode="logits", batch_size=32,
                                prefix_reuse=True)
    metrics = pope_runner.run_pope(cfg)
    return {s: metrics["splits"][s] for s in metrics["splits"]} if "splits" in metrics else metrics


def evaluate_chair(model_path: Path, adapter: str, world_dir: Path, out_dir: Path) -> dict:
    """CHAIR of each held-out image's caption ("Describe the image.", greedy), against the objects really drawn.

    The world's annotations are COCO-format with its own classes, so the vocabulary is the file's categories
    (`vocabulary: categories`): exact ground truth, no synonym lists. Returns CHAIR_i, CHAIR_s, recall and counts.
    """
    cfg = chair_runner.ChairEvalConfig(model=ModelConfig(path=str(model_path), adapter=adapter),
                                       annotations=str(world_dir / "annotations.json"), image_root=str(world_dir),
                                       out_dir=str(out_dir), prompt=CAPTION_Q, batch_size=50, max_new_tokens=32,
                                       vocabulary="categories")
    metrics = chair_runner.run_chair(cfg)
    return {k: metrics[k] for k in ("chair_i", "chair_s", "recall", "n_captions", "n_mentions", "prompt")}


def train_method(method: Method, pairs: Path, media_root: Path, model_path: Path, out_dir: Path,
                 settings: DemoSettings, seed: int) -> Path:
    """Train one method with the project's trainer (LoRA on the language model)."""
    from mmpo.trainer import train

    cfg = from_dict(TrainConfig, {
        "output_dir": str(out_dir), "seed": seed, "model": {"path": str(model_path)},
        "lora": {"r": settings.lora_r, "alpha": 2 * settings.lora_r},
        "data": {"train": str(pairs), "media_root": str(media_root)}, "loss": method.loss, "lr": method.lr or settings.lr,
        "max_steps": settings.steps, "batch_size": settings.batch_size, "warmup_ratio": 0.1, "progress": True})
    train(cfg)
    return out_dir / "adapter"


def build_pair_sets(world_dir: Path, models: dict, settings: DemoSettings, out: Path) -> dict[str, Path]:
    """World pairs plus what the builders make from them for the chosen methods (DA-DPO scores)."""
    from mmpo.demo.pairs import write_world_pairs

    sets = write_world_pairs(world_dir, settings.world, settings.pair_images)
    if any(m.data == "difficulty" for m in METHODS if m.name in settings.methods):
        sets["difficulty"] = difficulty.build(from_dict(difficulty.DifficultyConfig, {
            "in_pairs": str(sets["answers"]), "media_root": str(world_dir), "out_dir": str(out / "difficulty"),
            "clip_model": str(models["clip"]), "model": {"path": str(models["llava"])},
            "progress": False})) / "pairs.jsonl"
    return sets


VIDEO_CATS = ("object_relation", "temporal")


def video_sets(out: Path, needed: set, model_dir: Path, world_dir: Path, sft_path: Path, clip_dir: Path,
               settings: DemoSettings, timer: Timer) -> tuple[dict, dict]:
    """The video pair sets the chosen methods train on: {data: (pairs.jsonl, media root)}, and self-QA counts."""
    from mmpo.demo import video_models as vm

    source = vm.yes_no_records(sft_path, out / "video" / "yes_no_sft.jsonl")
    sets, counts = {}, {}
    if "answers" in needed:
        sets["answers"] = (vm.answer_pairs(source, out / "pairs" / "video_answers.jsonl"), world_dir)
    if "bags" in needed:
        with timer("build PaMi bags (mmpo build augment, video ops)"):
            bag = vm.pami_pairs(source, world_dir, out / "pairs" / "video_augment")
            sets["bags"] = (vm.with_wrong_answers(bag, out / "pairs" / "video_pami_dpo.jsonl"), world_dir)
    if "savi" in needed:
        with timer("VideoSAVi pairs (mmpo build self_qa: own questions, sampled answers, self-judge, CLIP check)"):
            videos = vm.unlabelled_videos(world_dir, out / "video" / "unlabelled", settings.savi_videos)
            pairs = vm.savi_pairs(model_dir, world_dir, videos, out / "pairs" / "video_self_qa", clip_model=clip_dir,
                                  min_gap=settings.savi_min_gap)
            counts = json.loads((pairs.parent / "manifest.json").read_text())["counts"]
            chosen = [json.loads(line)["chosen"].strip().lower() for line in pairs.read_text().splitlines()]
            counts["chosen_no"] = sum(c.startswith("no") for c in chosen)
            print(f"   {counts}")
            sets["savi"] = (pairs, videos.parent)
    return sets, counts


def video_stage(out: Path, settings: DemoSettings, world_dir: Path, from_scratch: bool, quick: bool, timer: Timer,
                clip_dir: Path) -> dict:
    """Video methods on the tiny LLaVA-NeXT-Video, measured on held-out VideoHallucer-style pairs (video_models)."""
    from mmpo.demo import video_models as vm

    def evaluate(adapter: str, tag: str) -> dict:
        cfg = videohallucer_runner.VideoHallucerEvalConfig(
            model=ModelConfig(path=str(model_dir), adapter=adapter, num_frames=vm.NUM_FRAMES),
            data_dir=str(vh_dir), video_root=str(vh_dir.parent / "videos"), categories=list(VIDEO_CATS),
            out_dir=str(out / "eval" / tag), mode="logits", batch_size=16)
        res = videohallucer_runner.run_videohallucer(cfg)
        prior = vm.prior_breakdown(out / "eval" / tag, vh_dir)
        return {c: res[c] for c in VIDEO_CATS} | {"overall": res["overall"], "temporal_by_prior": prior}

    with timer("video: held-out VideoHallucer-style videos"):
        vh_dir = vm.video_eval_world(world_dir, out / "video" / "eval_world", n_videos=settings.video_eval)
    with timer("video model: tiny LLaVA-NeXT-Video after SFT"):
        shipped = ASSETS / "models" / "video_llava"
        if not from_scratch and not quick and (shipped / "config.json").is_file():
            model_dir = shipped
        else:
            model_dir = vm.train_video_model(world_dir, out / "video" / "model", steps=settings.video_sft_steps,
                                             clip_steps=settings.video_clip_steps)
        sft_path = vm.suffixed_sft(world_dir, out / "video" / "sft_video_vh.jsonl")
    with timer("evaluate the video SFT model (VideoHallucer-style, logits)"):
        before = evaluate("", "video_sft")
        print("   " + _video_summary(before))
    methods = [m for m in vm.video_methods() if m.name in settings.video_methods]
    sets, self_qa = video_sets(out, {m.data for m in methods}, model_dir, world_dir, sft_path, clip_dir, settings,
                               timer)
    after: dict[str, list[dict]] = {}
    curves: dict[str, list[dict]] = {}  # each method's first seed, for the report's training curves
    for method in methods:
        pairs, media_root = sets[method.data]
        if not pairs.read_text().strip():
            print(f"   {method.name}: no pairs kept, nothing to train")
            continue
        for seed in range(settings.seeds):
            tag = f"video_{method.name.lower().replace('-', '').replace(' + ', '_')}_seed{seed}"
            with timer(f"train {method.name} (video, seed {seed})"):
                adapter = vm.train_pami(model_dir, pairs, out / "runs" / tag, media_root, seed=seed,
                                        steps=settings.video_steps or method.steps, lr=method.lr, loss=method.loss)
            if seed == 0:
                from mmpo.metrics import read_metrics

                curves[method.name] = [r for r in read_metrics(out / "runs" / tag) if "loss" in r]
            with timer(f"evaluate {method.name} (video, seed {seed})"):
                after.setdefault(method.name, []).append(evaluate(str(adapter), tag))
                print("   " + _video_summary(after[method.name][-1]))
    return {"before": before, "after": after, "self_qa": self_qa, "curves": curves,
            "notes": {m.name: m.note for m in methods}}


def _video_summary(metrics: dict) -> str:
    counter = metrics["temporal_by_prior"].get("counter", {}).get("pair_accuracy", float("nan"))
    return "  ".join(f"{c}: pair {metrics[c]['pair_accuracy']:.3f}" for c in VIDEO_CATS) + \
        f"  counter-prior pair {counter:.3f}  overall pair {metrics['overall']['pair_accuracy']:.3f}"


def prepare_out(out: Path) -> Path:
    """Create `out`, or clean a previous demo's run folders in it; refuse a folder the demo did not make.

    A rerun starts clean because resumed builds and evaluations made by older code would show old numbers.
    Only folders in a directory marked as a demo output (`.mmpo-demo`, or a previous run's results.json)
    are deleted, so `--out` pointing at anything else never loses files.
    """
    marker = out / ".mmpo-demo"
    if out.is_dir() and any(out.iterdir()) and not (marker.exists() or (out / "results.json").exists()):
        raise ValueError(f"{out} is not empty and holds no earlier demo output; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    for stale in RUN_FOLDERS:
        shutil.rmtree(out / stale, ignore_errors=True)
    return out


def run(out: Path, quick: bool = False, from_scratch: bool = False, seeds: int = 1, video: bool = True,
        methods: tuple | None = None, video_methods: tuple | None = None) -> dict:
    """Run the demo into `out`; returns {"before", "after", "chair", "video", "report"}.

    Args:
        out: output folder.
        quick: a reduced demo (tiny sizes; the end-to-end test).
        from_scratch: retrain the world models instead of using the shipped ones.
        seeds: seeds per method.
        video: run the video part.
        methods: image methods by name (default `DemoSettings.methods`; the quick demo runs all).
        video_methods: video methods by name (default `DemoSettings.video_methods`; the quick demo runs all).
    """
    from mmpo.metrics import read_metrics

    settings = quick_settings() if quick else DemoSettings()
    settings.seeds, settings.video = seeds, video
    settings.methods = tuple(methods or ([m.name for m in METHODS] if quick else settings.methods))
    from mmpo.demo.video_models import video_methods as all_video_methods

    video_names = [m.name for m in all_video_methods()]
    settings.video_methods = tuple(video_methods or (video_names if quick else settings.video_methods))
    unknown = set(settings.methods) - {m.name for m in METHODS}
    if unknown:
        raise ValueError(f"unknown demo method(s) {sorted(unknown)}; choose from {[m.name for m in METHODS]}")
    unknown = set(settings.video_methods) - set(video_names)
    if unknown:
        raise ValueError(f"unknown video method(s) {sorted(unknown)}; choose from {video_names}")
    out = prepare_out(Path(out))
    timer = Timer()
    with timer("world: images, videos, annotations, SFT data"):
        world_dir = out / "world"
        build_world(settings.world, world_dir, videos=settings.video)
    with timer("world models: tiny CLIP + SFT LLaVA"):
        models = world_models(out, settings, world_dir, from_scratch, quick)
    with timer("POPE questions from the held-out annotations"):
        questions = pope_files(world_dir, settings.world.seed)
    with timer("evaluate the SFT model (POPE, logits, prefix reuse)"):
        before = evaluate_pope(models["llava"], "", questions, world_dir, out / "eval" / "sft")
        print("   " + _summary(before))
    with timer("caption the held-out images (CHAIR against the drawn objects)"):
        chair = {"SFT": evaluate_chair(models["llava"], "", world_dir, out / "eval" / "sft_chair")}
        print("   " + _chair_summary(chair["SFT"]))
    with timer("build preference sets (world pairs, DA-DPO difficulty)"):
        sets = build_pair_sets(world_dir, models, settings, out / "pairs")
    after: dict[str, list[dict]] = {}
    curves: dict[str, list[dict]] = {}
    for method in [m for m in METHODS if m.name in settings.methods]:
        for seed in range(seeds):
            tag = f"{method.name.lower().replace('-', '')}_seed{seed}"
            with timer(f"train {method.name} (seed {seed})"):
                adapter = train_method(method, sets[method.data], world_dir, models["llava"], out / "runs" / tag,
                                       settings, seed)
            with timer(f"evaluate {method.name} (seed {seed}; POPE, captions)"):
                result = evaluate_pope(models["llava"], str(adapter), questions, world_dir, out / "eval" / tag)
                print("   " + _summary(result))
                chair.setdefault(method.name, []).append(
                    evaluate_chair(models["llava"], str(adapter), world_dir, out / "eval" / f"{tag}_chair"))
                print("   " + _chair_summary(chair[method.name][-1]))
            after.setdefault(method.name, []).append(result)
            if seed == 0:
                curves[method.name] = [r for r in read_metrics(out / "runs" / tag) if "loss" in r]
    video = video_stage(out, settings, world_dir, from_scratch, quick, timer, models["clip"]) if settings.video else None
    path = report.write_report(out, before, after, curves, timer.times, settings, {m.name: m.note for m in METHODS},
                               video, chair)
    (out / "results.json").write_text(json.dumps({"before": before, "after": after, "chair": chair, "video": video,
                                                  "times": timer.times}, indent=2))
    print(f"\nreport: {path} (the tables below, with the method notes; the plots are beside it)")
    print("\n".join(report.summary_lines(path.read_text())))
    return {"before": before, "after": after, "chair": chair, "video": video, "report": path}


def _chair_summary(metrics: dict) -> str:
    return (f"captions: CHAIR_s {100 * metrics['chair_s']:.1f}  CHAIR_i {100 * metrics['chair_i']:.1f}  "
            f"recall {100 * metrics['recall']:.1f}  ({metrics['n_captions']} images)")


def _summary(metrics: dict) -> str:
    return "  ".join(f"{s}: F1 {100 * m['f1']:.1f} yes {m['yes_ratio']:.2f}" for s, m in metrics.items())
