"""POPE metrics exactly as the reference `evaluate.py` computes them (docs/BENCHMARKS.md §1): accuracy,
precision, recall, F1 with yes as the positive class and yes_ratio over predictions; per-split results,
their mean (LLaVA-1.5's "POPE" column) and the pooled counts (lmms-eval).
"""

from __future__ import annotations

from pathlib import Path

from mmpo.eval import interop
from mmpo.eval.pope import PopePrediction, PopeQuestion, read_answers, read_questions
from mmpo.eval.pope_parsers import PARSERS, UNKNOWN_AS_NO


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0  # lmms-eval / VLMEvalKit guard; evaluate.py would divide by zero


def metrics_from_counts(c: dict, unknown_as_no: bool = False) -> dict:
    """Accuracy/P/R/F1/yes-ratio from counts tp, fp, tn, fn, unknown, unknown_yes, n.

    tp/fp/tn/fn count only yes/no predictions; `unknown_yes` = unknowns whose label is yes. Unknowns
    are always wrong in accuracy; with `unknown_as_no` they are false negatives when the label is yes.
    """
    fn = c["fn"] + (c["unknown_yes"] if unknown_as_no else 0)
    p = _ratio(c["tp"], c["tp"] + c["fp"])
    r = _ratio(c["tp"], c["tp"] + fn)
    return {"accuracy": _ratio(c["tp"] + c["tn"], c["n"]), "precision": p, "recall": r,
            "f1": _ratio(2 * p * r, p + r),
            # Share of PREDICTED yes over all N (evaluate.py). lmms-eval's pope_aggregate_yes_ratio
            # counts ground-truth yes instead, so it always reads 0.5 on balanced files.
            "yes_ratio": _ratio(c["tp"] + c["fp"], c["n"])}


def score(labels: list[str], preds: list[str], parser: str = "official") -> dict:
    """Score parsed predictions against labels (positive class = yes).

    Args:
        labels: "yes"/"no" per question.
        preds: "yes"/"no"/"unknown" per question (the output of `PARSERS[parser]`).
        parser: which reference's unknown rule applies (see UNKNOWN_AS_NO).

    Returns:
        accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, unknown, unknown_yes, n, parser.
    """
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    c = dict.fromkeys(("tp", "fp", "tn", "fn", "unknown", "unknown_yes"), 0)
    for i, (y, p) in enumerate(zip(labels, preds)):
        if y not in ("yes", "no") or p not in ("yes", "no", "unknown"):
            raise ValueError(f"item {i}: label {y!r} / prediction {p!r} not in yes/no(/unknown)")
        if p == "unknown":
            c["unknown"] += 1
            c["unknown_yes"] += y == "yes"
        else:
            c[{("yes", "yes"): "tp", ("yes", "no"): "fp", ("no", "no"): "tn", ("no", "yes"): "fn"}[p, y]] += 1
    c["n"] = len(labels)
    return {**metrics_from_counts(c, UNKNOWN_AS_NO[parser]), **c, "parser": parser}


def aggregate(per_split: dict[str, dict]) -> dict:
    """Combine per-split results (each from `score`/`score_predictions`, same parser).

    Top-level accuracy/precision/recall/f1/yes_ratio are means over splits: the mean of split F1s is
    LLaVA-1.5's "POPE" column (haotian-liu/LLaVA#626). `pooled` recomputes them on summed counts, as
    lmms-eval's `pope` task does over all 9,000 questions (and VLMEvalKit's "Overall" row over its
    exploded rows).

    Returns:
        dict with the mean metrics, `pooled`, `splits`, `aggregation`, and the shared metadata.
    """
    if not per_split:
        raise ValueError("no splits to aggregate")
    parsers = {r["parser"] for r in per_split.values()}
    if len(parsers) != 1:
        raise ValueError(f"splits scored with different parsers: {sorted(parsers)}")
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    counts = {k: sum(r[k] for r in per_split.values()) for k in ("tp", "fp", "tn", "fn", "unknown", "unknown_yes", "n")}
    parser = parsers.pop()
    first = next(iter(per_split.values()))
    return {**{k: sum(r[k] for r in per_split.values()) / len(per_split) for k in keys},
            "aggregation": "mean_of_splits", "parser": parser, "prompt_suffix": first.get("prompt_suffix"),
            "question_files": {s: r.get("question_file") for s, r in per_split.items()},
            "pooled": {**metrics_from_counts(counts, UNKNOWN_AS_NO[parser]), **counts, "aggregation": "pooled"},
            "splits": per_split}


