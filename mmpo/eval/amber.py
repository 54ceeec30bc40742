"""AMBER, discriminative part (junyangwang0410/AMBER @534babf): yes/no questions on existence, attribute
(state, number, action) and relation, scored exactly as the repository's `inference.py` does.

Files (`data/`): `query/query_discriminative*.json` is a JSON array of `{"id", "image": "AMBER_k.jpg", "query"}`
(ids 1005-15220; 1-1004 are the generative "Describe this image." queries); `annotations.json` is an array
whose item `id - 1` holds `{"id", "type", "truth"}`. Types: `discriminative-hallucination` (existence, all
truth "no"), `discriminative-attribute-{state,number,action}`, `discriminative-relation` (truth "yes") and
`relation` (truth "no"); `inference.py` counts every type it does not name, so both relation types, as relation.
A model's answers are `[{"id", "response"}]`.

Rules copied from `inference.py` (`main` and the printing at its end):
- a response counts only when it is exactly "Yes" or "No" (case-sensitive, nothing stripped: "Yes." and
  "yes" are neither);
- "No" is the positive class: precision = (answered No and truth no) / answered No; recall = (answered No
  and truth no) / truth no; accuracy = correct / questions;
- every denominator starts at 0.001 (`data/metrics.txt`), so nothing divides by zero and 100% reads 99.999..;
  attribute sums three such counters (state, number, action), so its denominators carry 0.003;
- each number is `round(x * 100, 1)`; F1 = 2PR / (P + R + 0.0001) on those rounded P and R (as fractions),
  again x100 and rounded; existence alone uses + 0.001 instead of + 0.0001;
- "overall" is printed only when all three dimensions were evaluated (`-d`/`-a`); it pools the questions.

The generative part (CHAIR / Cover / Hal / Cog over "Describe this image." answers) needs spaCy's
`en_core_web_lg` vectors for its 0.8 similarity test and NLTK's POS tagger; neither is installable offline
from PyPI, so it is not offered (see README). Pure Python (no torch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mmpo.eval import files

DIMENSIONS = {"existence": ("discriminative-hallucination",),
              "attribute": ("discriminative-attribute-state", "discriminative-attribute-number",
                            "discriminative-attribute-action"),
              "relation": ("discriminative-relation", "relation")}
SUB_ATTRIBUTES = {"state": "discriminative-attribute-state", "number": "discriminative-attribute-number",
                  "action": "discriminative-attribute-action"}
START = 0.001  # data/metrics.txt: every *_num counter starts here


@dataclass(frozen=True)
class AmberQuestion:
    """One discriminative question: id, image file, query text, type and truth ("yes"/"no")."""

    id: int
    image: str
    query: str
    type: str
    truth: str

    @property
    def dimension(self) -> str:
        """existence / attribute / relation, as `inference.py` buckets the type (unnamed types -> relation)."""
        return next((d for d, types in DIMENSIONS.items() if self.type in types), "relation")


@dataclass(frozen=True)
class AmberAnswer:
    """A model's answer: the reference's `response` (raw text in generate mode, "Yes"/"No" in logits mode)."""

    id: int
    response: str
    margin: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _items(path: Path, what: str) -> list[tuple[str, dict]]:
    """(where, object) for each item of a JSON array file; an item that is not an object is an error."""
    return [(f"{path}: item {i}", files.need_object(rec, f"{path}: item {i}"))
            for i, rec in enumerate(files.load_array(path, what))]


def _id(rec: dict, where: str) -> int:
    return files.need_int_id(rec["id"], f"{where}: field 'id'")


def read_annotations(path: str | Path) -> dict[int, dict]:
    """{id: annotation} from `annotations.json`.

    The reference reads item `id - 1`; in the released file item k has id k + 1, so reading by id is the same
    and also works for excerpts.
    """
    path = Path(path)
    out = {}
    for where, rec in _items(path, "annotations"):
        for key in ("id", "type", "truth"):
            if key not in rec:
                raise ValueError(f"{where}: field '{key}': missing")
        files.need_str(rec["type"], f"{where}: field 'type'")
        if _id(rec, where) in out:
            raise ValueError(f"{where}: id {rec['id']} appears twice")
        out[_id(rec, where)] = rec
    return out


def read_questions(query_path: str | Path, annotations_path: str | Path) -> list[AmberQuestion]:
    """Discriminative questions of a query file, with type and truth from the annotations (generative skipped)."""
    query_path = Path(query_path)
    ann = read_annotations(annotations_path)
    out, seen = [], set()
    for where, rec in _items(query_path, "queries"):
        for key in ("id", "image", "query"):
            if key not in rec:
                raise ValueError(f"{where}: field '{key}': missing")
        qid = _id(rec, where)
        if qid in seen:
            raise ValueError(f"{where}: id {qid} appears twice")
        seen.add(qid)
        a = ann.get(qid)
        if a is None:
            raise ValueError(f"{where}: id {rec['id']} is not in {annotations_path}")
        if a["type"] == "generative":
            continue
        out.append(AmberQuestion(qid, files.need_str(rec["image"], f"{where}: field 'image'"),
                                 files.need_str(rec["query"], f"{where}: field 'query'"), a["type"], str(a["truth"])))
    return out


def read_answers(path: str | Path) -> dict[int, AmberAnswer]:
    """The reference's inference file: a JSON array of `{"id", "response"}` (JSONL accepted too)."""
    path = Path(path)
    text = files.read_text(path)
    if text.lstrip().startswith("["):
        recs = _items(path, "answers")
    else:
        recs = [(f"{path}:{n}", rec) for n, rec in files.read_jsonl(path, text)]
    out = {}
    for where, rec in recs:
        if "id" not in rec or "response" not in rec:
            raise ValueError(f"{where}: fields 'id' and 'response' are required")
        qid = _id(rec, where)
        if qid in out:
            raise ValueError(f"{where}: id {rec['id']} answered twice")
        out[qid] = AmberAnswer(qid, files.need_str(rec["response"], f"{where}: field 'response'"), rec.get("margin"))
    return out


