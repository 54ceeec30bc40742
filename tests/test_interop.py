"""lmms-eval's results/samples layout (mmpo/eval/interop.py): `mmpo eval pope --config` writes it, and
`mmpo eval pope --answers` reads lmms-eval samples files, scoring them exactly as mmpo's own answer files."""

from __future__ import annotations

import json

import pytest
from helpers import COLORS, SAMPLES, color_image, color_question, tiny_model

from mmpo.eval import chair, hallusionbench, pope, pope_metrics
from mmpo.eval import cli as eval_cli
from mmpo.eval.commands import write_chair_lmms


@pytest.fixture(scope="module")
def pope_run(tmp_path_factory):
    """A tiny llava's generated (free-text, so tricky) answers to 8 POPE questions, written by `mmpo eval pope`."""
    root = tmp_path_factory.mktemp("interop")
    (root / "img").mkdir()
    lines = []
    for i, c in enumerate(COLORS):
        color_image(c, seed=i).save(root / "img" / f"{c}.png")
        lines += [{"question_id": 2 * i + j + 1, "image": f"{c}.png", "text": color_question(o),
                   "label": "yes" if o == c else "no"} for j, o in enumerate((c, COLORS[(i + 1) % 4]))]
    (root / "coco_pope_random.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "pope.yaml").write_text(f"questions: [{root / 'coco_pope_random.json'}]\nimage_root: {root / 'img'}\n"
                                    "mode: generate\nmax_new_tokens: 3\nbatch_size: 4\n")
    assert eval_cli.main("pope", ["--config", str(root / "pope.yaml"), f"model.path={tiny_model('llava', root)}",
                              "model.device=cpu", f"out_dir={root / 'out'}"]) == 0
    return root


def test_the_run_writes_lmms_eval_results_and_samples_by_its_rules(pope_run):
    (folder,) = (pope_run / "out" / "lmms_eval").iterdir()
    assert folder.name.endswith("llava-0")  # lmms-eval's sanitized model name ("/" -> "__")
    (results,) = folder.glob("*_results.json")
    (samples,) = folder.glob("*_samples_pope_random.jsonl")
    assert results.name.removesuffix("_results.json") == samples.name.removesuffix("_samples_pope_random.jsonl")
    questions = pope.read_questions(pope_run / "coco_pope_random.json")
    answers = pope.read_answers(pope_run / "out" / "answers_random.jsonl", questions)
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [r["filtered_resps"] for r in rows] == [[a.answer] for a in answers]
    assert {"doc_id", "target", "doc_hash", "prompt_hash", "target_hash", "input", "pope_f1_score"} <= rows[0].keys()
    # lmms-eval's rule: exact "yes"/"no" after lower() and strip(); its yes_ratio counts ground-truth yes
    exact = [a.answer.lower().strip() == q.label for q, a in zip(questions, answers)]
    scores = json.loads(results.read_text())["results"]["pope_random"]
    assert scores["pope_accuracy,none"] == sum(exact) / len(exact)
    assert scores["pope_yes_ratio,none"] == 0.5


@pytest.mark.parametrize("parser", sorted(pope.PARSERS))
def test_a_samples_file_scores_as_the_same_answers_in_mmpos_layout(pope_run, parser, tmp_path):
    (samples,) = (pope_run / "out" / "lmms_eval").glob("*/*_samples_pope_random.jsonl")
    questions = str(pope_run / "coco_pope_random.json")
    own = pope_metrics.score_answers_file(questions, pope_run / "out" / "answers_random.jsonl", parser)
    out = tmp_path / "m.json"
    assert eval_cli.main("pope", ["--questions", questions, "--answers", str(samples), "--parser", parser,
                              "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(own))


def test_samples_as_other_lmms_eval_versions_write_them(pope_run, tmp_path):
    """Responses nested one list deeper (per request), the id only in `doc`, lines in another order."""
    questions = pope.read_questions(pope_run / "coco_pope_random.json")
    texts = ["Yes.", "no", "There is no square.", "yes", "NO", "Yes, there is", "", "no"]
    rows = [{"doc_id": i, "doc": {"question_id": q.question_id, "question": q.text}, "target": q.label,
             "resps": [[t]], "filtered_resps": [[t]]} for i, (q, t) in enumerate(zip(questions, texts))]
    samples = tmp_path / "20260101_000000_samples_pope_random.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    answers = tmp_path / "answers.jsonl"
    pope.write_answers(answers, [pope.PopePrediction(q.question_id, t) for q, t in zip(questions, texts)])
    for parser in pope.PARSERS:
        assert (pope_metrics.score_samples_file(str(pope_run / "coco_pope_random.json"), str(samples), parser)
                == pope_metrics.score_answers_file(pope_run / "coco_pope_random.json", answers, parser))


def test_a_sample_without_a_question_id_is_an_error_naming_the_line(pope_run, tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"doc_id": 0, "filtered_resps": ["yes"], "pope_accuracy": {"question_id": 1}})
                       + "\n" + json.dumps({"doc_id": 1, "filtered_resps": ["no"]}) + "\n")
    with pytest.raises(ValueError, match=rf"{samples}:2: no question_id"):
        pope_metrics.score_samples_file(str(pope_run / "coco_pope_random.json"), str(samples), "official")


