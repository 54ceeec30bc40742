"""Evaluator inputs a user gets wrong (issue 24, item 7 and D5-D8, CHAIR against its reference): each is run as the
user ran it (`mmpo eval ...`) and must end in one line naming the file and the line, item or key, or be scored
the way the reference scores it. Scorers only: no model (the runner-side checks are in test_benchmark_runners)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SAMPLES

from mmpo.app.cli import main
from mmpo.eval import amber, chair, chair_words, eventhallusion, files, pope_build, predictions, report
from mmpo.eval.commands import amber_summary

AMBER_Q = str(SAMPLES / "amber_query_discriminative_sample.json")
AMBER_A = str(SAMPLES / "amber_annotations_sample.json")
COCO = SAMPLES / "chair_coco_instances_sample.json"
EH_FILES = [str(SAMPLES / f"eventhallusion_{s}_questions_sample.json") for s in eventhallusion.SPLITS]


def _fails(args: list[str], capsys) -> str:
    """Run `mmpo ARGS`; it must exit 1 with one `mmpo: error:` line, which is returned."""
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmpo: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _chair(tmp_path, answers: str | bytes, annotations=COCO) -> list[str]:
    return ["eval", "chair", "--annotations", str(annotations), "--answers", _write(tmp_path / "caps.jsonl", answers),
            "--lemmatizer", "table"]


def _amber(tmp_path, answers: str) -> list[str]:
    return ["eval", "amber", "--questions", AMBER_Q, "--annotations", AMBER_A,
            "--answers", _write(tmp_path / "answers.json", answers)]


# ---------------------------------------------------------------- D5: every bad input names file and line/key


def test_bad_json_line_names_the_file_and_its_line(tmp_path, capsys):
    good = json.dumps({"image_id": 139, "caption": "A dog."})
    err = _fails(_chair(tmp_path, good + '\n{"image_id": 285, "caption": "A cat\n'), capsys)
    assert f"{tmp_path / 'caps.jsonl'}:2: invalid JSON: Unterminated string" in err
    amber_jsonl = json.dumps({"id": 1005, "response": "Yes"}) + '\n\n{"id": 1006, "response": No}\n'
    assert f"{tmp_path / 'answers.json'}:3: invalid JSON" in _fails(_amber(tmp_path, amber_jsonl), capsys)


def test_answers_that_are_not_utf8(tmp_path, capsys):
    raw = json.dumps({"image_id": 139, "caption": "A dog."}).encode() + b'\n{"image_id": 285, "caption": "caf\xe9"}\n'
    err = _fails(_chair(tmp_path, raw), capsys)
    assert f"{tmp_path / 'caps.jsonl'}:2: not UTF-8 (byte 0xe9 at column 34)" in err


@pytest.mark.parametrize("image_id,shown", [('"abc"', 'a JSON string "abc"'), ("1.9", "a JSON number 1.9"),
                                            ("true", "a JSON boolean true"), ("null", "a JSON null null")])
def test_chair_image_ids_must_be_integers(tmp_path, capsys, image_id, shown):
    """D5 / D6: `int()` read 1.9 and true as image 1 and failed on "abc" with its own message."""
    err = _fails(_chair(tmp_path, '{"image_id": 139, "caption": "A dog."}\n{"image_id": %s, "caption": "x"}\n'
                        % image_id), capsys)
    assert f"caps.jsonl:2: field 'image_id': expected an integer id, got {shown}" in err


def test_chair_ground_truth_objects_must_be_a_list(tmp_path, capsys):
    """D6: a bare string was read letter by letter ("dog" -> d, o, g), changing CHAIR_s and recall."""
    gt = _write(tmp_path / "gt.jsonl", '{"image_id": 1, "gt_objects": ["dog"]}\n{"image_id": 2, "gt_objects": "dog"}\n')
    err = _fails(_chair(tmp_path, '{"image_id": 1, "caption": "A dog."}\n', gt), capsys)
    assert "gt.jsonl:2: field 'gt_objects': expected a JSON array of strings, got string \"dog\"" in err
    _write(tmp_path / "gt.jsonl", '{"image_id": 1, "gt_objects": ["dog"]}\n{"image_id": 1.9, "gt_objects": []}\n')
    assert "gt.jsonl:2: field 'image_id': expected an integer id, got a JSON number 1.9" in _fails(
        _chair(tmp_path, '{"image_id": 1, "caption": "A dog."}\n', gt), capsys)


def test_caption_must_be_text(tmp_path, capsys):
    err = _fails(_chair(tmp_path, '{"image_id": 139, "caption": 5}\n'), capsys)
    assert "caps.jsonl:1: field 'caption': expected a string, got a JSON number 5" in err


def test_unknown_category_id_is_named(tmp_path, capsys):
    data = json.loads(COCO.read_text())
    data["annotations"][2]["category_id"] = 99
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps(data))
    err = _fails(_chair(tmp_path, '{"image_id": 139, "caption": "A dog."}\n', coco), capsys)
    assert f"{coco}: annotations[2]: field 'category_id': 99 is not among the file's categories" in err


def test_amber_items_must_be_objects(tmp_path, capsys):
    err = _fails(_amber(tmp_path, json.dumps([{"id": 1005, "response": "Yes"}, "No"])), capsys)
    assert f"{tmp_path / 'answers.json'}: item 1: expected a JSON object, got a JSON string \"No\"" in err
    err = _fails(_amber(tmp_path, json.dumps([{"id": 1005, "response": 1}])), capsys)
    assert "answers.json: item 0: field 'response': expected a string, got a JSON number 1" in err


def _eh_predictions(tmp_path, data) -> str:
    return _write(tmp_path / "pred.json", json.dumps(data) if not isinstance(data, str) else data)


def test_eventhallusion_predictions_file_shape(tmp_path, capsys):
    args = ["eval", "eventhallusion", "--questions", EH_FILES[0], "--answers"]
    err = _fails(args + [_eh_predictions(tmp_path, [{"id": "entire_001"}])], capsys)
    assert f"{tmp_path / 'pred.json'}:1: expected a JSON object {{split: {{video_id: ...}}}}" in err
    bad = {"entire": {"entire_001": {"qa": [{"question": "q", "answer": "No.", "prediction": 5}]}}}
    err = _fails(args + [_eh_predictions(tmp_path, bad)], capsys)
    assert "pred.json: entire/entire_001 qa[0]: field 'prediction': expected a string or null, got a JSON number 5" \
        in err


def test_eventhallusion_question_without_question(tmp_path, capsys):
    videos = json.loads(Path(EH_FILES[0]).read_text())
    del videos[1]["questions"][0]["question"]
    qfile = _write(tmp_path / "entire_questions.json", json.dumps(videos))
    err = _fails(["eval", "eventhallusion", "--questions", qfile, "--answers", _eh_predictions(tmp_path, {})], capsys)
    assert f"{qfile}: item 1 question 0: field 'question': missing" in err


def test_corrupt_run_json_is_named_with_the_way_out(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"id": "1005", "answer": "Yes"}\n')
    (tmp_path / "run.json").write_text('{"mode": "logits", "model": ')
    with pytest.raises(ValueError, match=r"run\.json:1: invalid JSON: Expecting value .*restore it, or delete both"):
        predictions.check_run(tmp_path, {"mode": "logits"})
    (tmp_path / "predictions.jsonl").write_text('{"id": "1005", "answer": "Yes"}\n{"answer": "No"}\n{"id": "1007"')
    with pytest.raises(ValueError, match=r"predictions\.jsonl:2: fields \['id'\] missing"):
        predictions.load_predictions(tmp_path / "predictions.jsonl", ("id",))


# ---------------------------------------------------------------- D7: EventHallusion ids repeated


def test_eventhallusion_refuses_a_video_id_twice(tmp_path, capsys):
    """D7: a repeated id made n = 5 questions out of 4 predictions (the second video's keys were the first's)."""
    videos = json.loads(Path(EH_FILES[0]).read_text())
    videos.append(dict(videos[0]))
    qfile = _write(tmp_path / "entire_questions.json", json.dumps(videos))
    err = _fails(["eval", "eventhallusion", "--questions", qfile, "--answers", _eh_predictions(tmp_path, {})], capsys)
    assert f"{qfile}: item {len(videos) - 1}: video id 'entire_001' appears twice (first as item 0)" in err
    twice = '{"entire": {"entire_001": {"qa": []}, "entire_001": {"qa": []}}}'
    err = _fails(["eval", "eventhallusion", "--questions", EH_FILES[0], "--answers", _eh_predictions(tmp_path, twice)],
                 capsys)
    assert "pred.json: key 'entire_001' appears twice in one JSON object" in err


# ---------------------------------------------------------------- D8 and item 7: pope-build


def _gt(tmp_path, rows) -> str:
    return _write(tmp_path / "gt.jsonl", "".join(json.dumps({"image": i, "objects": o}) + "\n" for i, o in rows))


@pytest.mark.parametrize("flag,value", [("--sample-num", "0"), ("--sample-num", "-1"), ("--num-images", "0")])
def test_pope_build_refuses_counts_that_build_nothing(tmp_path, capsys, flag, value):
    gt = _gt(tmp_path, [(f"img_{i:03d}.jpg", ["a", "b", "c", "d"]) for i in range(4)])
    args = ["eval", "pope-build", "--annotations", gt, "--out", str(tmp_path / "pope"), "--num-images", "2", flag, value]
    assert f"({flag}) must be a whole number >= 1, got {value}" in _fails(args, capsys)
    assert not (tmp_path / "pope").exists()  # no empty split files


def test_pope_build_says_how_to_find_a_negative(tmp_path, capsys):
    gt = _gt(tmp_path, [("img_010.jpg", ["cat", "dog", "cup"])])
    err = _fails(["eval", "pope-build", "--annotations", gt, "--out", str(tmp_path / "p"), "--num-images", "1"], capsys)
    assert "image img_010.jpg: no object left to use as a negative" in err
    assert "--num-images" in err and "--sample-num" in err  # the ways out
    with pytest.raises(ValueError, match="sample_num"):
        pope_build.build([{"image": "x", "objects": ["a"]}], sample_num=True, img_num=1)


# ---------------------------------------------------------------- item 7: AMBER's console line, rescoring


def test_amber_console_line_names_each_dimension_and_no_overall():
    """Item 7: "accuracy 0.0 F1 0.0 over 40 questions" was existence's numbers while the report showed attribute
    100.0 and no overall row; the line now has every row of the report, named, and says why overall is absent."""
    qs = amber.read_questions(AMBER_Q, AMBER_A)
    qs = [q for q in qs if q.dimension in ("existence", "attribute")]
    m = amber.score(qs, {q.id: amber.AmberAnswer(q.id, "Yes") for q in qs})
    line = amber_summary("logits", m)
    assert f"existence accuracy {m['existence']['accuracy']:.1f} F1 {m['existence']['f1']:.1f}" in line
    assert f"attribute accuracy {m['attribute']['accuracy']:.1f}" in line
    assert "no overall: the reference reports it only when all three dimensions are asked" in line
    for dim in ("existence", "attribute"):  # the report's rows carry the same numbers
        assert f"| {dim} | {m[dim]['accuracy']:.1f} |" in report.amber_markdown(m)
    full = amber.score(amber.read_questions(AMBER_Q, AMBER_A), {q.id: amber.AmberAnswer(q.id, "No") for q in
                                                                amber.read_questions(AMBER_Q, AMBER_A)})
    assert amber_summary("logits", full).startswith(f"AMBER (logits, %): overall accuracy {full['overall']['accuracy']:.1f}")


def test_answers_of_a_skip_run_rescore_with_unanswered_skip(tmp_path, capsys):
    """Item 7: a run with on_bad_media: skip writes answers only for what it asked; its file could not be
    rescored ("4 questions have no answer"). The error now says how, and --unanswered skip scores it."""
    qs = amber.read_questions(AMBER_Q, AMBER_A)
    answered = qs[4:]
    args = _amber(tmp_path, json.dumps([{"id": q.id, "response": "No"} for q in answered]))
    err = _fails(args, capsys)
    assert f"answers.json: 4 questions have no answer ({len(qs)} asked; first ids: {[q.id for q in qs[:4]]})" in err
    assert "add --unanswered skip" in err
    assert main(args + ["--unanswered", "skip", "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    direct = amber.score(answered, {q.id: amber.AmberAnswer(q.id, "No") for q in answered})
    assert m["n_unanswered"] == 4 and m["n_questions"] == len(answered)
    assert all(m[d] == direct[d] for d in ("existence", "attribute", "relation", "overall"))


# ---------------------------------------------------------------- CHAIR against the reference


def test_chair_reads_coco_with_categories_last(tmp_path, capsys):
    """The released instances_val2014.json puts `categories` after 160 MB of annotations; the layout is told from
    the parsed keys (it was a search of the first 200,000 characters)."""
    data = json.loads(COCO.read_text())
    filler = [{"id": 10_000 + i, "image_id": 999_999, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1,
               "iscrowd": 0} for i in range(3000)]  # annotations of an image not in `images`: ignored, as COCO's
    ordered = {"info": data["info"], "images": data["images"], "annotations": data["annotations"] + filler,
               "categories": data["categories"]}
    coco = tmp_path / "instances_val2014.json"
    coco.write_text(json.dumps(ordered))
    assert coco.read_text().index('"categories"') > 200_000
    caps = json.dumps({"image_id": 139, "caption": "A man on a motorcycle next to a dog."}) + "\n"
    assert main(_chair(tmp_path, caps, coco) + ["--out", str(tmp_path / "m.json")]) == 0
    first = json.loads((tmp_path / "m.json").read_text())
    assert main(_chair(tmp_path, caps, COCO) + ["--out", str(tmp_path / "m2.json")]) == 0
    assert first["captions"] == json.loads((tmp_path / "m2.json").read_text())["captions"]  # the same ground truth
    assert first["n_hallucinated"] == 1  # the dog


def test_chair_potted_plant_and_the_lemmatiser_is_named(tmp_path):
    """The table read "potted" as the verb "pot" everywhere, so "a potted plant" named no object (the reference's
    tagger tags it JJ before a noun: potted plant); and every CHAIR result says which lemmatiser scored it."""
    table = chair_words.Lemmatizer("table")
    assert chair_words.caption_objects("There is a potted plant.", table) == (["potted plant"], ["potted plant"])
    assert chair_words.caption_objects("Two potted plants by a sink.", table)[1] == ["potted plant", "sink"]
    assert chair_words.caption_objects("She potted a plant.", table) == ([], [])  # a verb stays a verb
    assert chair_words.caption_objects("A sports ball.", table)[0] == ["ball"]  # a noun keeps its lemma
    gt = _write(tmp_path / "gt.jsonl", '{"image_id": 1, "gt_objects": ["potted plant"]}\n')
    m = chair.score_answers_file(gt, _write(tmp_path / "c.jsonl", '{"image_id": 1, "caption": "A potted plant."}\n'),
                                 lemmatizer="table")
    assert m["recall"] == 1.0 and m["chair_i"] == 0.0
    assert m["lemmatizer_backend"] == "table" and m["lemmatizer_exact"] is False
    assert "Not exact: on 500 LLaVA-1.5 captions" in m["lemmatizer"]
    report.write_chair_report(tmp_path / "out", m)
    assert "Not exact" in (tmp_path / "out" / "report.md").read_text()


def test_files_helpers_messages():
    assert files.need_int_id("0139", "w") == 139
    with pytest.raises(ValueError, match="w: expected an integer id, got a JSON boolean true"):
        files.need_int_id(True, "w")
