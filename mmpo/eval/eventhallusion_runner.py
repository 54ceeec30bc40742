"""Run a video model on EventHallusion's yes/no questions: answer each on its video, score as `eval.py`, report.

Protocol of Stevetich/EventHallusion @7396e04 (`run_inference.py`): each question is asked on its video
(`<video_root>/<split>/<id>.mp4`) as `question + "\\nPlease answer yes or no:"`, greedy; `eval.py` reads the
answer's lower-cased prefix (`mmpo/eval/eventhallusion.py`). The reference generates up to 1024 tokens; only the
answer's first word is read, so a short cap gives the same scores. Logits mode answers "Yes" when
logit(yes) > logit(no) at the first answer token, else "No" (`LOGITS_ANSWERS`). Frames per video follow the
model (`model.num_frames`).
Resumable as the other runners are (`mmpo/eval/predictions.py`); outputs under `out_dir`: predictions.jsonl, run.json,
answers.json (the reference predictions layout: `mmpo eval eventhallusion --answers` reads it), metrics.json,
report.md and eventhallusion.png. With `on_bad_media: skip` the questions on unreadable videos are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import eventhallusion, report
from mmpo.eval.answering import MODES, Item
from mmpo.eval.predictions import (
    BAD_MEDIA,
    answer_missing,
    by_media,
    check_choice,
    check_run,
    model_settings,
    skipped_summary,
    stored_answers,
)
from mmpo.media import load_video
from mmpo.records import resolve_media

KEY = ("split", "video", "question")  # the fields of a predictions.jsonl row's key (EHQuestion.key)
LOGITS_ANSWERS = ("Yes", "No")  # logits mode: answers whose prefix eval.py reads as "Yes." / "No."


def logits_answer(margin: float) -> str:
    """The answer a margin stands for: "Yes" if logit(yes) > logit(no), else "No"."""
    return LOGITS_ANSWERS[0] if margin > 0 else LOGITS_ANSWERS[1]


@dataclass
class EventHallusionEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model; frames per video = model.num_frames
    questions: list[str] = field(default_factory=list)  # <split>_questions.json files, or the questions/ folder
    video_root: str = ""  # folder of <split>/<id>.mp4 (run_inference.py layout)
    out_dir: str = "runs/eval/eventhallusion"  # predictions.jsonl, answers.json, metrics.json, report.md, plot
    mode: str = "generate"  # generate (published protocol) | logits (yes/no token scores)
    batch_size: int = 4  # questions per forward / generate call
    max_new_tokens: int = 16  # generate mode: answer length cap (reference 1024; only the first word is read)
    prefix_reuse: bool = True  # logits mode: encode each video + template prefix once (packed rows)
    limit: int = 0  # first N questions per split (0 = all)
    on_bad_media: str = "error"  # error | skip: leave out questions on unreadable videos (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("on_bad_media", self.on_bad_media, BAD_MEDIA)


def question_files(paths: list[str]) -> dict[str, Path]:
    """{split: file} from the listed files, or the *_questions.json files of a folder."""
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*_questions.json")) if p.is_dir() else [p]
    out: dict[str, Path] = {}
    for f in files:
        split = eventhallusion.split_from_name(f)
        if not split:
            raise ValueError(f"{f}: cannot tell the split (name the file <split>_questions.json, split in "
                             f"{eventhallusion.SPLITS})")
        if split in out:
            raise ValueError(f"{f}: split {split!r} already read from {out[split]}")
        out[split] = f
    if not out:
        raise ValueError(f"no EventHallusion question files in {paths}")
    return out


def load_questions(cfg: EventHallusionEvalConfig, files: dict[str, Path]) -> dict[tuple, tuple]:
    """{question key: (EHQuestion, video path)}, `cfg.limit` applied per split; videos may not leave video_root."""
    out = {}
    for split, f in files.items():
        qs = eventhallusion.read_questions(f, split)
        for q in qs[:cfg.limit] if cfg.limit else qs:
            try:
                out[q.key] = (q, str(resolve_media(cfg.video_root, f"{q.split}/{q.video_id}.mp4")))
            except ValueError as e:
                raise ValueError(f"{f}: video {q.video_id!r}: {e}") from None
    return out


def run_eventhallusion(cfg: EventHallusionEvalConfig, model=None, processor=None) -> dict:
    """Answer every question on its video and score QA accuracy per split and overall; resumable.

    Args:
        cfg: the evaluation config.
        model: optional already-loaded model (else `load_model(cfg.model)`).
        processor: its processor.

    Returns:
        the metrics written to metrics.json (`eventhallusion.score`'s result, plus mode and skipped media).
    """
    out = Path(cfg.out_dir)
    files = question_files(cfg.questions)
    questions = load_questions(cfg, files)
    check_run(out, {"mode": cfg.mode, **model_settings(cfg.model), "num_frames": cfg.model.num_frames,
                    "max_new_tokens": cfg.max_new_tokens if cfg.mode == "generate" else None})
    pred_path = out / "predictions.jsonl"
    done = stored_answers(pred_path, KEY)
    items = by_media([Item(k, path, q.prompt()) for k, (q, path) in questions.items() if k not in done])

    def load_fn(path):
        return load_video(path, num_frames=cfg.model.num_frames)

    answers, bad = answer_missing(cfg, pred_path, KEY, items, "video", load_fn, model, processor, logits_answer)
    done.update(answers)
    answered = [q for k, (q, _) in questions.items() if k in done]  # skip mode: a rerun retries the rest
    if not answered:
        raise ValueError(f"{cfg.questions}: no question has a readable video (e.g. {sorted(bad)[:2]})")
    predictions = {q.key: done[q.key][0] for q in answered}
    eventhallusion.write_predictions(out / "answers.json", files, predictions)
    metrics = {**eventhallusion.score(answered, predictions), "mode": cfg.mode,
               "question_files": [f.name for f in files.values()]}
    if cfg.on_bad_media == "skip":
        metrics["skipped_media"] = skipped_summary(bad, len(questions) - len(answered), "questions")
    report.write_eventhallusion_report(out, metrics)
    return metrics