# ---- VLMEvalKit prediction tables (vlmeval/inference.py: the dataset's TSV rows, `image` dropped, + prediction) ----

def _tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("parser", sorted(pope.PARSERS))
def test_a_vlmevalkit_pope_table_scores_as_the_same_answers_in_the_other_layouts(pope_run, parser, tmp_path):
    """VLMEvalKit's POPE table lists every split of a question in `category` and has no POPE id: rows are matched
    by split, image name and question text; a row of another split alone is ignored."""
    questions = pope.read_questions(pope_run / "coco_pope_random.json")
    answers = pope.read_answers(pope_run / "out" / "answers_random.jsonl", questions)
    rows = [[i, q.text, q.label.capitalize(), "random,popular" if i % 2 else "random", f"images/{q.image}", a.answer]
            for i, (q, a) in enumerate(zip(questions, answers))]
    rows.append([99, questions[0].text, "Yes", "adversarial", "images/other.png", "yes"])
    table = _tsv(tmp_path / "llava_POPE.tsv", ["index", "question", "answer", "category", "image_path", "prediction"],
                 reversed(rows))
    (samples,) = (pope_run / "out" / "lmms_eval").glob("*/*_samples_pope_random.jsonl")
    q_file = str(pope_run / "coco_pope_random.json")
    own = pope_metrics.score_answers_file(q_file, pope_run / "out" / "answers_random.jsonl", parser)
    for answers_file in (table, samples):
        out = tmp_path / "m.json"
        assert eval_cli.main("pope", ["--questions", q_file, "--answers", str(answers_file), "--parser", parser,
                                  "--out", str(out)]) == 0
        assert json.loads(out.read_text()) == json.loads(json.dumps(own)), answers_file


def test_a_vlmevalkit_table_without_image_names_that_cannot_tell_questions_apart_is_an_error(pope_run, tmp_path):
    questions = pope.read_questions(pope_run / "coco_pope_random.json")
    same = [q for q in questions if q.text == questions[0].text]
    assert len(same) > 1  # the fixture asks the same question about several images
    table = _tsv(tmp_path / "m_POPE.tsv", ["index", "question", "answer", "category", "prediction"],
                 [[0, "x", "No", "random", "no"], [1, questions[0].text, "Yes", "random", "yes"]])
    with pytest.raises(ValueError, match=rf"{table}:3: matches {len(same)} questions"):
        pope_metrics.score_samples_file(str(pope_run / "coco_pope_random.json"), str(table), "official")


def test_an_xlsx_table_names_the_file_and_asks_for_tsv(pope_run, tmp_path):
    table = tmp_path / "m_POPE.xlsx"
    table.write_bytes(b"PK")
    with pytest.raises(ValueError, match=rf"{table}: .xlsx tables need openpyxl"):
        pope_metrics.score_samples_file(str(pope_run / "coco_pope_random.json"), str(table), "official")


HB_SAMPLE = SAMPLES / "hallusionbench_sample.json"
HB_PREDICTIONS = ["Yes, same size.", "No.", "The eyes deceive: no.", "Yes and no.", "YES", "Not really.", "no",
                  "Yes.", "yes", "no", "Nope", "I cannot tell.", "Yes", "yes, Arizona", "No", "No", "Yes", "Yes",
                  "No, it is 3.14.", "yes"]


