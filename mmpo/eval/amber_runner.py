"""Run a model on AMBER's discriminative questions: answer each yes/no query on its image, score, report.

The repository (junyangwang0410/AMBER @534babf) ships no inference script: its README asks for responses
`[{"id", "response"}]` with each discriminative response "Yes" or "No", and `inference.py` counts only those
two strings exactly (`mmpo/eval/amber.py`). So:
- generate mode sends the query as written (plus `prompt_suffix`, "" by default; VLMEvalKit's AMBER adds
  "\\nPlease answer yes or no.") and keeps the raw answer: "yes" or "Yes." counts as neither, as in the reference;
- logits mode answers "Yes" when logit(yes) > logit(no) at the first answer token, else "No" (`runs.yes_no_answer`).
Resumable as the other runners are (`mmpo/eval/predictions.py`); outputs under `out_dir`: predictions.jsonl, run.json,
answers.json (the reference layout: `mmpo eval amber --answers` and `inference.py --inference_data` read it),
metrics.json, report.md, amber_dimensions.png and amber_answers.png. With `on_bad_media: skip` the questions on
unreadable images are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpo.config import ModelConfig
from mmpo.eval import amber, report
from mmpo.eval.answering import MODES, Item
from mmpo.eval.predictions import BAD_MEDIA
from mmpo.eval.runs import answer_questions, answered, finish, media_path, yes_no_answer
from mmpo.schema import check_choice

KEY = ("id",)  # the field of a predictions.jsonl row's key; logits mode answers "Yes" / "No", the only two
# responses inference.py counts (`runs.yes_no_answer`)


@dataclass
class AmberEvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model (+ adapter) to evaluate
    questions: str = ""  # data/query/query_discriminative*.json (query_all.json works: generative ids are skipped)
    annotations: str = ""  # data/annotations.json (type and truth of every id)
    image_root: str = ""  # folder holding the AMBER_k.jpg images
    out_dir: str = "runs/eval/amber"  # predictions.jsonl, answers.json, metrics.json, report.md, plots
    mode: str = "generate"  # generate (raw answers, exact "Yes"/"No" count) | logits ("Yes"/"No" from token scores)
    prompt_suffix: str = ""  # text after each query ("" = the query as written)
    batch_size: int = 8  # questions per forward / generate call
    max_new_tokens: int = 16  # generate mode: answer length cap (1 would cut "Yes." to "Yes", which counts)
    prefix_reuse: bool = True  # logits mode: encode each image + template prefix once (packed rows)
    limit: int = 0  # first N questions (0 = all)
    on_bad_media: str = "error"  # error | skip: leave out questions on unreadable images (named in metrics.json)
    report_to: list[str] = field(default_factory=list)  # trackers that get the metrics: tensorboard | wandb | mlflow ...

    def __post_init__(self):
        check_choice(self, mode=MODES, on_bad_media=BAD_MEDIA)


def load_questions(cfg: AmberEvalConfig) -> dict[tuple, tuple[amber.AmberQuestion, str]]:
    """{(question id,): (question, image path)} with `cfg.limit` applied; image names may not leave image_root."""
    questions = amber.read_questions(cfg.questions, cfg.annotations)
    questions = questions[:cfg.limit] if cfg.limit else questions
    return {(str(q.id),): (q, media_path(cfg.image_root, q.image, f"{cfg.questions}: id {q.id}: field 'image'"))
            for q in questions}


def run_amber(cfg: AmberEvalConfig, model=None, processor=None) -> dict:
    """Answer every discriminative question and score it as `inference.py` does; resumable (module docstring).

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json: `amber.score`'s
    result, plus mode, prompt suffix and skipped media.
    """
    questions = load_questions(cfg)
    items = [Item(k, path, q.query + cfg.prompt_suffix) for k, (q, path) in questions.items()]
    done, bad = answer_questions(cfg, {"mode": cfg.mode, "prompt_suffix": cfg.prompt_suffix}, KEY, items, "image",
                                 model, processor, yes_no_answer)
    asked = answered(questions, done, bad, cfg.questions, "no question has a readable image")
    responses = [amber.AmberAnswer(q.id, *done[(str(q.id),)]) for q in asked]
    amber.write_answers(Path(cfg.out_dir) / "answers.json", responses)
    metrics = {**amber.score(asked, {a.id: a for a in responses}), "mode": cfg.mode,
               "prompt_suffix": cfg.prompt_suffix, "query_file": Path(cfg.questions).name}
    return finish(cfg, metrics, bad, len(questions) - len(asked), "questions", report.write_amber_report)
