"""HallusionBench (tianyi-lab/HallusionBench, CVPR 2024): yes/no questions on figures whose edited copies flip the
answer; question-pair, figure and all accuracy, scored offline by the reference harnesses' keyword rules.

File (`HallusionBench.json`): a JSON array of `{"category": "VD" | "VS", "subcategory", "visual_input": "0" | "1" |
"2", "set_id", "figure_id", "question_id", "question", "gt_answer": "1" | "0", "gt_answer_details", "filename"?}`
(ids are strings). `visual_input` "0" is a question asked with no image (VS, figure 0: does the model know it
without looking?); those carry no `filename`. Images: `filename` ("./hallusion_bench/VD/illusion/0_0.png")
relative to the folder the released `hallusion_bench.zip` is unpacked in.

Which questions: both harnesses ask only the questions that have an image (lmms-eval `hallusion_bench_image.yaml`
reads the dataset's `image` split; VLMEvalKit's HallusionBench TSV holds the 951 image questions), so the runner
asks those; a file of answers is scored over whatever questions it answers, no-image ones included.

The answer rule (offline; the official evaluation and lmms-eval's default use a GPT-4 judge, not reproducible
offline):
- "lmms" (default): lmms-eval `evaluate_hb.py::hb_aggregation_result_intern`: the answer is "1" (yes) when the
  lower-cased prediction contains "yes" anywhere ("eyes" and "Yes, but no" too), else "0"; correct when it
  equals `gt_answer`;
- "vlmevalkit": VLMEvalKit `yorn.py::YOrN_Extraction` (exact words after its punctuation rule; `eval.pope_parsers`):
  "Yes" / "No" / "Unknown", correct when it equals the truth; Unknown is wrong (its GPT fallback is not run).

Metrics (lmms-eval `hb_aggregation_result_intern`; VLMEvalKit `Hallusion_rating` is the same with its keys):
- aAcc (all accuracy): correct questions / questions;
- qAcc (question pair accuracy): questions grouped by (category, subcategory, set_id, question_id), i.e. the
  same question over the original and edited figures; a group counts when every answer in it is correct;
- fAcc (figure accuracy): questions grouped by (category, subcategory, set_id, figure_id); a group counts when
  every question on that figure is answered correctly.
Each over all questions, per category (VD, VS) and per subcategory ("VD/illusion"), as fractions (the report
prints percentages). VLMEvalKit's groups leave out `category` (its `l2-category` is the subcategory), which
differs only if a subcategory name appears in both VD and VS with the same set and figure ids. Pure Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmpo.eval import files
from mmpo.eval.pope_parsers import parse_vlmevalkit

PARSERS = ("lmms", "vlmevalkit")
CATEGORIES = ("VD", "VS")
FIELDS = ("category", "subcategory", "visual_input", "set_id", "figure_id", "question_id", "question", "gt_answer")


@dataclass(frozen=True)
class HBQuestion:
    """One question: its ids (strings, as in the file), text, truth ("1" yes / "0" no) and image (None: no image)."""

    category: str
    subcategory: str
    set_id: str
    figure_id: str
    question_id: str
    question: str
    gt_answer: str
    filename: str | None
    visual_input: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return self.category, self.subcategory, self.set_id, self.figure_id, self.question_id

    @property
    def key_text(self) -> str:
        """The key as one string (predictions.jsonl rows, messages): "VD_illusion_0_1_2"."""
        return "_".join(self.key)


def judge(prediction: str, parser: str = "lmms") -> str:
    """The answer a prediction counts as: "1" (yes), "0" (no) or "unknown" (vlmevalkit only)."""
    if parser == "lmms":
        return "1" if prediction.lower().find("yes") != -1 else "0"
    if parser == "vlmevalkit":
        return {"yes": "1", "no": "0"}.get(parse_vlmevalkit(prediction), "unknown")
    raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")


def _id(value, where: str) -> str:
    """Ids are strings of digits in the file; an int is read as its text (other harnesses write ints)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return files.need_str(value, where)


def read_questions(path: str | Path) -> list[HBQuestion]:
    """Every question of a HallusionBench.json (or of an answers file in its layout), in file order; keys unique."""
    path = Path(path)
    out, seen = [], {}
    for i, rec in enumerate(files.load_array(path, "questions")):
        where = f"{path}: item {i}"
        rec = files.need_object(rec, where)
        for key in FIELDS:
            if key not in rec:
                raise ValueError(f"{where}: field '{key}': missing")
        values = {k: _id(rec[k], f"{where}: field '{k}'") for k in FIELDS}
        if values["gt_answer"] not in ("0", "1"):
            raise ValueError(f"{where}: field 'gt_answer': expected \"1\" (yes) or \"0\" (no), got {rec['gt_answer']!r}")
        filename = rec.get("filename")
        if values["visual_input"] != "0":
            files.need_str(filename, f"{where}: field 'filename'")
        q = HBQuestion(values["category"], values["subcategory"], values["set_id"], values["figure_id"],
                       values["question_id"], values["question"], values["gt_answer"],
                       filename if values["visual_input"] != "0" else None, values["visual_input"])
        if q.key in seen:
            raise ValueError(f"{where}: question {q.key_text} appears twice (first as item {seen[q.key]})")
        seen[q.key] = i
        out.append(q)
    return out


