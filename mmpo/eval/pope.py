"""POPE (Polling-based Object Probing Evaluation): question and answer files, prompt suffixes, parsers.

Matches the reference scorers described in docs/BENCHMARKS.md §1:
- question files: AoiDragon/POPE `output/coco/*.json` (JSON Lines despite the name) and
  `output/seem/*/*.json` (one JSON array); the legacy 2,910-question random file of commit e3e3926
  (used by LLaVA-1.5, with its "imange" typos kept verbatim) reads like any other file;
- parsers: the official `evaluate.py`, lmms-eval `tasks/pope/utils.py`, VLMEvalKit `YOrN_Extraction`;
- metrics (`evaluate.py`: positive class = yes, yes_ratio over *predictions*): `mmpo/eval/pope_metrics.py`.

Pure Python on purpose (no torch): the runner (`mmpo/eval/pope_runner.py`) produces `PopePrediction`s and calls
`pope_metrics.score_predictions`; `mmpo eval pope --questions Q --answers A` calls `score_answers_file`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mmpo.eval import files
from mmpo.eval.pope_parsers import (  # noqa: F401  (re-exported: eval.pope.PARSERS etc.)
    PARSERS,
    UNKNOWN_AS_NO,
    parse_lmms,
    parse_official,
    parse_vlmevalkit,
    parse_vlmevalkit_pre2025,
)
from mmpo.records import jsonl_lines, resolve_media

SPLITS = ("random", "popular", "adversarial")
# Text appended to the question before it is sent to the model (docs/BENCHMARKS.md §1.3).
PROMPT_SUFFIXES = {
    "official": "",  # AoiDragon/POPE README, HA-DPO pope_eval.py: the bare question
    "llava": "\nAnswer the question using a single word or phrase.",  # LLaVA scripts/v1_5/eval/pope.sh
    "lmms_2024": "\nAnswer the question with 'yes' or 'no'.",  # lmms-eval commit 5eacae27
}


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question.

    Attributes:
        question_id: id from the file (int in the official files; starts at 1 per split file).
        image: image file name (COCO val2014 name, or a bare GQA id).
        text: the question, verbatim (legacy files keep "imange").
        label: "yes" / "no" (lower-cased), or None for label-free files such as llava_pope_test.jsonl.
        split: "random" / "popular" / "adversarial" (or "" when unknown).
    """

    question_id: int | str
    image: str
    text: str
    label: str | None
    split: str = ""

    def prompt(self, suffix: str = "") -> str:
        """The text sent to the model: the question plus a harness suffix (see PROMPT_SUFFIXES)."""
        return self.text + suffix