@pytest.mark.parametrize("parser", hallusionbench.PARSERS)
def test_hallusionbench_from_lmms_eval_samples_and_a_vlmevalkit_table_scores_as_the_reference_layout(parser, tmp_path):
    """The image questions (what both harnesses ask) answered alike in three layouts give identical metrics:
    lmms-eval logs the doc (no image) + model_prediction under aAcc/qAcc/fAcc (evaluate_hb.py::hb_process_results);
    VLMEvalKit's index carries set/figure/question ids as its 4th-6th "_" fields (yorn.py::Hallusion_rating)."""
    items = json.loads(HB_SAMPLE.read_text())
    asked = [(it, p) for it, p in zip(items, HB_PREDICTIONS) if it.get("filename")]
    own = tmp_path / "HallusionBench_result.json"
    own.write_text(json.dumps([{**it, "model_prediction": p} for it, p in asked]))
    samples = tmp_path / "20260101_000000_samples_hallusion_bench_image.jsonl"
    samples.write_text("".join(json.dumps({"doc_id": i, "target": it["gt_answer_details"], "filtered_resps": [p],
                                           **dict.fromkeys(("aAcc", "qAcc", "fAcc"), {**it, "model_prediction": p})})
                               + "\n" for i, (it, p) in enumerate(reversed(asked))))
    table = _tsv(tmp_path / "llava_HallusionBench.tsv",
                 ["index", "question", "answer", "category", "l2-category", "image_path", "prediction"],
                 [["_".join(str(it[k]) for k in ("category", "subcategory", "visual_input", "set_id", "figure_id",
                                                  "question_id")),
                   it["question"], "Yes" if it["gt_answer"] == "1" else "No", it["category"], it["subcategory"],
                   it["filename"], p] for it, p in asked])
    expected = hallusionbench.score_answers_file(HB_SAMPLE, own, parser)
    # the excerpt's no-image questions are left out, as the harnesses leave them
    assert expected["n_not_asked_no_image"] == len(items) - len(asked) > 0
    for answers_file in (samples, table):
        out = tmp_path / "m.json"
        assert eval_cli.main("hallusionbench", ["--questions", str(HB_SAMPLE), "--answers", str(answers_file),
                                            "--parser", parser, "--out", str(out)]) == 0
        assert json.loads(out.read_text()) == json.loads(json.dumps(expected)), answers_file


def test_a_hallusionbench_sample_without_its_ids_is_an_error_naming_the_line(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"doc_id": 0, "filtered_resps": ["yes"], "aAcc": {"category": "VD"}}) + "\n")
    with pytest.raises(ValueError, match=rf"{samples}:1: no HallusionBench ids"):
        eval_cli.main("hallusionbench", ["--questions", str(HB_SAMPLE), "--answers", str(samples)])


def test_a_hallusionbench_run_writes_lmms_eval_samples_that_score_as_its_answers(tmp_path):
    """`mmpo eval hallusionbench --config` writes lmms-eval's layout through the same writer as POPE; the samples
    file, read back by `--answers`, scores exactly as the run's answers.json, and the results file holds lmms-eval's
    offline-rule values."""
    items = json.loads(HB_SAMPLE.read_text())
    for i, name in enumerate(sorted({it["filename"] for it in items if "filename" in it})):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        color_image(COLORS[i % 4], seed=i).save(tmp_path / name)
    (tmp_path / "hb.yaml").write_text(f"questions: {HB_SAMPLE}\nimage_root: {tmp_path}\nmax_new_tokens: 3\n"
                                      "batch_size: 8\nparser: vlmevalkit\n")
    out = tmp_path / "out"
    assert eval_cli.main("hallusionbench", ["--config", str(tmp_path / "hb.yaml"), "model.device=cpu",
                                        f"model.path={tiny_model('llava', tmp_path)}", f"out_dir={out}"]) == 0
    (results,) = (out / "lmms_eval").glob("*/*_results.json")
    (samples,) = (out / "lmms_eval").glob("*/*_samples_hallusion_bench_image.jsonl")
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    answered = json.loads((out / "answers.json").read_text())
    assert [r["filtered_resps"] for r in rows] == [[a["model_prediction"]] for a in answered]
    assert rows[0]["aAcc"] == rows[0]["qAcc"] == answered[0] and rows[0]["target"] == answered[0]["gt_answer_details"]
    lmms = hallusionbench.score_answers_file(HB_SAMPLE, out / "answers.json", "lmms")
    written = json.loads(results.read_text())["results"]["hallusion_bench_image"]
    assert {k: written[f"{k},none"] for k in ("aAcc", "qAcc", "fAcc")} == {k: lmms[k] for k in ("aAcc", "qAcc", "fAcc")}
    for parser in hallusionbench.PARSERS:
        m = tmp_path / f"{parser}.json"
        assert eval_cli.main("hallusionbench", ["--questions", str(HB_SAMPLE), "--answers", str(samples), "--parser",
                                            parser, "--out", str(m)]) == 0
        own = hallusionbench.score_answers_file(HB_SAMPLE, out / "answers.json", parser)
        assert json.loads(m.read_text()) == json.loads(json.dumps(own))


