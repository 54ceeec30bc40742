"""VideoHallucer (patrick-tssn/VideoHallucer): paired questions, hit rule, pair accuracy, bias scores.

Matches the reference kit at ae4c2f2 (shared BENCHMARKS.md §2):
- data: `videohallucer_datasets/<category>/<category>.json`, an array of pairs
  `{"basic": {video, question, answer}, "hallucination": {..., "explanation"?}, "type"?}`;
  semantic_detail pairs use different videos, interaction has no `type`, fact_detect answers are both "no";
- prompt: `evaluations/evaluation_utils.py::evaluate`, each question asked on its own video;
- hit rule and scores: `evaluation_utils.py::cal_score`, the "all" mean of `evaluation.py`;
- bias scores: `evaluations/evaluation_bias_sep.py`, formulas copied as written.

Pure Python (no torch). The runner makes one `VHPrediction` per pair and calls `score_category`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}:1: expected a JSON array of pairs")
    return data


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
            preds.append(VHPrediction(rec["basic"]["predict"], rec["hallucination"]["predict"]))
        except (KeyError, TypeError):
            raise ValueError(f"{path}: pair {i}: 'basic.predict' or 'hallucination.predict' missing") from None
    return preds


def hit(answer: str, predict: str) -> bool:
    """`cal_score`: the ground-truth word anywhere in the output, as a whole word, any case.

    No first-sentence rule and no check for the opposite word: "No, ... yes" hits "yes"; "not" is not "no".
    """
    return re.search(r"\b(" + answer + r")\b", predict, re.IGNORECASE) is not None


def score_category(pairs: list[VHPair], preds: list[VHPrediction]) -> dict:
    """Per-category accuracies (`cal_score`; reference keys basic_accuracy/halluc_accuracy/accuracy).

    Returns:
        basic_accuracy, hallucinated_accuracy, pair_accuracy (both hit), n_pairs, category.
    """
    if len(pairs) != len(preds) or not pairs:
        raise ValueError(f"{len(pairs)} pairs but {len(preds)} predictions (need equal, non-zero)")
    b = [hit(p.basic.answer, r.basic) for p, r in zip(pairs, preds)]
    h = [hit(p.hallucination.answer, r.hallucination) for p, r in zip(pairs, preds)]
    n = len(pairs)
    return {"basic_accuracy": sum(b) / n, "hallucinated_accuracy": sum(h) / n,
            "pair_accuracy": sum(x and y for x, y in zip(b, h)) / n, "n_pairs": n,
            "category": pairs[0].category}


def overall(results: dict[str, dict]) -> dict:
    """Unweighted mean over the published categories present (`evaluation.py` "all"; README Overall).

    Extra categories (interaction, fact_detect) are left out, as in the leaderboard.

    Args:
        results: {category: `score_category` output}.

    Returns:
        the three mean accuracies, the categories used, and `complete` (all five present).
    """
    used = [c for c in CATEGORIES if c in results]
    if not used:
        raise ValueError(f"none of the published categories {CATEGORIES} in {sorted(results)}")
    keys = ("basic_accuracy", "hallucinated_accuracy", "pair_accuracy")
    return {**{k: sum(results[c][k] for c in used) / len(used) for k in keys},
            "categories": used, "complete": len(used) == len(CATEGORIES), "aggregation": "mean_of_categories"}


def bias_scores(pairs: list[VHPair], preds: list[VHPrediction]) -> dict:
    """`evaluation_bias_sep.py`, formulas exactly as coded (B = basic yes-hit, H = hallucinated no-hit).

    n_yes = #B + #(B and not H); n_no = #(not B and H) + #H; wrong = #not B + #not H; fp = #(B and not H);
    ydp = (n_yes - N) / 2N; ndp = (n_no - N) / 2N; fpr = fp / wrong; hallucination_score = fp / #B.

    Returns:
        ydp, ndp, fpr, hallucination_score, basic, halluc, overall, n_pairs.
    """
    for i, p in enumerate(pairs):
        if (p.basic.answer, p.hallucination.answer) != ("yes", "no"):  # the reference asserts this
            raise ValueError(f"pair {i}: bias scores need basic=yes / hallucination=no answers")
    b = [hit("yes", r.basic) for r in preds]
    h = [hit("no", r.hallucination) for r in preds]
    n = len(pairs)
    fp = sum(x and not y for x, y in zip(b, h))
    n_yes = sum(b) + fp
    n_no = sum(y and not x for x, y in zip(b, h)) + sum(h)
    wrong = b.count(False) + h.count(False)
    return {"ydp": (n_yes - n) / (2 * n) if n else 0.0, "ndp": (n_no - n) / (2 * n) if n else 0.0,
            "fpr": fp / wrong if wrong else 0.0,
            # The reference divides by #B unguarded (ZeroDivisionError when no basic hit); 0.0 here.
            "hallucination_score": fp / sum(b) if sum(b) else 0.0,
            "basic": sum(b) / n, "halluc": sum(h) / n, "overall": sum(x and y for x, y in zip(b, h)) / n,
            "n_pairs": n}


def fact_score(result: dict) -> float:
    """`evaluation.py --detect_fact` "Fact Score" = (basic + hallucinated accuracy) / 2.

    The reference averages over every category evaluated in the run; run with fact_detect alone
    (as the README does) this is fact_detect's own score, which is what this function takes.
    """
    return (result["basic_accuracy"] + result["hallucinated_accuracy"]) / 2


def score_answers_file(data_path: str | Path, answers_path: str | Path, category: str | None = None) -> dict:
    """Score a results file (reference layout) against its category data file.

    Args:
        data_path: `<category>.json` (ground truth; fixes the pair count, e.g. temporal 176 vs 200).
        answers_path: the same pairs with `predict` added to basic and hallucination.
        category: category name; default: found in `data_path`'s name.

    Returns:
        `score_category` output plus `bias` (yes/no categories), `fact_score` (fact_detect), prompt
        suffix and the data file name.

    Raises:
        ValueError: on a count mismatch or a pair whose questions/videos/answers differ from the data.
    """
    pairs = read_pairs(data_path, category)
    answered = read_pairs(answers_path, pairs[0].category if pairs else category)
    if len(answered) != len(pairs):
        raise ValueError(f"{answers_path}: {len(answered)} pairs, but {data_path} has {len(pairs)}")
    def key(q: VHQuestion) -> tuple:
        return q.video, q.question, q.answer

    for i, (p, a) in enumerate(zip(pairs, answered)):
        if (key(p.basic), key(p.hallucination)) != (key(a.basic), key(a.hallucination)):
            raise ValueError(f"{answers_path}: pair {i} differs from {data_path} pair {i}")
    preds = read_predictions(answers_path)
    result = score_category(pairs, preds)
    if all((p.basic.answer, p.hallucination.answer) == ("yes", "no") for p in pairs):
        result["bias"] = bias_scores(pairs, preds)
    if result["category"] == "fact_detect":
        result["fact_score"] = fact_score(result)
    return {**result, "prompt_suffix": PROMPT_SUFFIX, "data_file": Path(data_path).name}