@dataclass(frozen=True)
class PopePrediction:
    """A model's answer to one question; `to_json` is the official answer-file line.

    Attributes:
        question_id: id of the answered question.
        answer: raw model output (generate mode) or "yes"/"no" (logits mode).
        split: split of the question ("" if unknown).
        margin: logits mode only: logit("yes") - logit("no") at the first answer token.
    """

    question_id: int | str
    answer: str
    split: str = ""
    margin: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ---------------------------------------------------------------- reading files


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a JSONL file or a JSON array (line = line of the item start)."""
    text = files.read_text(path)  # UTF-8, or an error naming the line
    if text.lstrip().startswith("["):
        items = files.parse_json(text, str(path))
        # Approximate line of each item: JSON arrays here are pretty-printed one object per "{" line.
        starts = [i + 1 for i, line in enumerate(jsonl_lines(text)) if line.strip().startswith("{")]
        lines = starts if len(starts) == len(items) else [1] * len(items)
        return list(zip(lines, items))
    return files.read_jsonl(path, text)


def _split_from_name(path: Path) -> str:
    m = re.search(r"(random|popular|adversarial)", path.name)
    return m.group(1) if m else ""


def read_questions(path: str | Path, split: str | None = None, require_label: bool = True,
                   image_root: str | Path | None = None) -> list[PopeQuestion]:
    """Read a POPE question file in either official layout.

    Args:
        path: JSONL (`coco_pope_*.json`, `llava_pope_test.jsonl`) or JSON array (`*_pope_seem_*.json`).
        split: split name for every question; default: the record's `category`, else the file name.
        require_label: raise when a record has no `label` (set False for label-free prompt files).
        image_root: when given, every `image` must lie inside this folder (`mmpo.records.resolve_media`):
            a question file cannot make the runner open `../x.jpg` or an absolute path elsewhere.

    Returns:
        Questions in file order.

    Raises:
        ValueError: naming `file:line` for invalid JSON, missing keys, a label other than yes/no, or an
            image outside `image_root`.
    """
    path = Path(path)
    default_split = split if split is not None else _split_from_name(path)
    out = []
    for line, rec in _records(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(rec).__name__}")
        for key in ("question_id", "image", "text") + (("label",) if require_label else ()):
            if key not in rec:
                raise ValueError(f"{path}:{line}: field '{key}': missing")
        label = rec.get("label")
        if label is not None:
            label = str(label).strip().lower()  # POPEv2 uses "Yes"/"No"
            if label not in ("yes", "no"):
                raise ValueError(f"{path}:{line}: field 'label': expected yes/no, got {rec['label']!r}")
        if image_root is not None:
            _check_image(rec["image"], image_root, f"{path}:{line}")
        qsplit = split if split is not None else rec.get("category", default_split)
        out.append(PopeQuestion(rec["question_id"], rec["image"], rec["text"], label, qsplit))
    return out


def _check_image(image, image_root: str | Path, where: str) -> None:
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: field 'image': expected a file name, got {image!r}")
    try:
        resolve_media(image_root, image)
    except ValueError as e:
        raise ValueError(f"{where}: field 'image': {e}") from None


def read_answers(path: str | Path, questions: list[PopeQuestion], allow_extra: bool = False,
                 unanswered: str = "error") -> list[PopePrediction]:
    """Read a model-answer JSONL file and align it with `questions`.

    The answer is under `answer` (official README layout) or `text` (LLaVA `model_vqa_loader` output).
    If every line has a `question_id`, answers are matched by id; otherwise by position, which requires
    the same count: `evaluate.py` zips by position, and AoiDragon/POPE#17 shows a 2,910-answer file
    silently misaligned against the 3,000-label file.

    Args:
        path: answers JSONL.
        questions: the questions the answers belong to (ids must be unique for id matching).
        allow_extra: ignore answers whose id is not among `questions` (e.g. LLaVA's 8,910-line file).
        unanswered: "error", or "skip": questions without an answer are left out (id matching only;
            `files.keep_answered`), as a run with `on_bad_media: skip` left them out.

    Returns:
        One prediction per answered question, in question order.

    Raises:
        ValueError: naming `file:line` for a missing answer field, duplicate or unknown ids, missing
            answers, or a count mismatch in positional mode.
    """
    path = Path(path)
    rows = []
    for line, rec in _records(path):
        rec = files.need_object(rec, f"{path}:{line}")
        key = "answer" if "answer" in rec else "text" if "text" in rec else None
        if key is None:
            raise ValueError(f"{path}:{line}: field 'answer' (or 'text'): missing")
        rows.append((line, rec.get("question_id"), files.need_str(rec[key], f"{path}:{line}: field '{key}'"),
                     rec.get("margin")))
    by_id = rows and all(qid is not None for _, qid, _, _ in rows)
    if not by_id:
        if len(rows) != len(questions):
            raise ValueError(
                f"{path}: {len(rows)} answers without question_id for {len(questions)} questions; positional "
                "matching needs equal counts (AoiDragon/POPE#17: a 2,910-answer file against 3,000 labels)")
        return [PopePrediction(q.question_id, a, q.split, m) for q, (_, _, a, m) in zip(questions, rows)]
    wanted = {str(q.question_id) for q in questions}
    if len(wanted) != len(questions):
        raise ValueError(f"{path}: question ids are not unique; answers cannot be matched by id")
    answers: dict[str, tuple[str, float | None]] = {}
    for line, qid, a, m in rows:
        if str(qid) in answers:
            raise ValueError(f"{path}:{line}: question_id {qid!r} answered twice")
        if str(qid) not in wanted:
            if allow_extra:
                continue
            raise ValueError(f"{path}:{line}: question_id {qid!r} is not in the question file")
        answers[str(qid)] = (a, m)
    questions = files.keep_answered(questions, [str(q.question_id) in answers for q in questions], unanswered, path,
                                    [q.question_id for q in questions])[0]
    matched = [(q, answers[str(q.question_id)]) for q in questions]
    return [PopePrediction(q.question_id, a, q.split, m) for q, (a, m) in matched]


def write_answers(path: str | Path, preds: list[PopePrediction], append: bool = False) -> Path:
    """Write predictions as an official answers JSONL (`question_id`, `answer`, ...), readable by `read_answers`.

    Args:
        path: output file (parent folders are created).
        preds: predictions to write.
        append: add to an existing file (resumable runs) instead of replacing it.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(p.to_json()) + "\n")
    return path
