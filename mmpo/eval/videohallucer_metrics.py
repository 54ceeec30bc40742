"""VideoHallucer scores exactly as the reference kit at ae4c2f2 computes them (docs/BENCHMARKS.md §2):
- hit rule and scores: `evaluations/evaluation_utils.py::cal_score`, the "all" mean of `evaluation.py`;
- bias scores: `evaluations/evaluation_bias_sep.py`, formulas copied as written.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmpo.eval.videohallucer import (
    CATEGORIES,
    PROMPT_SUFFIX,
    VHPair,
    VHPrediction,
    VHQuestion,
    read_pairs,
    read_predictions,
)


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


def score_answers_file(data_path: str | Path, answers_path: str | Path, category: str | None = None,
                       unanswered: str = "error") -> dict:
    """Score a results file (reference layout) against its category data file.

    Args:
        data_path: `<category>.json` (ground truth; fixes the pair count, e.g. temporal 176 vs 200).
        answers_path: the same pairs with `predict` added to basic and hallucination.
        category: category name; default: found in `data_path`'s name.
        unanswered: "error" (the results file must hold every pair), or "skip": it may leave pairs out (a run
            with `on_bad_media: skip` does), the rest are scored; `n_unanswered` counts those left out.

    Returns:
        `score_category` output plus `bias` (yes/no categories), `fact_score` (fact_detect), prompt
        suffix, the data file name and `n_unanswered`.

    Raises:
        ValueError: on a count mismatch or a pair whose questions/videos/answers differ from the data.
    """
    pairs = read_pairs(data_path, category)
    answered = read_pairs(answers_path, pairs[0].category if pairs else category)

    def key(q: VHQuestion) -> tuple:
        return q.video, q.question, q.answer

    if len(answered) != len(pairs) and unanswered == "skip":  # the answered pairs, in data order
        keys, kept, j = [(key(a.basic), key(a.hallucination)) for a in answered], [], 0
        for p in pairs:
            if j < len(keys) and (key(p.basic), key(p.hallucination)) == keys[j]:
                kept.append(p)
                j += 1
        if j != len(keys):
            raise ValueError(f"{answers_path}: pair {j} is not a pair of {data_path} (or is out of its order)")
        left_out, pairs = len(pairs) - len(kept), kept
    else:
        left_out = 0
    if len(answered) != len(pairs):
        raise ValueError(f"{answers_path}: {len(answered)} pairs, but {data_path} has {len(pairs)}"
                         + ("; a run with on_bad_media: skip leaves out pairs on unreadable videos: add "
                            "--unanswered skip to score the answered ones" if len(answered) < len(pairs) else ""))

    for i, (p, a) in enumerate(zip(pairs, answered)):
        if (key(p.basic), key(p.hallucination)) != (key(a.basic), key(a.hallucination)):
            raise ValueError(f"{answers_path}: pair {i} differs from {data_path} pair {i}")
    preds = read_predictions(answers_path)
    result = score_category(pairs, preds)
    if all((p.basic.answer, p.hallucination.answer) == ("yes", "no") for p in pairs):
        result["bias"] = bias_scores(pairs, preds)
    if result["category"] == "fact_detect":
        result["fact_score"] = fact_score(result)
    return {**result, "prompt_suffix": PROMPT_SUFFIX, "data_file": Path(data_path).name, "n_unanswered": left_out}
