"""Run a model on POPE: answer every yes/no question on its image, save resumable predictions, score, report.

How each question is answered (generate / logits, prefix reuse): `mmpo/eval/answering.py`; the opening every run
shares (run.json, resuming, answering what predictions.jsonl lacks): `mmpo/eval/runs.py`.

Outputs under `out_dir`: predictions.jsonl, run.json, metrics.json, report.md and plots (mmpo/eval/report.py), plus
the reference layout answers_<split>.jsonl. With `on_bad_media: skip` the questions on unreadable images are left
out. Image names must lie inside `image_root` (checked when the question files are read). `make_pope_hook` is the
trainer's periodic evaluation (nothing written to disk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import pope, pope_metrics, report
from mmpo.eval.answering import MODES, Item
from mmpo.eval.predictions import BAD_MEDIA, answer, by_media, skipped_summary
from mmpo.eval.runs import answer_questions
from mmpo.media import load_image
from mmpo.schema import check_choice

KEY = ("split", "question_id")  # the fields of a predictions.jsonl row's key


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
        check_choice(self, mode=MODES, parser=tuple(pope.PARSERS), on_bad_media=BAD_MEDIA)



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


def pope_items(cfg: PopeEvalConfig, splits: dict) -> list[Item]:
    """Every question as an answering item, in file order."""
    suffix = pope_suffix(cfg.prompt_suffix)
    return [Item((split, str(q.question_id)), str(Path(cfg.image_root) / q.image), q.prompt(suffix))
            for split, (_, qs) in splits.items() for q in qs]


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

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json: one split's result,
    or `aggregate` of several.
    """
    out = Path(cfg.out_dir)
    splits = load_pope_questions(cfg)
    done, bad = answer_questions(cfg, {"mode": cfg.mode, "prompt_suffix": pope_suffix(cfg.prompt_suffix)}, KEY,
                                 pope_items(cfg, splits), "image", model, processor)
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
        answers, bad = answer(cfg, model, processor, by_media(pope_items(cfg, splits)), "image", load_image)
        scored = _pope_answered(splits, answers, bad)[0] if cfg.on_bad_media == "skip" else splits
        result = score_pope(cfg, scored, answers)
        return {f"pope/{s}/{k}": r[k] for s, r in report.pope_splits(result).items()
                for k in ("f1", "accuracy", "yes_ratio")}

    return hook
