"""What every model runner's `run_<name>(cfg, model=None, processor=None) -> metrics` shares around its benchmark's
own parts. `cfg` is the benchmark's typed config; `model` an already-loaded model (with its `processor`), else
`load_model(cfg.model)` loads one when something is left to answer; the metrics returned are metrics.json's.

A run reads its benchmark's questions (the runner's own code), then `answer_questions`: run.json is checked
against the run's settings (`predictions.check_run`; the benchmark's own, the model's identity, the frames of a
video model, the generate-mode length cap), the answers predictions.jsonl already holds are read back, and only
the questions they lack are answered (`predictions.answer_missing`: appended per batch, shared over N processes).
The runner then scores what was answered (`answered` refuses a run where nothing could be read) and `finish` adds
the unreadable files (`on_bad_media: skip`) to the metrics and writes the report.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from mmpo.eval.answering import Item
from mmpo.eval.predictions import answer_missing, by_media, check_run, model_settings, skipped_summary, stored_answers
from mmpo.media import load_image, load_video
from mmpo.records import resolve_media

PREDICTIONS = "predictions.jsonl"


def yes_no_answer(margin: float) -> str:
    """The answer a margin stands for: "Yes" if logit(yes) > logit(no), else "No" (the logits-mode answer of the
    benchmarks whose reference reads "Yes" / "No", AMBER exactly)."""
    return "Yes" if margin > 0 else "No"


def media_path(root, rel: str, where: str) -> str:
    """`rel` under the benchmark's media folder `root`; ValueError naming `where` (file and question) when the
    name leaves that folder."""
    try:
        return str(resolve_media(root, rel))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def media_loader(cfg, media_type: str) -> Callable:
    """path -> media: images as they are, videos at the model's frame count (`cfg.model.num_frames`)."""
    return load_image if media_type == "image" else functools.partial(load_video, num_frames=cfg.model.num_frames)


def run_settings(cfg, media_type: str, own: dict) -> dict:
    """run.json's settings: the benchmark's `own`, the model's identity, a video model's frames, and the length cap
    (generate mode only: logits answers do not depend on it)."""
    frames = {"num_frames": cfg.model.num_frames} if media_type == "video" else {}
    return {**own, **model_settings(cfg.model), **frames,
            "max_new_tokens": cfg.max_new_tokens if cfg.mode == "generate" else None}


def answer_questions(cfg, own_settings: dict, key_fields: tuple[str, ...], items: list[Item], media_type: str,
                     model=None, processor=None, logits_answer=None, group_by_media: bool = True
                     ) -> tuple[dict, dict]:
    """The opening every run shares: check run.json, read the stored answers, answer the questions they lack.

    Args:
        cfg: a runner config (model, out_dir, mode, batch_size, max_new_tokens, prefix_reuse, on_bad_media).
        own_settings: the benchmark's run.json entries (prompt, suffix, mode ...): other values refuse a resume.
        key_fields: the names of an item key's parts (the fields of a predictions.jsonl row's key).
        items: every question of the run; those predictions.jsonl already answers are left out.
        media_type: "image" or "video".
        model: an already-loaded model, else loaded when something is left to answer.
        processor: its processor.
        logits_answer: margin -> the answer the benchmark's scorer reads (default: "yes" / "no").
        group_by_media: answer a media file's questions together (`by_media`), loading it once.

    Returns:
        ({key: (answer, margin | None)} of every answered question, stored and new; {unreadable file: error}).
    """
    out = Path(cfg.out_dir)
    check_run(out, run_settings(cfg, media_type, own_settings))
    pred_path = out / PREDICTIONS
    done = stored_answers(pred_path, key_fields)
    todo = [it for it in items if it.key not in done]
    answers, bad = answer_missing(cfg, pred_path, key_fields, by_media(todo) if group_by_media else todo, media_type,
                                  media_loader(cfg, media_type), model, processor, logits_answer)
    done.update(answers)
    return done, bad


def answered(questions: dict, done: dict, bad: dict, source, nothing: str) -> list:
    """The questions of `questions` ({key: (question, media path)}) that have an answer in `done`.

    In skip mode the questions on unreadable files have none (a rerun retries them). ValueError naming `source`
    when no question has one: `nothing` says what is missing (e.g. "no question has a readable image").
    """
    kept = [q for key, (q, _) in questions.items() if key in done]
    if not kept:
        raise ValueError(f"{source}: {nothing} (e.g. {sorted(bad)[:2]})")
    return kept


def finish(cfg, metrics: dict, bad: dict, n_left_out: int, unit: str, write_report: Callable) -> dict:
    """Skip mode: the left-out `unit`s and the unreadable files under "skipped_media"; then the report is written.

    Returns:
        `metrics`.
    """
    if cfg.on_bad_media == "skip":
        metrics["skipped_media"] = skipped_summary(bad, n_left_out, unit)
    write_report(Path(cfg.out_dir), metrics)
    return metrics
