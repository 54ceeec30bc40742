"""Other tools' evaluation files: lmms-eval's results/samples layout written (POPE, HallusionBench) and read back,
and VLMEvalKit prediction tables read (`mmpo eval pope|hallusionbench --answers`, detected by `detect`).

lmms-eval (`lmms_eval/loggers/evaluation_tracker.py`, `--log_samples --output_path OUT`) writes
`OUT/<model name, sanitized>/<date>_results.json` and one `<date>_samples_<task>.jsonl` per task. A samples line
is the logged example after its sanitising: `doc_id`, `target`, `filtered_resps` (the answer after the task's
filter, a list: one entry per request), `doc_hash` / `prompt_hash` / `target_hash` (sha256 hex), `input` (the
prompt), and the task's per-sample metric values; for POPE (`lmms_eval/tasks/pope/utils.py`) each of
`pope_accuracy`, `pope_precision`, `pope_recall`, `pope_f1_score`, `pope_yes_ratio` holds
`{question_id, score, prediction, ground_truth}`. The results file holds `results[task]["<metric>,none"]`.

`write_pope` (called by `mmpo eval pope --config` after the run) writes that layout under
`out_dir/lmms_eval/`, its numbers computed by lmms-eval's own rules (exact "yes"/"no" match; its yes_ratio counts
ground-truth yes, a known lmms-eval quirk, kept so the file reads as lmms-eval's would). `read_samples` turns a
samples file (lmms-eval's, or this one) into predictions matched by `question_id`, which mmpo then scores with
any parser, exactly as it scores its own answer files.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from mmpo.eval.files import read_jsonl
from mmpo.eval.pope import PopePrediction, PopeQuestion

POPE_TASKS = {"adversarial": "pope_adv", "popular": "pope_pop", "random": "pope_random"}  # lmms-eval task names
POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")
HB_METRICS = ("aAcc", "qAcc", "fAcc")  # lmms-eval hallusion_bench_image.yaml metric_list


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()  # lmms-eval's hash_string


def model_dir_name(path: str) -> str:
    """lmms-eval's `model_name_sanitized` of a model path or id."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", path)


