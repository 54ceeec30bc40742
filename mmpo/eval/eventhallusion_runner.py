"""Run a video model on EventHallusion's yes/no questions: answer each on its video, score as `eval.py`, report.

Protocol of Stevetich/EventHallusion @7396e04 (`run_inference.py`): each question is asked on its video
(`<video_root>/<split>/<id>.mp4`) as `question + "\\nPlease answer yes or no:"`, greedy; `eval.py` reads the
answer's lower-cased prefix (`mmpo/eval/eventhallusion.py`). The reference generates up to 1024 tokens; only the
answer's first word is read, so a short cap gives the same scores. Logits mode answers "Yes" when
logit(yes) > logit(no) at the first answer token, else "No" (`runs.yes_no_answer`). Frames per video follow the
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
from mmpo.eval.predictions import BAD_MEDIA
from mmpo.eval.runs import answer_questions, answered, finish, media_path, yes_no_answer
from mmpo.schema import check_choice

KEY = ("split", "video", "question")  # the fields of a predictions.jsonl row's key (EHQuestion.key)


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
        check_choice(self, mode=MODES, on_bad_media=BAD_MEDIA)


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
            out[q.key] = (q, media_path(cfg.video_root, f"{q.split}/{q.video_id}.mp4", f"{f}: video {q.video_id!r}"))
    return out


def run_eventhallusion(cfg: EventHallusionEvalConfig, model=None, processor=None) -> dict:
    """Answer every question on its video and score QA accuracy per split and overall; resumable.

    Arguments as every runner's (`mmpo/eval/runs.py`); returns the metrics written to metrics.json:
    `eventhallusion.score`'s result, plus mode and skipped media.
    """
    files = question_files(cfg.questions)
    questions = load_questions(cfg, files)
    items = [Item(k, path, q.prompt()) for k, (q, path) in questions.items()]
    done, bad = answer_questions(cfg, {"mode": cfg.mode}, KEY, items, "video", model, processor, yes_no_answer)
    asked = answered(questions, done, bad, cfg.questions, "no question has a readable video")
    predictions = {q.key: done[q.key][0] for q in asked}
    eventhallusion.write_predictions(Path(cfg.out_dir) / "answers.json", files, predictions)
    metrics = {**eventhallusion.score(asked, predictions), "mode": cfg.mode,
               "question_files": [f.name for f in files.values()]}
    return finish(cfg, metrics, bad, len(questions) - len(asked), "questions", report.write_eventhallusion_report)
