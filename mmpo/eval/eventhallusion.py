"""EventHallusion (Stevetich/EventHallusion @7396e04): yes/no questions on video events, scored as its `eval.py`.

Files: `questions/{entire,interleave,misleading}_questions.json`, each a JSON array of videos
`{"id": "entire_001", "category", "length", "event_info": {...}, "questions": [{"type", "question", "answer"}]}`
with answers "Yes." / "No." (entire and misleading: all "No."; interleave: all "Yes."). Videos (Google Drive, not
in git) sit at `<video_root>/<split>/<id>.mp4` (`run_inference.py`).

Protocol (`inference_template/videollava/eval/self_bench/run_inference.py`): each question is asked on its video
as `question + "\\nPlease answer yes or no:"`, greedy, max_new_tokens 1024. The predictions file is
`{split: {video_id: {...video fields, "qa": [{"question", "answer", "prediction"}], "desc", "judgement"?}}}`.

Scoring (`eval.py`): `extract_pred` lower-cases the prediction and maps a prefix "yes" to "Yes." and "no" to
"No." (so "Not sure" is "No." and "yesterday" is "Yes."), anything else to None; a question is correct when
that equals its answer exactly. Accuracy per split = correct / questions, overall = pooled over the splits
evaluated; "not matching rate" = share of predictions that are None. The description score needs a GPT-4o
judgement per video (`gpt4o_judge.py`); when the file has `judgement`s, `eval.py`'s rule for them (strip
"*", lower-case, prefix yes/no) is applied too. Pure Python (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmpo.eval import files

SPLITS = ("entire", "interleave", "misleading")
PROMPT_SUFFIX = "\nPlease answer yes or no:"  # run_inference.py answer_prompt


@dataclass(frozen=True)
class EHQuestion:
    """One question: split, video id, its position among the video's questions, text and answer."""

    split: str
    video_id: str
    index: int
    question: str
    answer: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.split, self.video_id, str(self.index)

    def prompt(self) -> str:
        return self.question + PROMPT_SUFFIX


def extract_pred(prediction: str | None) -> str | None:
    """`eval.py::extract_pred`: "Yes." / "No." by the lower-cased prefix, else None."""
    if prediction is None:
        return None
    text = prediction.lower()
    if text.startswith("yes"):
        return "Yes."
    if text.startswith("no"):
        return "No."
    return None


def extract_judgement(text: str) -> str | None:
    """`eval.py::extract_yes_no_gpt`: drop "*", lower-case, prefix yes / no."""
    text = text.replace("*", "").lower()
    return "yes" if text.startswith("yes") else "no" if text.startswith("no") else None


def split_from_name(path: str | Path) -> str:
    """The split a file name names: `<split>_questions.json` (a prefix before the split is allowed)."""
    name = Path(path).name
    return next((s for s in SPLITS if f"{s}_questions" in name), "")


def read_questions(path: str | Path, split: str | None = None) -> list[EHQuestion]:
    """Questions of one split file, in file order (split from the file name unless given); video ids unique."""
    path = Path(path)
    split = split or split_from_name(path)
    if split not in SPLITS:
        raise ValueError(f"{path}: cannot tell the split (name the file <split>_questions.json, split in {SPLITS})")
    data = files.load_array(path, "videos")
    out, seen = [], {}
    for i, video in enumerate(data):
        where = f"{path}: item {i}"
        video = files.need_object(video, where)
        if "id" not in video or "questions" not in video:
            raise ValueError(f"{where}: fields 'id' and 'questions' are required")
        vid = str(video["id"])
        if vid in seen:  # its questions would share keys with the first one's: counted for answers they lack
            raise ValueError(f"{where}: video id {vid!r} appears twice (first as item {seen[vid]})")
        seen[vid] = i
        if not isinstance(video["questions"], list):
            raise ValueError(f"{where}: field 'questions': expected a JSON array, got a JSON "
                             f"{files.json_type(video['questions'])}")
        for j, q in enumerate(video["questions"]):
            qwhere = f"{where} question {j}"
            q = files.need_object(q, qwhere)
            if q.get("answer") not in ("Yes.", "No."):
                raise ValueError(f"{qwhere}: answer must be 'Yes.' or 'No.', got {q.get('answer')!r}")
            if "question" not in q:
                raise ValueError(f"{qwhere}: field 'question': missing")
            out.append(EHQuestion(split, vid, j, files.need_str(q["question"], f"{qwhere}: field 'question'"),
                                  q["answer"]))
    return out