def write_answers(path: str | Path, answers: list[AmberAnswer]) -> Path:
    """The reference's inference file (JSON array, indent 4), readable by `inference.py --inference_data`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"id": a.id, "response": a.response} for a in answers], indent=4) + "\n",
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------- metrics


def counts(pairs: list[tuple[str, str]]) -> dict:
    """Counters of `inference.py` over (truth, response) pairs: correct, truth-no, answered-no and their hits."""
    c = {"n": len(pairs), "correct": 0, "truth_no": 0, "no_hit": 0, "answered_no": 0, "answered_no_hit": 0,
         "unparsed": 0}
    for truth, response in pairs:
        c["unparsed"] += response not in ("Yes", "No")
        if truth == "yes":
            c["correct"] += response == "Yes"
        else:
            c["truth_no"] += 1
            c["correct"] += response == "No"
            c["no_hit"] += response == "No"
        if response == "No":
            c["answered_no"] += 1
            c["answered_no_hit"] += truth == "no"
    return c


def reference_metrics(c: dict, f1_eps: float = 0.0001, start: float = START) -> dict:
    """Accuracy/Precision/Recall/F1 in % as `inference.py` prints them (0.001 denominators, round(.., 1)).

    Args:
        c: `counts` output.
        f1_eps: the constant in F1's denominator (0.001 for existence, else 0.0001).
        start: what the denominators start at: 0.001, or 0.003 for attribute, which sums the state, number
            and action counters (each started at 0.001).
    """
    acc = round(c["correct"] / (c["n"] + start) * 100, 1)
    p = round(c["answered_no_hit"] / (c["answered_no"] + start) * 100, 1)
    r = round(c["no_hit"] / (c["truth_no"] + start) * 100, 1)
    f1 = round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + f1_eps) * 100, 1)
    return {"accuracy": acc, "precision": p, "recall": r, "f1": f1}


def score(questions: list[AmberQuestion], answers: dict[int, AmberAnswer]) -> dict:
    """Scores per dimension (+ attribute state/number/action, + overall when all three dimensions are present).

    Returns:
        {"overall"?, "existence"?, "attribute"?, "relation"?: {accuracy, precision, recall, f1 (in %, rounded
        as the reference prints them), counts}}, "attribute_parts", n_questions, n_unparsed.
    """
    missing = [q.id for q in questions if q.id not in answers]
    if missing:
        raise ValueError(f"{len(missing)} questions have no answer (first ids: {missing[:5]})")

    def block(qs: list[AmberQuestion], eps: float = 0.0001, start: float = START) -> dict:
        c = counts([(q.truth, answers[q.id].response) for q in qs])
        return {**reference_metrics(c, eps, start), "counts": c}

    result: dict = {}
    present = [d for d in DIMENSIONS if any(q.dimension == d for q in questions)]
    if len(present) == len(DIMENSIONS):
        result["overall"] = block(questions)
    for d in present:
        # existence alone: the reference's F1 adds 0.001 instead of 0.0001
        result[d] = block([q for q in questions if q.dimension == d], 0.001 if d == "existence" else 0.0001,
                          3 * START if d == "attribute" else START)
    if "attribute" in present:
        result["attribute_parts"] = {name: block([q for q in questions if q.type == t])
                                     for name, t in SUB_ATTRIBUTES.items()}
    unparsed = sum(answers[q.id].response not in ("Yes", "No") for q in questions)
    return {**result, "n_questions": len(questions), "n_unparsed": unparsed, "positive_class": "No"}


def score_answers_file(query_path: str | Path, annotations_path: str | Path, answers_path: str | Path,
                       unanswered: str = "error") -> dict:
    """`mmpo eval amber --questions Q --annotations A --answers R`: the questions of Q, answered in R.

    `unanswered`: "error", or "skip" to score only the questions R answers (`files.keep_answered`; a run with
    `on_bad_media: skip` writes such a file); `n_unanswered` counts those left out.
    """
    questions = read_questions(query_path, annotations_path)
    answers = read_answers(answers_path)
    questions, left_out = files.keep_answered(questions, [q.id in answers for q in questions], unanswered,
                                              answers_path, [q.id for q in questions])
    return {**score(questions, answers), "n_unanswered": left_out, "query_file": Path(query_path).name}
