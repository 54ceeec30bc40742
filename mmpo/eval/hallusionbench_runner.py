"""Run a model on HallusionBench: ask each image question on its figure, score aAcc / qAcc / fAcc, report.

Protocol of lmms-eval `tasks/hallusion_bench/hallusion_bench_image.yaml`: the questions that have an image (its
`image` split; VLMEvalKit's TSV holds the same 951), asked as written (`prompt_suffix` "" by default), greedy,
`max_new_tokens` 128; scored by `mmpo/eval/hallusionbench.py` (the keyword rules: `parser` lmms or vlmevalkit).
Logits mode answers "Yes" when logit(yes) > logit(no) at the first answer token, else "No" (both rules read those
as yes / no). Questions without an image (`visual_input` "0") are not asked, as in both harnesses; their count is
in metrics.json (`n_not_asked_no_image`).
Resumable as the other runners are (`mmpo/eval/predictions.py`); outputs under `out_dir`: predictions.jsonl, run.json,
answers.json (the reference result layout: each question's item with `model_prediction`, which
`mmpo eval hallusionbench --answers` reads), metrics.json, report.md and hallusionbench.png. With
`on_bad_media: skip` the questions on unreadable images are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import hallusionbench, report
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
from mmpo.media import load_image
from mmpo.records import resolve_media

KEY = ("category", "subcategory", "set_id", "figure_id", "question_id")  # HBQuestion.key's fields
LOGITS_ANSWERS = ("Yes", "No")  # logits mode: answers both keyword rules read as yes / no


def logits_answer(margin: float) -> str:
    """The answer a margin stands for: "Yes" if logit(yes) > logit(no), else "No"."""
    return LOGITS_ANSWERS[0] if margin > 0 else LOGITS_ANSWERS[1]


@dataclass
class HallusionBenchEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model (+ adapter) to evaluate
    questions: str = ""  # HallusionBench.json (the release's question file)
    image_root: str = ""  # folder holding hallusion_bench/ (the unpacked hallusion_bench.zip): filename's root
    out_dir: str = "runs/eval/hallusionbench"  # predictions.jsonl, answers.json, metrics.json, report.md, plot
    mode: str = "generate"  # generate (lmms-eval's protocol) | logits ("Yes"/"No" from token scores)
    parser: str = "lmms"  # lmms (lmms-eval's keyword rule) | vlmevalkit (YOrN_Extraction); see mmpo/eval/hallusionbench.py
    prompt_suffix: str = ""  # text after each question ("" = lmms-eval's default: the question as written)
    batch_size: int = 8  # questions per forward / generate call
    max_new_tokens: int = 128  # generate mode: lmms-eval's cap (the rules read the whole answer)
    prefix_reuse: bool = True  # logits mode: encode each figure + template prefix once (packed rows)
    limit: int = 0  # first N image questions (0 = all)
    on_bad_media: str = "error"  # error | skip: leave out questions on unreadable images (named in metrics.json)

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("parser", self.parser, hallusionbench.PARSERS)
        check_choice("on_bad_media", self.on_bad_media, BAD_MEDIA)


def load_questions(cfg: HallusionBenchEvalConfig) -> tuple[dict[tuple, tuple], int]:
    """({question key: (question, image path)} for the image questions, `cfg.limit` applied; how many have no
    image). Image names may not leave image_root."""
    questions = hallusionbench.read_questions(cfg.questions)
    with_image = [q for q in questions if q.filename is not None]
    with_image = with_image[:cfg.limit] if cfg.limit else with_image
    out = {}
    for q in with_image:
        try:
            out[q.key] = (q, str(resolve_media(cfg.image_root, q.filename)))
        except ValueError as e:
            raise ValueError(f"{cfg.questions}: question {q.key_text}: field 'filename': {e}") from None
    return out, len(questions) - sum(q.filename is not None for q in questions)


def run_hallusionbench(cfg: HallusionBenchEvalConfig, model=None, processor=None) -> dict:
    """Answer every image question and score aAcc / qAcc / fAcc by the keyword rules; resumable.

    Args:
        cfg: the evaluation config.
        model: optional already-loaded model (else `load_model(cfg.model)`).
        processor: its processor.

    Returns:
        the metrics written to metrics.json (`hallusionbench.score`'s result, plus mode, prompt suffix, what was
        not asked and skipped media).
    """
    out = Path(cfg.out_dir)
    questions, no_image = load_questions(cfg)
    if not questions:
        raise ValueError(f"{cfg.questions}: no question has an image (filename); nothing to ask")
    check_run(out, {"mode": cfg.mode, "prompt_suffix": cfg.prompt_suffix, **model_settings(cfg.model),
                    "max_new_tokens": cfg.max_new_tokens if cfg.mode == "generate" else None})
    pred_path = out / "predictions.jsonl"
    done = stored_answers(pred_path, KEY)
    items = by_media([Item(k, path, q.question + cfg.prompt_suffix) for k, (q, path) in questions.items()
                      if k not in done])
    answers, bad = answer_missing(cfg, pred_path, KEY, items, "image", load_image, model, processor, logits_answer)
    done.update(answers)
    answered = [q for k, (q, _) in questions.items() if k in done]  # skip mode: a rerun retries the rest
    if not answered:
        raise ValueError(f"{cfg.questions}: no question has a readable image (e.g. {sorted(bad)[:2]})")
    predictions = {q.key: done[q.key][0] for q in answered}
    hallusionbench.write_predictions(out / "answers.json", cfg.questions, predictions)
    metrics = {**hallusionbench.score(answered, predictions, cfg.parser), "mode": cfg.mode,
               "prompt_suffix": cfg.prompt_suffix, "n_not_asked_no_image": no_image,
               "question_file": Path(cfg.questions).name}
    if cfg.on_bad_media == "skip":
        metrics["skipped_media"] = skipped_summary(bad, len(questions) - len(answered), "questions")
    report.write_hallusionbench_report(out, metrics)
    return metrics
