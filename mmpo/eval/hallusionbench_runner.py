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
from mmpo.eval.predictions import BAD_MEDIA
from mmpo.eval.runs import answer_questions, answered, finish, media_path, yes_no_answer
from mmpo.schema import check_choice

KEY = ("category", "subcategory", "set_id", "figure_id", "question_id")  # HBQuestion.key's fields


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
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice(self, mode=MODES, parser=hallusionbench.PARSERS, on_bad_media=BAD_MEDIA)


def load_questions(cfg: HallusionBenchEvalConfig) -> tuple[dict[tuple, tuple], int]:
    """({question key: (question, image path)} for the image questions, `cfg.limit` applied; how many have no
    image). Image names may not leave image_root."""
    questions = hallusionbench.read_questions(cfg.questions)
    with_image = [q for q in questions if q.filename is not None]
    with_image = with_image[:cfg.limit] if cfg.limit else with_image
    out = {q.key: (q, media_path(cfg.image_root, q.filename, f"{cfg.questions}: question {q.key_text}: field 'filename'"))
           for q in with_image}
    return out, len(questions) - sum(q.filename is not None for q in questions)


def run_hallusionbench(cfg: HallusionBenchEvalConfig, model=None, processor=None) -> dict:
    """Answer every image question and score aAcc / qAcc / fAcc by the keyword rules; resumable.

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json:
    `hallusionbench.score`'s result, plus mode, prompt suffix, what was not asked and skipped media.
    """
    questions, no_image = load_questions(cfg)
    if not questions:
        raise ValueError(f"{cfg.questions}: no question has an image (filename); nothing to ask")
    items = [Item(k, path, q.question + cfg.prompt_suffix) for k, (q, path) in questions.items()]
    done, bad = answer_questions(cfg, {"mode": cfg.mode, "prompt_suffix": cfg.prompt_suffix}, KEY, items, "image",
                                 model, processor, yes_no_answer)
    asked = answered(questions, done, bad, cfg.questions, "no question has a readable image")
    predictions = {q.key: done[q.key][0] for q in asked}
    hallusionbench.write_predictions(Path(cfg.out_dir) / "answers.json", cfg.questions, predictions)
    metrics = {**hallusionbench.score(asked, predictions, cfg.parser), "mode": cfg.mode,
               "prompt_suffix": cfg.prompt_suffix, "n_not_asked_no_image": no_image,
               "question_file": Path(cfg.questions).name}
    return finish(cfg, metrics, bad, len(questions) - len(asked), "questions", report.write_hallusionbench_report)