def score_predictions(questions: list[PopeQuestion], preds: list[PopePrediction], parser: str = "official",
                      prompt_suffix: str | None = None, question_file: str | Path | None = None) -> dict:
    """Parse and score predictions for one split, recording how the number was made.

    Args:
        questions: labelled questions of one split.
        preds: predictions aligned with `questions` (same order).
        parser: key of PARSERS.
        prompt_suffix: the suffix the model saw (None = not recorded).
        question_file: the file the questions came from (its name is recorded with the count).

    Returns:
        `score` output plus prompt_suffix, question_file {name, count}, aggregation and split.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose from {sorted(PARSERS)}")
    for q, p in zip(questions, preds):
        if str(q.question_id) != str(p.question_id):
            raise ValueError(f"prediction for id {p.question_id!r} is aligned with question {q.question_id!r}")
    result = score([q.label for q in questions], [PARSERS[parser](p.answer) for p in preds], parser)
    splits = sorted({q.split for q in questions})
    return {**result, "prompt_suffix": prompt_suffix, "aggregation": "single_split", "split": ",".join(splits),
            "question_file": {"name": Path(question_file).name if question_file else None, "count": len(questions)}}


def score_answers_file(questions_path: str | Path, answers_path: str | Path, parser: str = "official",
                       prompt_suffix: str | None = None, unanswered: str = "error") -> dict:
    """Score an answers file (`mmpo eval pope --questions Q --answers A --parser P`).

    A question file holding several splits (a `category` field, as in llava_pope_test.jsonl) is scored
    per split and combined with `aggregate`.

    `unanswered`: "error", or "skip" to score only the questions the file answers (`pope.read_answers`); the
    result's `n_unanswered` counts those left out.

    Returns:
        one split's result, or the `aggregate` of several.
    """
    questions = read_questions(questions_path)
    preds = read_answers(answers_path, questions, unanswered=unanswered)
    left_out = len(questions) - len(preds)
    answered = {str(p.question_id) for p in preds}
    questions = [q for q in questions if str(q.question_id) in answered]
    return {**_score_questions(questions, preds, parser, prompt_suffix, questions_path), "n_unanswered": left_out}


def score_samples_file(questions_path: str | Path, samples_path: str | Path, parser: str = "official") -> dict:
    """An lmms-eval samples file or a VLMEvalKit prediction table (`interop.detect` tells them apart) scored as
    `score_answers_file` scores mmpo's own answers files."""
    questions = read_questions(questions_path)
    read = interop.read_pope_table if interop.detect(samples_path) == "vlmevalkit" else interop.read_samples
    preds = read(samples_path, questions)
    return {**_score_questions(questions, preds, parser, None, questions_path), "n_unanswered": 0}


def _score_questions(questions, preds, parser, prompt_suffix, questions_path) -> dict:
    """One split's `score_predictions`, or the `aggregate` of each split's."""
    splits = list(dict.fromkeys(q.split for q in questions))
    if len(splits) == 1:
        return score_predictions(questions, preds, parser, prompt_suffix, questions_path)
    per_split = {}
    for s in splits:
        idx = [i for i, q in enumerate(questions) if q.split == s]
        per_split[s] = score_predictions([questions[i] for i in idx], [preds[i] for i in idx], parser,
                                         prompt_suffix, questions_path)
    return aggregate(per_split)
