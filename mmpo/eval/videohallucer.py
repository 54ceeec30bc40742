"""VideoHallucer (patrick-tssn/VideoHallucer): paired question files and the reference results layout.

Matches the reference kit at ae4c2f2 (docs/BENCHMARKS.md §2):
- data: `videohallucer_datasets/<category>/<category>.json`, an array of pairs
  `{"basic": {video, question, answer}, "hallucination": {..., "explanation"?}, "type"?}`;
  semantic_detail pairs use different videos, interaction has no `type`, fact_detect answers are both "no";
- prompt: `evaluations/evaluation_utils.py::evaluate`, each question asked on its own video;
- hit rule, scores and bias scores: `mmpo/eval/videohallucer_metrics.py`.

Pure Python (no torch). The runner makes one `VHPrediction` per pair and calls `videohallucer_metrics.score_category`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmpo.eval import files

# The five categories of the published leaderboard "Overall" (README); the others are extra analyses.
CATEGORIES = ("object_relation", "temporal", "semantic_detail", "external_factual", "external_nonfactual")
EXTRA_CATEGORIES = ("interaction", "fact_detect")
PROMPT_SUFFIX = "\nAnswer the question using 'yes' or 'no'."  # evaluation_utils.py::evaluate


@dataclass(frozen=True)
class VHQuestion:
    """One side of a pair.

    Attributes:
        video: video file name, relative to the category's `videos/` folder.
        question: question text.
        answer: ground truth, "yes" or "no".
        explanation: why the hallucinated statement is wrong (external_factual only).
    """

    video: str
    question: str
    answer: str
    explanation: str | None = None

    def prompt(self) -> str:
        """The text the reference sends to the model."""
        return self.question + PROMPT_SUFFIX


@dataclass(frozen=True)
class VHPair:
    """A basic question and its hallucinated twin. `type` is None for interaction."""

    basic: VHQuestion
    hallucination: VHQuestion
    type: str | None
    category: str


@dataclass(frozen=True)
class VHPrediction:
    """Raw model outputs for one pair (the reference's `predict` strings)."""

    basic: str
    hallucination: str


def category_from_name(path: str | Path) -> str:
    """Category name found in a file name ("" if none); longest names first."""
    name = Path(path).name
    for cat in sorted(CATEGORIES + EXTRA_CATEGORIES, key=len, reverse=True):
        if cat in name:
            return cat
    return ""


def _question(rec: dict, where: str) -> VHQuestion:
    for key in ("video", "question", "answer"):
        if key not in rec:
            raise ValueError(f"{where}: field '{key}': missing")
    return VHQuestion(rec["video"], rec["question"], rec["answer"], rec.get("explanation"))


def _load_array(path: Path) -> list:
    return files.load_array(path, "pairs")  # UTF-8 and JSON errors name the file and line


def read_pairs(path: str | Path, category: str | None = None) -> list[VHPair]:
    """Read one category file (data file or the reference's results file).

    Args:
        path: `<category>.json`.
        category: category name; default: found in the file name.

    Returns:
        pairs in file order.

    Raises:
        ValueError: naming the file and pair index for missing fields.
    """
    path = Path(path)
    cat = category if category is not None else category_from_name(path)
    pairs = []
    for i, rec in enumerate(_load_array(path)):
        where = f"{path}: pair {i}"
        if not isinstance(rec, dict) or "basic" not in rec or "hallucination" not in rec:
            raise ValueError(f"{where}: expected an object with 'basic' and 'hallucination'")
        pairs.append(VHPair(_question(rec["basic"], f"{where}.basic"),
                            _question(rec["hallucination"], f"{where}.hallucination"), rec.get("type"), cat))
    return pairs


def to_reference_layout(pairs: list[VHPair], preds: list[VHPrediction]) -> list[dict]:
    """The reference's results JSON (`results/{qa_type}_{model}.json`): pairs with `predict` added."""
    if len(pairs) != len(preds):
        raise ValueError(f"{len(pairs)} pairs but {len(preds)} predictions")
    out = []
    for pair, pred in zip(pairs, preds):
        rec = {}
        for side, text in (("basic", pred.basic), ("hallucination", pred.hallucination)):
            q = getattr(pair, side)
            rec[side] = {"video": q.video, "question": q.question, "answer": q.answer,
                         **({"explanation": q.explanation} if q.explanation is not None else {}), "predict": text}
        if pair.type is not None:
            rec["type"] = pair.type
        out.append(rec)
    return out


def write_results(path: str | Path, pairs: list[VHPair], preds: list[VHPrediction]) -> Path:
    """Write the reference results file (indent 4, like `evaluate`), readable by `score_answers_file`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_reference_layout(pairs, preds), indent=4) + "\n", encoding="utf-8")
    return path


def read_predictions(path: str | Path) -> list[VHPrediction]:
    """The `predict` strings of a results file in the reference layout."""
    path = Path(path)
    preds = []
    for i, rec in enumerate(_load_array(path)):
        try:
            basic, halluc = rec["basic"]["predict"], rec["hallucination"]["predict"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: pair {i}: 'basic.predict' or 'hallucination.predict' missing") from None
        preds.append(VHPrediction(files.need_str(basic, f"{path}: pair {i}: field 'basic.predict'"),
                                  files.need_str(halluc, f"{path}: pair {i}: field 'hallucination.predict'")))
    return preds