def lmms_pope_scores(rows: list[dict]) -> dict:
    """lmms-eval's POPE aggregation (`pope_aggregate_*`) over per-sample {prediction, ground_truth} dicts."""
    tp = sum(r["prediction"] == "yes" and r["ground_truth"] == "yes" for r in rows)
    fp = sum(r["prediction"] == "yes" and r["ground_truth"] == "no" for r in rows)
    fn = sum(r["prediction"] == "no" and r["ground_truth"] == "yes" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0
    recall = tp / (tp + fn) if tp + fn else 0
    yes = sum(r["ground_truth"] == "yes" for r in rows)
    return {"pope_accuracy": sum(r["prediction"] == r["ground_truth"] for r in rows) / len(rows) if rows else 0,
            "pope_precision": precision, "pope_recall": recall,
            "pope_f1_score": 2 * precision * recall / (precision + recall) if precision + recall else 0,
            "pope_yes_ratio": yes / len(rows) if rows else 0}


def _sample(i: int, q: PopeQuestion, answer: str, prompt: str) -> dict:
    pred, gt = answer.lower().strip(), (q.label or "").lower().strip()
    per = {"question_id": q.question_id, "score": 1.0 if pred == gt else 0.0, "prediction": pred, "ground_truth": gt}
    doc = {"question_id": q.question_id, "question": q.text, "answer": gt, "image_source": Path(q.image).stem,
           "category": q.split}
    return _logged(i, doc, gt, answer, prompt, dict.fromkeys(POPE_METRICS, per))


def write_lmms(out_dir: str | Path, model_path: str, tasks: dict[str, tuple[list[dict], dict]], settings: dict,
               note: str, lower_is_better: tuple[str, ...] = ()) -> Path:
    """The one writer of lmms-eval's layout: `out_dir/lmms_eval/<model>/<date>_results.json` and one
    `<date>_samples_<task>.jsonl` per task.

    Args:
        out_dir: the evaluation's folder.
        model_path: the evaluated model (named as lmms-eval names it).
        tasks: {lmms-eval task name: (samples, {metric: value})}.
        settings: recorded under "config" (model_args, generation settings).
        note: how the values were computed (stored as `mmpo_note`).
        lower_is_better: metrics whose `higher_is_better` is false (CHAIR's).

    Returns:
        the results file.
    """
    folder = Path(out_dir) / "lmms_eval" / model_dir_name(model_path)
    folder.mkdir(parents=True, exist_ok=True)
    date_id = time.strftime("%Y%m%d_%H%M%S")
    results, n_samples = {}, {}
    for task, (samples, scores) in tasks.items():
        (folder / f"{date_id}_samples_{task}.jsonl").write_text(
            "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
        results[task] = {"alias": task, **{f"{m},none": v for m, v in scores.items()},
                         **{f"{m}_stderr,none": "N/A" for m in scores}}
        n_samples[task] = {"original": len(samples), "effective": len(samples)}
    body = {"results": results, "versions": dict.fromkeys(results, "Yaml"), "n-shot": dict.fromkeys(results, 0),
            "higher_is_better": {t: {m: m not in lower_is_better for m in s} for t, (_, s) in tasks.items()},
            "n-samples": n_samples,
            "config": {"model": "mmpo", **settings}, "date": time.time(), "mmpo_note": note}
    path = folder / f"{date_id}_results.json"
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _logged(i: int, doc: dict, target: str, answer: str, prompt: str, per_metric: dict) -> dict:
    """One samples line as lmms-eval logs it (`doc_hash` of the doc dumped with indent 2, sha256 hashes)."""
    return {"doc_id": i, "target": target, "filtered_resps": [answer],
            "doc_hash": _hash(json.dumps(doc, indent=2, ensure_ascii=False)), "prompt_hash": _hash(prompt),
            "target_hash": _hash(target), "input": prompt, **per_metric}


def write_pope(out_dir: str | Path, model_path: str, splits: dict, answers: dict, settings: dict) -> Path:
    """POPE in lmms-eval's layout (`write_lmms`): a `pope_<split>` task per split, scored by lmms-eval's rules.

    Args:
        splits: {split: (question file, questions)}.
        answers: {split: {question_id (str): (answer text, prompt)}}.
    """
    tasks = {}
    for split, (_, questions) in splits.items():
        samples = [_sample(i, q, *answers[split][str(q.question_id)]) for i, q in enumerate(questions)]
        tasks[POPE_TASKS.get(split, f"pope_{split}")] = (samples, lmms_pope_scores([s["pope_accuracy"] for s in samples]))
    return write_lmms(out_dir, model_path, tasks, settings,
                      "written by mmpo; values by lmms-eval's POPE rules (pope_yes_ratio counts ground truth)")


def write_hallusionbench(out_dir: str | Path, model_path: str, items: list[dict], predictions: list[str],
                         scores: dict, settings: dict) -> Path:
    """HallusionBench in lmms-eval's layout (`write_lmms`, task `hallusion_bench_image`).

    Each sample logs, under aAcc/qAcc/fAcc, the question's item (lmms-eval's doc without its image) with
    `model_prediction` (`evaluate_hb.py::hb_process_results`); the prompt is the question (empty pre/post prompt);
    `scores` are the {aAcc, qAcc, fAcc} fractions of lmms-eval's offline rule (`hb_aggregation_result_intern`; its
    default aggregation asks GPT-4, not run here).
    """
    samples = []
    for i, (item, pred) in enumerate(zip(items, predictions)):
        logged = {**item, "model_prediction": pred}
        samples.append(_logged(i, item, str(item["gt_answer_details"]), pred, str(item["question"]),
                               dict.fromkeys(HB_METRICS, logged)))
    return write_lmms(out_dir, model_path, {"hallusion_bench_image": (samples, scores)}, settings,
                      "written by mmpo; values by lmms-eval's offline keyword rule (hb_aggregation_result_intern), "
                      "as fractions; its default GPT-4 judge is not run")


def detect(path: str | Path) -> str | None:
    """Which other tool wrote an answers file, from its fields/columns: "lmms-eval" (a samples JSONL),
    "vlmevalkit" (a prediction table), or None (mmpo's or the benchmark's own layout)."""
    if is_samples_file(path):
        return "lmms-eval"
    if is_vlmevalkit_table(path):
        return "vlmevalkit"
    return None


def lmms_chair_scores(rows: list[dict]) -> dict:
    """lmms-eval's coco_cap_chair aggregation (`coco_cap_chair_aggregate_results_chair_i/_s`, in %) over per-sample
    {answer: ground-truth classes, pred: mentioned classes}. 0 where nothing is mentioned (lmms-eval divides by 0)."""
    mentions = sum(len(r["pred"]) for r in rows)
    halluc = [sum(c not in r["answer"] for c in r["pred"]) for r in rows]
    return {"coco_cap_chair_i": 100 * sum(halluc) / mentions if mentions else 0.0,
            "coco_cap_chair_s": 100 * sum(h > 0 for h in halluc) / len(rows) if rows else 0.0}


def write_chair(out_dir: str | Path, model_path: str, captions: dict[int, str], gt: dict[int, list[str]],
                mentioned: dict[int, list[str]], prompt: str, settings: dict) -> Path:
    """CHAIR in lmms-eval's layout (`write_lmms`, task `coco_cap_chair`).

    Each sample logs {answer: the image's ground-truth classes, pred: the classes its caption mentions, image_id}
    under each of `coco_cap_chair_i`, `coco_cap_chair_s`, `coco_cap_recall` (`coco_cap_chair_process_result`); the
    mentions are mmpo's (`eval.chair`, with the run's lemmatizer), the results its chair_i/chair_s in % as lmms-eval
    aggregates them.
    """
    samples = []
    for i, (image_id, caption) in enumerate(captions.items()):
        per = {"answer": gt[image_id], "pred": mentioned[image_id], "image_id": image_id}
        samples.append(_logged(i, {"question_id": str(image_id), "gt_object": gt[image_id]}, json.dumps(gt[image_id]),
                               caption, prompt, dict.fromkeys(CHAIR_METRICS, per)))
    scores = lmms_chair_scores([s["coco_cap_chair_i"] for s in samples])
    return write_lmms(out_dir, model_path, {"coco_cap_chair": (samples, scores)}, settings,
                      "written by mmpo; mentions by mmpo's CHAIR words (see its metrics.json lemmatizer), values by "
                      "lmms-eval's aggregation (%)", lower_is_better=tuple(scores))


def is_samples_file(path: str | Path) -> bool:
    """An lmms-eval samples JSONL: its first record has `doc_id` and `filtered_resps` (or `resps`)."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open("rb") as f:  # bytes: a bad byte further on is the layout's own reader's to report, by line
        first = next((line for line in f if line.strip()), b"")
    try:
        rec = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(rec, dict) and "doc_id" in rec and ("filtered_resps" in rec or "resps" in rec)


def _first_text(value, where: str) -> str:
    """The response string inside lmms-eval's (possibly nested) response lists."""
    while isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'filtered_resps': expected a response string, got {value!r}")
    return value


def read_samples(path: str | Path, questions: list[PopeQuestion]) -> list[PopePrediction]:
    """Predictions from an lmms-eval POPE samples file, matched to `questions` by question_id.

    The id comes from the sample's `pope_accuracy` entry (or its `doc`, where a version keeps it); the answer is the
    first filtered response (lmms-eval's filter "none" keeps the raw text).

    Raises:
        ValueError: naming file:line for a record without an id or a response, an id answered twice or not in the
            question file, and the questions left without an answer.
    """
    path = Path(path)
    wanted = {str(q.question_id) for q in questions}
    found: dict[str, str] = {}
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        qid = (rec.get("pope_accuracy") or {}).get("question_id", (rec.get("doc") or {}).get("question_id"))
        if qid is None:
            raise ValueError(f"{where}: no question_id (expected in 'pope_accuracy' or 'doc'): not a POPE samples file?")
        qid = str(qid)
        if qid in found:
            raise ValueError(f"{where}: question_id {qid!r} answered twice")
        if qid not in wanted:
            raise ValueError(f"{where}: question_id {qid!r} is not in the question file")
        found[qid] = _first_text(rec.get("filtered_resps", rec.get("resps")), where)
    missing = [q.question_id for q in questions if str(q.question_id) not in found]
    if missing:
        raise ValueError(f"{path}: {len(missing)} questions have no answer (first ids: {missing[:5]})")
    return [PopePrediction(q.question_id, found[str(q.question_id)], q.split) for q in questions]


# ---- HallusionBench samples (lmms-eval `hallusion_bench_image`) --------------------------------------------------
# `lmms_eval/tasks/hallusion_bench/evaluate_hb.py::hb_process_results` logs, under each metric (aAcc, qAcc, fAcc),
# the doc without its image plus `model_prediction`: category, subcategory, set_id, figure_id, question_id are there.

def read_hb_samples(path: str | Path) -> dict[tuple, str]:
    """{HallusionBench question key: prediction} from an lmms-eval `hallusion_bench_image` samples file.

    The key comes from the sample's `aAcc` entry (or its `doc`); the prediction is the entry's `model_prediction`,
    else the first filtered response. Raises ValueError naming file:line for a record without the ids or answered
    twice.
    """
    path = Path(path)
    out: dict[tuple, str] = {}
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        entry = next((rec[m] for m in ("aAcc", "qAcc", "fAcc", "doc") if isinstance(rec.get(m), dict)), None)
        if entry is None or not all(k in entry for k in HB_KEY):
            raise ValueError(f"{where}: no HallusionBench ids {HB_KEY} (expected in 'aAcc' or 'doc'): "
                             "not a hallusion_bench_image samples file?")
        key = tuple(str(entry[k]) for k in HB_KEY)
        if key in out:
            raise ValueError(f"{where}: question {'_'.join(key)} answered twice")
        text = entry.get("model_prediction")
        out[key] = text if isinstance(text, str) else _first_text(rec.get("filtered_resps", rec.get("resps")), where)
    return out


def read_chair_samples(path: str | Path) -> dict[int, str]:
    """{image_id: caption} from an lmms-eval `coco_cap_chair` samples file.

    `lmms_eval/tasks/coco_cap_chair/utils.py::coco_cap_chair_process_result` logs {answer, pred, image_id} under
    each metric (`coco_cap_chair_i`, ...; image_id is the doc's `question_id`); the caption is the first filtered
    response. Raises ValueError naming file:line for a record without an image id, or one answered twice.
    """
    path = Path(path)
    out: dict[int, str] = {}
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        entry = next((rec[m] for m in CHAIR_METRICS if isinstance(rec.get(m), dict)), None)
        image_id = entry.get("image_id") if entry else (rec.get("doc") or {}).get("question_id")
        if image_id is None:
            raise ValueError(f"{where}: no image_id (expected in 'coco_cap_chair_i' or doc 'question_id'): "
                             "not a coco_cap_chair samples file?")
        try:
            image_id = int(image_id)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: image_id {image_id!r} is not an integer") from None
        if image_id in out:
            raise ValueError(f"{where}: image_id {image_id} answered twice")
        out[image_id] = _first_text(rec.get("filtered_resps", rec.get("resps")), where)
    return out


CHAIR_METRICS = ("coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall")  # process_result's keys


HB_KEY = ("category", "subcategory", "set_id", "figure_id", "question_id")


# ---- VLMEvalKit prediction tables -----------------------------------------------------------------------------------
# `vlmeval/inference.py::infer_data_job` writes `<work_dir>/<model>_<dataset>.xlsx` (or .tsv): the dataset's TSV rows
# (`index`, `question`, `answer` "Yes"/"No", `category`, `l2-category`, ...; `image` dropped) plus `prediction`.
# Items: HallusionBench (`vlmeval/dataset/utils/yorn.py::Hallusion_rating`) reads set_id, figure_id, question_id as
# the 4th-6th "_" fields of `index`, `category` is VD/VS and `l2-category` the subcategory; POPE (`POPE_rating`)
# lists every split a question belongs to in `category` ("adversarial,popular") and has no POPE question_id, so a
# row is matched to a question file by split, image name (`image_path`, where the table has it) and question text.

VLMEVALKIT_COLUMNS = ("index", "prediction")


def is_vlmevalkit_table(path: str | Path) -> bool:
    """A VLMEvalKit prediction table: a .tsv/.xlsx whose header has `index` and `prediction`."""
    path = Path(path)
    if path.suffix == ".xlsx":
        return path.is_file()
    if path.suffix != ".tsv" or not path.is_file():
        return False
    with path.open("rb") as f:
        header = f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    return all(c in header for c in VLMEVALKIT_COLUMNS)


def read_vlmevalkit_table(path: str | Path, need: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, {column: text}) of a VLMEvalKit prediction table (TSV; .xlsx needs openpyxl, not a dependency).

    Raises:
        ValueError: naming the file for an .xlsx (save it as .tsv), a missing column in `need`, and file:line for a
            row whose cell count differs from the header's.
    """

    path = Path(path)
    if path.suffix == ".xlsx":
        raise ValueError(f"{path}: .xlsx tables need openpyxl, which mmpo does not install; save the table as .tsv "
                         "(tab-separated, same columns) and pass that")
    try:
        return _table_rows(path, need)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start} of a read block); "
                         "VLMEvalKit writes UTF-8") from None


def _table_rows(path: Path, need: tuple[str, ...]) -> list[tuple[int, dict]]:
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, [])
        missing = [c for c in (*VLMEVALKIT_COLUMNS, *need) if c not in header]
        if missing:
            raise ValueError(f"{path}:1: column(s) {missing} missing (header: {header})")
        rows = []
        for cells in reader:
            if not any(cells):
                continue
            if len(cells) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(cells)} cells, the header has {len(header)}")
            rows.append((reader.line_num, dict(zip(header, cells))))
    return rows


def read_hb_table(path: str | Path) -> dict[tuple, str]:
    """{HallusionBench question key: prediction} from VLMEvalKit's `<model>_HallusionBench` table (ids as
    `Hallusion_rating` reads them: `index`'s 4th-6th "_" fields)."""
    out: dict[tuple, str] = {}
    for n, row in read_vlmevalkit_table(path, ("category", "l2-category")):
        parts = row["index"].split("_")
        if len(parts) < 6:
            raise ValueError(f"{path}:{n}: index {row['index']!r}: expected category_subcategory_x_set_figure_question "
                             "(VLMEvalKit's HallusionBench index)")
        key = (row["category"], row["l2-category"], parts[3], parts[4], parts[5])
        if key in out:
            raise ValueError(f"{path}:{n}: question {'_'.join(key)} answered twice")
        out[key] = row["prediction"]
    return out


def read_pope_table(path: str | Path, questions: list[PopeQuestion]) -> list[PopePrediction]:
    """Predictions for `questions` (one split) from VLMEvalKit's `<model>_POPE` table.

    A row answers a question when its `category` lists the question's split, its question text is the same, and
    (when the table has `image_path`) its image file's stem is the question's. Rows of other splits are ignored.

    Raises:
        ValueError: naming file:line for a row matching two questions or a question answered twice, and the file
            for questions left without an answer.
    """
    path = Path(path)
    by_text: dict[tuple, list[PopeQuestion]] = {}
    for q in questions:
        by_text.setdefault((q.split, q.text.strip()), []).append(q)
    found: dict[str, str] = {}
    for n, row in read_vlmevalkit_table(path, ("question", "category")):
        for split in row["category"].split(","):
            cands = by_text.get((split.strip(), row["question"].strip()), [])
            if row.get("image_path"):
                cands = [q for q in cands if Path(q.image).stem == Path(row["image_path"]).stem]
            if len(cands) > 1:
                raise ValueError(f"{path}:{n}: matches {len(cands)} questions (ids {[q.question_id for q in cands]}); "
                                 "the table needs an image_path column to tell them apart")
            if cands:
                qid = str(cands[0].question_id)
                if qid in found:
                    raise ValueError(f"{path}:{n}: question_id {qid!r} answered twice")
                found[qid] = row["prediction"]
    missing = [q.question_id for q in questions if str(q.question_id) not in found]
    if missing:
        raise ValueError(f"{path}: {len(missing)} questions have no answer (first ids: {missing[:5]})")
    return [PopePrediction(q.question_id, found[str(q.question_id)], q.split) for q in questions]