def test_chair_from_lmms_eval_samples_scores_as_the_same_captions_in_mmpos_layout(tmp_path):
    """coco_cap_chair logs {answer, pred, image_id} under each metric (utils.py::coco_cap_chair_process_result);
    the caption is the filtered response. Same captions, same metrics."""
    captions = {139: "A man on a motorcycle next to a dog and a dog.", 285: "Wine glasses on a dining table.",
                632: "A toilet with its seat up."}
    own = tmp_path / "captions.jsonl"
    own.write_text("".join(json.dumps({"image_id": i, "caption": c}) + "\n" for i, c in captions.items()))
    samples = tmp_path / "20260101_000000_samples_coco_cap_chair.jsonl"
    samples.write_text("".join(json.dumps({"doc_id": n, "target": [], "filtered_resps": [c], **dict.fromkeys(
        ("coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall"), {"answer": [], "pred": [], "image_id": i})})
        + "\n" for n, (i, c) in enumerate(reversed(captions.items()))))
    args = ["--annotations", str(SAMPLES / "chair_coco_instances_sample.json"), "--captions",
            str(SAMPLES / "chair_coco_captions_sample.json"), "--lemmatizer", "table"]
    for answers in (own, samples):
        assert eval_cli.main("chair", [*args, "--answers", str(answers), "--out", str(tmp_path / f"{answers.stem}.json")]) == 0
    m = json.loads((tmp_path / f"{samples.stem}.json").read_text())
    assert m == json.loads((tmp_path / "captions.json").read_text())
    assert (m["n_mentions"], m["n_hallucinated"]) == (7, 2)  # tests/test_chair_amber_eventhallusion.py's worked count


def test_a_chair_run_is_written_in_lmms_eval_layout_by_its_aggregation_and_reads_back(tmp_path):
    """`write_chair_lmms` (what `mmpo eval chair --config` calls after the run) on a finished run's answers.jsonl:
    lmms-eval's chair_i / chair_s (in %) over the logged {answer, pred}, and the samples file scores as answers.jsonl."""
    from mmpo.config import ModelConfig
    from mmpo.eval.chair_runner import ChairEvalConfig

    out = tmp_path / "run"
    out.mkdir()
    # U+2028 is written raw (ensure_ascii=False) and is no line break in JSONL: the samples file must read back whole
    captions = {139: "A man on a motorcycle next to a dog and a dog.", 285: "Wine glasses on a dining table.\u2028",
                632: "A toilet with its seat up."}
    (out / "answers.jsonl").write_text("".join(json.dumps({"image_id": i, "caption": c}, ensure_ascii=False) + "\n"
                                               for i, c in captions.items()), encoding="utf-8")
    cfg = ChairEvalConfig(model=ModelConfig(path="org/captioner"), lemmatizer="table", out_dir=str(out),
                          annotations=str(SAMPLES / "chair_coco_instances_sample.json"),
                          captions=str(SAMPLES / "chair_coco_captions_sample.json"))
    own = chair.score_answers_file(cfg.annotations, out / "answers.jsonl", cfg.captions, "table")
    results = write_chair_lmms(cfg, own)
    assert results.parent.name == "org__captioner"
    written = json.loads(results.read_text())
    # 7 mentions, 2 hallucinated (the dogs of 139), 1 of 3 captions (tests/test_chair_amber_eventhallusion.py)
    assert written["results"]["coco_cap_chair"]["coco_cap_chair_i,none"] == 100 * 2 / 7
    assert written["results"]["coco_cap_chair"]["coco_cap_chair_s,none"] == 100 * 1 / 3
    assert written["higher_is_better"]["coco_cap_chair"] == {"coco_cap_chair_i": False, "coco_cap_chair_s": False}
    (samples,) = results.parent.glob("*_samples_coco_cap_chair.jsonl")
    rows = [json.loads(x) for x in samples.read_text(encoding="utf-8").split("\n")[:-1]]
    assert rows[0]["coco_cap_chair_i"]["pred"] == ["person", "motorcycle", "dog", "dog"]
    m = tmp_path / "m.json"
    assert eval_cli.main("chair", ["--annotations", cfg.annotations, "--captions", cfg.captions, "--lemmatizer", "table",
                               "--answers", str(samples), "--out", str(m)]) == 0
    assert json.loads(m.read_text()) == json.loads(json.dumps(own))


def test_bad_vlmevalkit_tables_name_the_file_and_line(pope_run, tmp_path):
    q_file = str(pope_run / "coco_pope_random.json")
    table = tmp_path / "m_POPE.tsv"
    table.write_text("index\tquestion\tcategory\tprediction\n0\tIs there a red square?\trandom\n")
    with pytest.raises(ValueError, match=rf"{table}:2: 3 cells, the header has 4"):
        pope_metrics.score_samples_file(q_file, str(table), "official")
    table.write_text("index\tquestion\tprediction\n")
    with pytest.raises(ValueError, match=rf"{table}:1: column\(s\) \['category'\] missing"):
        pope_metrics.score_samples_file(q_file, str(table), "official")
    table.write_bytes(b"index\tquestion\tcategory\tprediction\n0\tcaf\xe9\trandom\tyes\n")
    with pytest.raises(ValueError, match=rf"{table}: not UTF-8"):
        pope_metrics.score_samples_file(q_file, str(table), "official")
