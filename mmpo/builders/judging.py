"""Judging sampled answers for the self-QA builder: S_judge(y) on a 1-10 scale, or None when unusable.

Two judges, both the model judging itself:
- `rubric` (VideoSAVi v1 [paper; scoring RECONSTRUCTION]): the model writes four 1-10 scores (relevance,
  accuracy, temporal grounding, clarity) in free text; `parse_judgement` reads them, S_judge = their mean,
  unparsable text = None (counted and dropped).
- `yes_no` [mmpo extension, not from the paper]: the model is asked whether the answer is correct and
  S_judge = 1 + 9 P(yes | yes or no), read from the next-token logits (`mmpo.models.scoring`).
  It never fails to parse, so small models that cannot follow the rubric format still rank their answers.
"""

from __future__ import annotations

import math
import re
from typing import Callable

CRITERIA = ("relevance", "accuracy", "temporal_grounding", "clarity")
RUBRIC_PROMPT = ("Rate the answer to the question about the {m}. Question: {q} Answer: {a} "
                 "Give four scores from 1 to 10 as 'Relevance: n, Accuracy: n, Temporal grounding: n, Clarity: n'.")
YES_NO_PROMPT = "Question: {q} Answer: {a} Is this answer correct for the {m}? Answer yes or no."
JUDGES = ("rubric", "yes_no")
# (question, answer) pairs, the media each is about (one per pair), their word ("video"/"image") -> S_judge or None each
Judge = Callable[[list, list, str], list]

_NAMES = {"relevance": r"relevan(?:ce|t)", "accuracy": r"accura(?:cy|te)",
          "temporal_grounding": r"temporal[\s_-]*(?:grounding)?", "clarity": r"clarity|clear"}
_NUM = r"(\d+(?:\.\d+)?)"
# name, optional quote/parenthetical ("(1-10)"), separator, optional quote, number, optional "/10"
_NAMED = {k: re.compile(rf"\b(?:{v})\b[\"']?\s*(?:\([^)]*\))?\s*(?:[:=]|is|-)?\s*[\"']?\s*{_NUM}\s*(?:/\s*10)?", re.I)
          for k, v in _NAMES.items()}
_ANY_NAME = re.compile("|".join(rf"\b(?:{v})\b" for v in _NAMES.values()), re.I)


def parse_judgement(text: str) -> dict[str, float] | None:
    """Parse four rubric scores (1-10) from a judge's free text [RECONSTRUCTION of VideoSAVi v1].

    Accepts "Relevance: 7", "relevance=7/10", JSON-ish `{"relevance": 7, ...}`, "Temporal grounding
    (1-10): 6", or, when no criterion is named, exactly four bare numbers in rubric order ("7 8 6 9",
    "7/10, 8/10, 6/10, 9/10"). Anything else is unparsable.

    Args:
        text: the judge model's output.

    Returns:
        {criterion: score} for the four CRITERIA, or None when a score is missing or outside 1-10.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if _ANY_NAME.search(text):
        scores = {}
        for k, pat in _NAMED.items():
            m = pat.search(text)
            if m is None:
                return None  # a named rubric with a criterion missing
            scores[k] = float(m.group(1))
    else:
        bare = re.sub(r"\s*/\s*10\b", "", text)  # "7/10" -> "7": the denominator is not a score
        values = [float(v) for v in re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?!\d)", bare)]
        if len(values) != len(CRITERIA):
            return None
        scores = dict(zip(CRITERIA, values))
    if not all(1.0 <= v <= 10.0 for v in scores.values()):
        return None
    return scores


def judge_score(scores: dict[str, float]) -> float:
    """S_judge(y): mean of the four criteria (METHODS §2)."""
    return sum(scores[k] for k in CRITERIA) / len(CRITERIA)


def yes_no_score(margin: float) -> float | None:
    """S_judge from a yes-vs-no log-odds: 1 + 9 * sigmoid(margin), on the rubric's 1-10 scale (None if NaN)."""
    if math.isnan(margin):
        return None
    return 1.0 + 9.0 / (1.0 + math.exp(-min(max(margin, -50.0), 50.0)))  # clamped: exp overflows past ~709


def rubric_judge(generate) -> Judge:
    """A `Judge` from a text generator `fn(prompts, media, temperature, seed) -> list[str]` (greedy)."""

    def judge(qa: list[tuple[str, str]], media: list, word: str) -> list[float | None]:
        texts = generate([RUBRIC_PROMPT.format(m=word, q=q, a=a) for q, a in qa], media, 0.0, 0)
        return [None if (parsed := parse_judgement(t)) is None else judge_score(parsed) for t in texts]

    return judge


def yes_no_judge(model, processor, media_type: str, batch_size: int = 8) -> Judge:
    """A `Judge` from the model's yes/no logits for YES_NO_PROMPT (forwards of `batch_size` prompts)."""
    from mmpo.models.scoring import margins_plain, yes_no_ids

    ids = yes_no_ids(processor)

    def judge(qa: list[tuple[str, str]], media: list, word: str) -> list[float | None]:
        prompts = [YES_NO_PROMPT.format(m=word, q=q, a=a) for q, a in qa]
        margins = [m for s in range(0, len(prompts), batch_size)  # bounded memory: a video per prompt
                   for m in margins_plain(model, processor, prompts[s:s + batch_size],
                                          media[s:s + batch_size], media_type, ids)]
        return [yes_no_score(m) for m in margins]

    return judge
