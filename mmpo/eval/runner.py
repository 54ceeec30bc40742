"""Run a model on POPE / VideoHallucer: answer every question, save resumable predictions, score, report.

How each question is answered (generate / logits, prefix reuse): `mmpo/eval/answering.py`; predictions.jsonl,
run.json and `on_bad_media`: `mmpo/eval/predictions.py`. CHAIR, AMBER and EventHallusion have their own runner
modules (`eval/*_runner.py`).

Outputs under `out_dir`: predictions.jsonl, run.json, metrics.json, report.md and plots (mmpo/eval/report.py), plus
the reference layouts (POPE answers_<split>.jsonl, VideoHallucer results/<category>.json). With
`on_bad_media: skip`, POPE leaves out the questions and VideoHallucer the pairs on unreadable files. POPE image
names must lie inside `image_root` (checked when the question files are read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import pope, pope_metrics, report, videohallucer, videohallucer_metrics
from mmpo.eval.answering import MODES, Item
from mmpo.eval.predictions import (
    BAD_MEDIA,
    answer,
    answer_missing,
    by_media,
    check_choice,
    check_run,
    model_settings,
    skipped_summary,
    stored_answers,
)
from mmpo.media import load_image, load_video

POPE_KEY = ("split", "question_id")  # the fields of a predictions.jsonl row's key
VH_KEY = ("category", "pair", "side")


@dataclass
class PopeEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model (+ adapter) to evaluate
    questions: list[str] = field(default_factory=list)  # question files (one per split) or one folder of them
    image_root: str = ""  # folder holding the question files' images (COCO val2014)
    out_dir: str = "runs/eval/pope"  # predictions.jsonl, metrics.json, report.md, plots
    mode: str = "generate"  # generate (published protocol) | logits (yes/no token scores, fast)
    parser: str = "official"  # official | lmms | vlmevalkit | vlmevalkit_pre2025 (eval.pope.PARSERS)
    prompt_suffix: str = ""  # "" = official POPE (bare question) | llava | lmms_2024 | any literal text
    batch_size: int = 8  # questions per forward / generate call
    max_new_tokens: int = 16  # generate mode: answer length cap
    prefix_reuse: bool = True  # logits mode: encode each image + template prefix once (packed rows)
    limit: int = 0  # first N questions per split (0 = all); the training-time hook uses this
    on_bad_media: str = "error"  # error | skip: leave out questions on unreadable images (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("parser", self.parser, tuple(pope.PARSERS))
        check_choice("on_bad_media", self.on_bad_media, BAD_MEDIA)


@dataclass
class VideoHallucerEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model; frames per video = model.num_frames
    data_dir: str = ""  # videohallucer_datasets/ (reference layout: <category>/<category>.json + videos/)
    files: list[str] = field(default_factory=list)  # or: category files (used instead of data_dir)
    video_root: str = ""  # "" = the `videos/` folder next to each category file; else one flat folder
    categories: list[str] = field(default_factory=lambda: list(videohallucer.CATEGORIES))  # with data_dir
    out_dir: str = "runs/eval/videohallucer"  # predictions.jsonl, results/, metrics.json, report.md
    mode: str = "generate"  # generate | logits
    batch_size: int = 4  # questions per forward / generate call
    max_new_tokens: int = 16  # generate mode: answer length cap
    prefix_reuse: bool = True  # logits mode: encode each video + template prefix once
    limit: int = 0  # first N pairs per category (0 = all)
    on_bad_media: str = "error"  # error | skip: leave out pairs with an unreadable video (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("on_bad_media", self.on_bad_media, BAD_MEDIA)


# ---------------------------------------------------------------- POPE


def pope_suffix(value: str) -> str:
    """A PROMPT_SUFFIXES name ("llava", "lmms_2024", "official") or the literal suffix text."""
    return pope.PROMPT_SUFFIXES.get(value, value)


def pope_question_files(paths: list[str]) -> list[Path]:
    """Question files from the config: listed files, or the *.json / *.jsonl files of one folder."""
    files = []
    for p in map(Path, paths):
        files += sorted(list(p.glob("*.json")) + list(p.glob("*.jsonl"))) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"no POPE question files in {paths}")
    return files


def load_pope_questions(cfg: PopeEvalConfig) -> dict[str, tuple[Path, list[pope.PopeQuestion]]]:
    """{split: (file, questions)} with `cfg.limit` applied per split."""
    out = {}
    for f in pope_question_files(cfg.questions):
        qs = pope.read_questions(f, image_root=cfg.image_root)  # image names may not leave image_root
        for split in dict.fromkeys(q.split for q in qs):
            sub = [q for q in qs if q.split == split]
            name = split or f.stem
            if name in out:
                raise ValueError(f"{f}: split {name!r} already read from {out[name][0]}")
            out[name] = (f, sub[:cfg.limit] if cfg.limit else sub)
    return out


def _pope_items(cfg: PopeEvalConfig, splits: dict, done: dict) -> list[Item]:
    """Unanswered questions; sorted by image so a batch shares images (first-seen order kept)."""
    suffix = pope_suffix(cfg.prompt_suffix)
    return by_media([Item((split, str(q.question_id)), str(Path(cfg.image_root) / q.image), q.prompt(suffix))
                     for split, (_, qs) in splits.items() for q in qs if (split, str(q.question_id)) not in done])


def score_pope(cfg: PopeEvalConfig, splits: dict, answers: dict) -> dict:
    """Per-split `score_predictions` (+ `aggregate` when several splits) from {(split, qid): (answer, margin)}."""
    per_split = {}
    for split, (f, qs) in splits.items():
        preds = [_pope_prediction(q, split, answers) for q in qs]
        per_split[split] = pope_metrics.score_predictions(qs, preds, cfg.parser, pope_suffix(cfg.prompt_suffix), f)
    result = per_split[next(iter(per_split))] if len(per_split) == 1 else pope_metrics.aggregate(per_split)
    return {**result, "mode": cfg.mode}


def _pope_answered(splits: dict, answers: dict, bad: dict) -> tuple[dict, dict]:
    """Skip mode: each split's answered questions, and what was left out.

    Returns:
        ({split: (file, answered questions)}, {"n_questions", "n_files", "files": {path: error}}).

    Raises:
        ValueError: a split has no answered question (nothing to score).
    """
    kept, left_out = {}, 0
    for split, (f, qs) in splits.items():
        answered = [q for q in qs if (split, str(q.question_id)) in answers]
        if not answered:
            raise ValueError(f"{f}: no question of split {split!r} has a readable image (e.g. {sorted(bad)[:2]})")
        kept[split] = (f, answered)
        left_out += len(qs) - len(answered)
    return kept, skipped_summary(bad, left_out, "questions")


def _pope_prediction(q: pope.PopeQuestion, split: str, answers: dict) -> pope.PopePrediction:
    text, margin = answers[(split, str(q.question_id))]
    return pope.PopePrediction(q.question_id, text, split, margin)


def run_pope(cfg: PopeEvalConfig, model=None, processor=None) -> dict:
    """Evaluate a model on POPE; resumable (see module docstring).

    Args:
        cfg: the evaluation config.
        model: optional already-loaded model (else `load_model(cfg.model)`).
        processor: its processor.

    Returns:
        the metrics written to metrics.json (one split's result, or `aggregate` of several).
    """
    out = Path(cfg.out_dir)
    splits = load_pope_questions(cfg)
    check_run(out, {"mode": cfg.mode, "prompt_suffix": pope_suffix(cfg.prompt_suffix), **model_settings(cfg.model),
                    "max_new_tokens": cfg.max_new_tokens if cfg.mode == "generate" else None})
    pred_path = out / "predictions.jsonl"
    done = stored_answers(pred_path, POPE_KEY)
    answers, bad = answer_missing(cfg, pred_path, POPE_KEY, _pope_items(cfg, splits, done), "image", load_image,
                                  model, processor)
    done.update(answers)
    skipped = None
    if cfg.on_bad_media == "skip":  # score what was answered (a rerun retries the rest)
        splits, skipped = _pope_answered(splits, done, bad)
    for split, (_, qs) in splits.items():  # official answer files, readable by `mmpo eval pope --answers`
        pope.write_answers(out / f"answers_{split}.jsonl",
                           [_pope_prediction(q, split, done) for q in qs])
    metrics = score_pope(cfg, splits, done)
    if skipped is not None:
        metrics["skipped_media"] = skipped
    report.write_pope_report(out, metrics)
    return metrics


def make_pope_hook(cfg: PopeEvalConfig):
    """A trainer eval hook: `hook(model, processor, step) -> {"pope/<split>/f1": ..., ...}` on `cfg.limit` questions.

    Nothing is written to disk; questions are read once. The model may be a PeftModel.
    """
    splits = load_pope_questions(cfg)

    def hook(model, processor, step: int) -> dict:
        answers, bad = answer(cfg, model, processor, _pope_items(cfg, splits, {}), "image", load_image)
        scored = _pope_answered(splits, answers, bad)[0] if cfg.on_bad_media == "skip" else splits
        result = score_pope(cfg, scored, answers)
        return {f"pope/{s}/{k}": r[k] for s, r in report.pope_splits(result).items()
                for k in ("f1", "accuracy", "yes_ratio")}

    return hook


# ---------------------------------------------------------------- VideoHallucer


def vh_category_files(cfg: VideoHallucerEvalConfig) -> list[Path]:
    """Category files: `files`, else `<data_dir>/<category>/<category>.json` for each configured category."""
    if cfg.files:
        return [Path(f) for f in cfg.files]
    if not cfg.data_dir:
        raise ValueError("set data_dir (reference layout) or files (category JSON files)")
    files = [Path(cfg.data_dir) / c / f"{c}.json" for c in cfg.categories]
    missing = [f for f in files if not f.is_file()]
    if missing:
        found = sorted(p.parent.name for p in Path(cfg.data_dir).glob("*/*.json") if p.stem == p.parent.name)
        raise FileNotFoundError(f"{missing[0]}: no such file; `categories` lists the categories to run "
                                f"({len(missing)} of {len(files)} missing; {cfg.data_dir} holds {found or 'none'}: "
                                f"e.g. categories=[{','.join(found)}])")
    return files


def _vh_video(cfg: VideoHallucerEvalConfig, data_file: Path, video: str) -> str:
    return str(Path(cfg.video_root) / video if cfg.video_root else data_file.parent / "videos" / video)


def _vh_category(cfg: VideoHallucerEvalConfig, cat: str, f: Path, pairs: list, done: dict, bad: dict,
                 out: Path) -> dict:
    """Score one category from {(category, pair, side): (answer, margin)} and write its reference results file.

    Skip mode: only pairs answered on both sides count (a pair is the unit of every score); the left-out pairs
    and this category's unreadable files go under "skipped_media".
    """
    keep = [i for i in range(len(pairs)) if all((cat, str(i), side) in done for side in ("basic", "hallucination"))]
    if not keep:
        raise ValueError(f"{f}: no pair has two readable videos (e.g. {sorted(bad)[:2]})")
    kept = [pairs[i] for i in keep]
    preds = [videohallucer.VHPrediction(done[(cat, str(i), "basic")][0], done[(cat, str(i), "hallucination")][0])
             for i in keep]
    videohallucer.write_results(out / "results" / f"{cat}.json", kept, preds)  # the reference layout
    res = videohallucer_metrics.score_category(kept, preds)
    if all((p.basic.answer, p.hallucination.answer) == ("yes", "no") for p in pairs):
        res["bias"] = videohallucer_metrics.bias_scores(kept, preds)
    res = {**res, "mode": cfg.mode, "data_file": f.name}
    if cfg.on_bad_media == "skip":
        videos = {_vh_video(cfg, f, getattr(p, side).video) for p in pairs for side in ("basic", "hallucination")}
        files = {v: e for v, e in sorted(bad.items()) if v in videos}
        res["skipped_media"] = {"n_pairs": len(pairs) - len(kept), "n_files": len(files), "files": files}
    return res


def run_videohallucer(cfg: VideoHallucerEvalConfig, model=None, processor=None) -> dict:
    """Evaluate a video model on VideoHallucer (each question asked on its own video with PROMPT_SUFFIX).

    Args:
        cfg: the evaluation config.
        model: optional already-loaded model (else `load_model(cfg.model)`).
        processor: its processor.

    Returns:
        {category: score_category(+bias)} plus "overall" (mean over published categories present).
    """
    out = Path(cfg.out_dir)
    check_run(out, {"mode": cfg.mode, **model_settings(cfg.model), "num_frames": cfg.model.num_frames,
                    "max_new_tokens": cfg.max_new_tokens if cfg.mode == "generate" else None})
    data = {}
    for f in vh_category_files(cfg):
        pairs = videohallucer.read_pairs(f)
        data[pairs[0].category if pairs else f.stem] = (f, pairs[:cfg.limit] if cfg.limit else pairs)
    pred_path = out / "predictions.jsonl"
    done = stored_answers(pred_path, VH_KEY)
    items = [Item((cat, str(i), side), _vh_video(cfg, f, getattr(p, side).video), getattr(p, side).prompt())
             for cat, (f, pairs) in data.items() for i, p in enumerate(pairs)
             for side in ("basic", "hallucination") if (cat, str(i), side) not in done]

    def load_fn(path):
        return load_video(path, num_frames=cfg.model.num_frames)

    answers, bad = answer_missing(cfg, pred_path, VH_KEY, items, "video", load_fn, model, processor)
    done.update(answers)
    results = {cat: _vh_category(cfg, cat, f, pairs, done, bad, out) for cat, (f, pairs) in data.items()}
    if any(c in results for c in videohallucer.CATEGORIES):
        results["overall"] = videohallucer_metrics.overall(results)
    report.write_videohallucer_report(out, results)
    return results