def score(questions: list[EHQuestion], predictions: dict[tuple, str | None],
          judgements: dict[tuple[str, str], str] | None = None) -> dict:
    """QA accuracy per split and overall (+ description accuracy when judgements are given).

    Args:
        questions: the questions (any splits).
        predictions: {question.key: raw prediction}.
        judgements: optional {(split, video_id): GPT judgement text}.

    Returns:
        {"splits": {split: {accuracy, correct, n, not_matching}}, accuracy, correct, n, not_matching_rate, ...}.
    """
    missing = [q.key for q in questions if q.key not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction (first: {missing[:3]})")
    if not questions:
        raise ValueError("no questions to score")
    splits: dict[str, dict] = {}
    for q in questions:
        s = splits.setdefault(q.split, {"correct": 0, "n": 0, "not_matching": 0})
        pred = extract_pred(predictions[q.key])
        s["n"] += 1
        s["correct"] += pred == q.answer
        s["not_matching"] += pred is None
    for s in splits.values():
        s["accuracy"] = s["correct"] / s["n"]
    n = sum(s["n"] for s in splits.values())
    correct = sum(s["correct"] for s in splits.values())
    result = {"accuracy": correct / n, "correct": correct, "n": n,
              "not_matching_rate": sum(s["not_matching"] for s in splits.values()) / n,
              "splits": splits, "prompt_suffix": PROMPT_SUFFIX}
    if judgements:
        videos = sorted({(q.split, q.video_id) for q in questions})
        desc = [extract_judgement(judgements[v]) if v in judgements else None for v in videos]
        result["description_accuracy"] = sum(d == "yes" for d in desc) / len(videos)
    return result


def read_predictions(path: str | Path) -> tuple[dict[tuple, str | None], dict[tuple[str, str], str]]:
    """The reference predictions file -> ({question key: prediction}, {(split, video): judgement}).

    `{split: {video_id: {..., "qa": [{"prediction"}], "judgement"?}}}`; a video id twice in a split is refused
    (JSON would keep the last one silently), as is a prediction that is not a string (or null).
    """
    path = Path(path)
    data = files.load_json(path, unique_keys=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a JSON object {{split: {{video_id: ...}}}} (eval.py's input), got a "
                         f"JSON {files.json_type(data)}")
    preds, judgements = {}, {}
    for split, videos in data.items():
        if not isinstance(videos, dict):
            raise ValueError(f"{path}: split {split!r}: expected a JSON object of videos, got a JSON "
                             f"{files.json_type(videos)}")
        for vid, info in videos.items():
            where = f"{path}: {split}/{vid}"
            info = files.need_object(info, where)
            qa = info.get("qa", [])
            if not isinstance(qa, list):
                raise ValueError(f"{where}: field 'qa': expected a JSON array, got a JSON {files.json_type(qa)}")
            for j, item in enumerate(qa):
                item = files.need_object(item, f"{where} qa[{j}]")
                preds[(split, str(vid), str(j))] = files.need_str(item.get("prediction"),
                                                                  f"{where} qa[{j}]: field 'prediction'", True)
            if "judgement" in info:
                judgements[(split, str(vid))] = files.need_str(info["judgement"], f"{where}: field 'judgement'")
    return preds, judgements


def write_predictions(path: str | Path, question_files: dict[str, Path], predictions: dict[tuple, str]) -> Path:
    """The reference predictions layout (each video's fields + `qa`), readable by `eval.py` once judged."""
    out: dict = {}
    for split, f in question_files.items():
        out[split] = {}
        for video in files.load_array(Path(f), "videos"):
            vid = str(video["id"])
            qa = [{"question": q["question"], "answer": q["answer"], "prediction": predictions[(split, vid, str(j))]}
                  for j, q in enumerate(video["questions"]) if (split, vid, str(j)) in predictions]
            if qa:
                out[split][vid] = {**video, "qa": qa}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=4) + "\n", encoding="utf-8")
    return path


def score_answers_file(question_paths: list[str | Path], predictions_path: str | Path,
                       unanswered: str = "error") -> dict:
    """`mmpo eval eventhallusion --questions F... --answers P`: score P's predictions for the given splits.

    `unanswered`: "error", or "skip" to score only the questions P answers (`files.keep_answered`).
    """
    questions = [q for p in question_paths for q in read_questions(p)]
    preds, judgements = read_predictions(predictions_path)
    questions, left_out = files.keep_answered(questions, [q.key in preds for q in questions], unanswered,
                                              predictions_path, ["/".join(q.key) for q in questions])
    return {**score(questions, preds, judgements or None), "n_unanswered": left_out,
            "question_files": [Path(p).name for p in question_paths]}