def _accuracies(questions: list[HBQuestion], correct: dict[tuple, bool]) -> dict:
    """aAcc, qAcc, fAcc (fractions) and their counts over `questions`."""
    pairs: dict[tuple, bool] = {}
    figures: dict[tuple, bool] = {}
    for q in questions:
        ok = correct[q.key]
        pair = (q.category, q.subcategory, q.set_id, q.question_id)
        figure = (q.category, q.subcategory, q.set_id, q.figure_id)
        pairs[pair] = pairs.get(pair, True) and ok
        figures[figure] = figures.get(figure, True) and ok
    n_correct = sum(correct[q.key] for q in questions)
    return {"aAcc": n_correct / len(questions), "qAcc": sum(pairs.values()) / len(pairs),
            "fAcc": sum(figures.values()) / len(figures), "n_questions": len(questions), "n_correct": n_correct,
            "n_question_pairs": len(pairs), "n_pairs_correct": sum(pairs.values()), "n_figures": len(figures),
            "n_figures_correct": sum(figures.values())}


def score(questions: list[HBQuestion], predictions: dict[tuple, str], parser: str = "lmms") -> dict:
    """aAcc / qAcc / fAcc overall, per category and per subcategory (module docstring).

    Args:
        questions: the questions to score (each must have a prediction).
        predictions: {question.key: raw prediction text}.
        parser: "lmms" | "vlmevalkit".

    Returns:
        {"aAcc", "qAcc", "fAcc", counts, "categories": {VD: ...}, "subcategories": {"VD/illusion": ...},
        "n_unknown", "parser"}.
    """
    if not questions:
        raise ValueError("no questions to score")
    missing = [q.key_text for q in questions if q.key not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction (first: {missing[:3]})")
    judged = {q.key: judge(predictions[q.key], parser) for q in questions}
    correct = {q.key: judged[q.key] == q.gt_answer for q in questions}
    result = _accuracies(questions, correct)
    cats = sorted({q.category for q in questions})
    subs = sorted({(q.category, q.subcategory) for q in questions})
    result["categories"] = {c: _accuracies([q for q in questions if q.category == c], correct) for c in cats}
    result["subcategories"] = {f"{c}/{s}": _accuracies([q for q in questions if (q.category, q.subcategory) == (c, s)],
                                                       correct) for c, s in subs}
    result["n_unknown"] = sum(v == "unknown" for v in judged.values())
    result["n_no_image"] = sum(q.filename is None for q in questions)
    result["parser"] = parser
    return result


def read_predictions(path: str | Path) -> dict[tuple, str]:
    """An answers file in the reference result layout: the questions' items plus `model_prediction` (lmms-eval's
    and the official evaluation's field); {question key: prediction}. Items without a prediction are left out."""
    path = Path(path)
    raw = files.load_array(path, "answered questions")
    out = {}
    for i, (q, rec) in enumerate(zip(read_questions(path), raw)):
        if "model_prediction" in rec:
            out[q.key] = files.need_str(rec["model_prediction"], f"{path}: item {i}: field 'model_prediction'")
    return out


def write_predictions(path: str | Path, question_file: str | Path, predictions: dict[tuple, str]) -> Path:
    """The reference result layout: each answered question's item from `question_file` with `model_prediction`."""
    items = files.load_array(question_file, "questions")
    out = [{**rec, "model_prediction": predictions[q.key]} for q, rec in zip(read_questions(question_file), items)
           if q.key in predictions]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=4) + "\n", encoding="utf-8")
    return path


def score_answers_file(questions_path: str | Path, answers_path: str | Path, parser: str = "lmms",
                       unanswered: str = "error", preds: dict[tuple, str] | None = None) -> dict:
    """`mmpo eval hallusionbench --questions HallusionBench.json --answers A`: A's predictions for Q's questions.

    Questions without an image that A does not answer are left out and counted (`n_not_asked_no_image`): the
    harnesses, and mmpo's runner, ask only the image questions. `unanswered`: "error" (every image question needs
    a `model_prediction` in A), or "skip": score the answered ones (a run with `on_bad_media: skip` asks fewer);
    `n_unanswered` counts those left out. `preds`: A already read (another tool's layout, mmpo/eval/interop.py).
    """
    questions = read_questions(questions_path)
    preds = read_predictions(answers_path) if preds is None else preds
    unknown = sorted(set(preds) - {q.key for q in questions})
    if unknown:
        raise ValueError(f"{answers_path}: questions not in {questions_path}: {['_'.join(k) for k in unknown[:3]]}")
    not_asked = sum(q.filename is None and q.key not in preds for q in questions)
    questions = [q for q in questions if q.filename is not None or q.key in preds]
    questions, left_out = files.keep_answered(questions, [q.key in preds for q in questions], unanswered,
                                              answers_path, [q.key_text for q in questions])
    return {**score(questions, preds, parser), "n_unanswered": left_out, "n_not_asked_no_image": not_asked,
            "question_file": Path(questions_path).name}
