"""CHAIR, AMBER (discriminative) and EventHallusion scorers against their reference code's rules.

Expected values were produced by running the reference code itself (outside this repository) on the same
inputs: lmms-eval `tasks/coco_cap_chair/utils.py::caption_to_words` (with NLTK 3.10.4 and its data),
AMBER `inference.py` @534babf (`--evaluation_type d/de/da/dr`), EventHallusion `eval.py` @7396e04. Fixtures:
tests/fixtures/samples (SOURCE.md says which are verbatim excerpts and which are built from the format).
"""

import json

import pytest
from helpers import SAMPLES

from mmpo.eval import EVALUATORS, amber, chair, chair_words, eventhallusion

# caption -> the reference's (words, node_words) from caption_to_words
CHAIR_REFERENCE = [
    ('A man riding a motor bike next to a motorcycle.', ['man', 'motorcycle'], ['person', 'motorcycle']),
    ('Two hot dogs and wine glasses on a dining table.',
     ['hot dog', 'wine glass', 'table'], ['hot dog', 'wine glass', 'dining table']),
    ('A baby bird sits near a baby.', ['bird', 'baby'], ['bird', 'person']),
    ('The seat of the toilet is up; a chair stands by the sink.', ['toilet', 'chair', 'sink'], ['toilet', 'chair', 'sink']),
    ('People are standing by the train track near a passenger train.', ['people', 'train'], ['person', 'train']),
    ('A teddy bear, a teddybear and teddy bears.',
     ['teddy bear', 'teddybear', 'teddy bear'], ['teddy bear', 'teddy bear', 'teddy bear']),
    ('Children play with a frisbee.The dog watches.', ['child', 'dog'], ['person', 'dog']),
    ('A cell phone, a mobile phone and a phone.',
     ['cell phone', 'mobile phone', 'phone'], ['cell phone', 'cell phone', 'cell phone']),
    ('There is a man on the bike. He rides to the home plate.', ['man', 'bike'], ['person', 'bicycle']),
    ('Skis and a snowboard lean against the bench.', ['ski', 'snowboard', 'bench'], ['skis', 'snowboard', 'bench']),
    ('A toilet seat and a toilet.', ['toilet', 'toilet'], ['toilet', 'toilet']),
    ('Oxen and cattle graze; a calf drinks.', ['ox', 'cattle', 'calf'], ['cow', 'cow', 'cow']),
    ('An adult cat and a cub.', ['cat'], ['cat']),
    ('A hair drier lies by the scissors.', ['hair drier', 'scissors'], ['hair drier', 'scissors']),
    ('A laptop computer and a computer mouse on a desk.',
     ['laptop computer', 'computer', 'mouse', 'desk'], ['laptop', 'laptop', 'mouse', 'dining table']),
    ('A stove top oven in the kitchen.', ['stove', 'oven'], ['oven', 'oven']),
    ('Dr. Smith holds a knife, forks and spoons.', ['knife', 'fork', 'spoon'], ['knife', 'fork', 'spoon']),
    ('A zebra.A giraffe!A bear?', ['giraffe', 'bear'], ['giraffe', 'bear']),
    ('', [], []),
    ('The televison shows an iPhone ad.', ['televison'], ['tv']),
    ('A suit case and suitcases.', ['suit case', 'suitcase'], ['suitcase', 'suitcase']),
]


@pytest.fixture(scope="module")
def table():
    return chair_words.Lemmatizer("table")


@pytest.mark.parametrize("caption,words,classes", CHAIR_REFERENCE)
def test_chair_caption_objects_equal_the_reference(caption, words, classes, table):
    # covers: two-word merges ("hot dog", "baby bird" -> bird, "train track" eats "train"), the quirky list
    # entries (" motor bike" with a space, so "motor bike" mentions nothing), "toilet seat", the missing
    # sentence break in "frisbee.The", lemmas (children -> child, oxen -> ox, skis -> ski) and synonyms.
    assert chair_words.caption_objects(caption, table) == (words, classes)


def test_chair_pos_dependence_is_the_known_gap(table):
    """The one place the offline table can differ: a word whose lemma depends on NLTK's tagger in context.

    The reference's tagger does not tag "umbrellas" as a noun in this sentence, so its lemma stays "umbrellas"
    and no umbrella is counted; the table uses the word's usual POS (noun) and counts it.
    """
    caption = "Two women with umbrellas walk past a fire hydrant and a stop sign."
    assert chair_words.caption_objects(caption, table)[1] == ["person", "umbrella", "fire hydrant", "stop sign"]
    assert chair_words.lemma_table()["umbrellas"] == (("umbrella", "umbrellas", "umbrellas", "umbrellas"), "n")


def test_chair_tokenizer_keeps_periods_inside_tokens():
    # nltk.word_tokenize: Punkt splits sentences only at a period followed by space; "zebra.a" stays one token
    assert chair_words.tokenize("a zebra.a giraffe! dr. smith's dog.") == \
        ["a", "zebra.a", "giraffe", "!", "dr.", "smith", "'s", "dog", "."]


def test_chair_lemmatizer_backends(monkeypatch):
    with pytest.raises(ValueError, match="lemmatizer must be"):
        chair_words.Lemmatizer("spacy")
    monkeypatch.setattr(chair_words, "nltk_data_available", lambda: False)
    assert chair_words.Lemmatizer("auto").backend == "table"  # no nltk_data: the offline table
    with pytest.raises(ValueError, match="needs NLTK"):
        chair_words.Lemmatizer("nltk")


def _captions(tmp_path, rows):
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chair_metrics_on_coco_layout_files(tmp_path):
    answers = _captions(tmp_path, [
        {"image_id": 139, "caption": "A man on a motorcycle next to a dog and a dog."},  # dog x2 hallucinated
        {"image_id": 285, "caption": "Wine glasses on a dining table."},  # all right
        {"image_id": 632, "answer": "A toilet with its seat up."},  # seat dropped (toilet present)
    ])
    r = chair.score_answers_file(SAMPLES / "chair_coco_instances_sample.json", answers,
                                 SAMPLES / "chair_coco_captions_sample.json", lemmatizer="table")
    # mentions: person, motorcycle, dog, dog | wine glass, dining table | toilet -> 7, of which 2 hallucinated
    assert (r["n_mentions"], r["n_hallucinated"]) == (7, 2)
    assert r["chair_i"] == 2 / 7 and r["chair_s"] == 1 / 3
    # ground truth = instances + classes the reference captions mention (fire hydrant for 139; 285 adds hot dog)
    gt = {c["image_id"]: c for c in r["captions"]}
    assert gt[139]["n_gt"] == 3 and gt[285]["n_gt"] == 3 and gt[632]["n_gt"] == 2
    assert r["recall"] == (2 + 2 + 1) / (3 + 3 + 2)
    assert gt[139]["hallucinated"] == [("dog", "dog"), ("dog", "dog")]
    assert EVALUATORS["chair"].score_file is chair.score_answers_file


def test_chair_ground_truth_jsonl_and_errors(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text(json.dumps({"image_id": 1, "gt_object": ["person", "dog"]}) + "\n")  # lmms-eval's field name
    r = chair.score_answers_file(gt, _captions(tmp_path, [{"image_id": 1, "text": "A woman and a cat."}]),
                                 lemmatizer="table")
    assert (r["chair_i"], r["chair_s"], r["recall"]) == (0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match="not in"):
        chair.score_answers_file(gt, _captions(tmp_path, [{"image_id": 2, "caption": "x"}]), lemmatizer="table")
    with pytest.raises(ValueError, match="captions.jsonl:2: image_id 1 answered twice"):
        chair.read_captions(_captions(tmp_path, [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))


def _shapes_coco(tmp_path):
    """A COCO instances file whose categories are not COCO objects (the demo world's kind): names with upper
    case and doubled spaces, and one two-word name. Ground truth: 1 circle | 2 square, red bar | 3 cross, red bar."""
    cats = [{"id": 1, "name": "Circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "red  bar"},
            {"id": 4, "name": "cross"}]
    images = [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [{"id": n, "image_id": i, "category_id": c} for n, (i, c) in enumerate([(1, 1), (2, 2), (2, 3), (3, 4), (3, 3)])]
    path = tmp_path / "shapes.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


SHAPE_CAPTIONS = [
    {"image_id": 1, "caption": "There is a red circle with two squares."},  # circle, square: square hallucinated
    {"image_id": 2, "caption": "Two red bars next to a square and a dog."},  # red bar, square; a dog is no category
    {"image_id": 3, "caption": "Crosses, circles and a blue bar."},  # cross, circle (hallucinated); "blue bar" is none
]


def test_chair_category_vocabulary(table):
    v = chair_words.category_words(["Circle", " red  bar ", "box", "cross", "toilet", "seat"])
    assert v.name == "categories" and v.objects == {"circle", "red bar", "box", "cross", "toilet", "seat"}
    assert v.synonym_of["red bar"] == "red bar" and v.double_words == {"red bar": "red bar"}  # as COCO's "hot dog"
    # plurals by WordNet's noun rules (s, ses -> s, xes -> x); "red bars" merges into one mention, "bar" alone is none
    assert chair_words.caption_objects("Two red bars, boxes and crosses; a bar and a dog.", table, v) == \
        (["red bar", "box", "cross"], ["red bar", "box", "cross"])
    # the COCO "toilet seat" rule is COCO's: here a seat is a seat
    assert chair_words.caption_objects("A toilet with its seat up.", table, v)[1] == ["toilet", "seat"]
    assert chair_words.caption_objects("A toilet with its seat up.", table)[1] == ["toilet"]
    assert chair_words.noun_lemma("crosses", frozenset({"cross", "crosse"})) == "cross"  # the shortest, as _morphy
    with pytest.raises(ValueError, match="at most two"):
        chair_words.category_words(["big red bar"])
    with pytest.raises(ValueError, match="non-empty"):
        chair_words.category_words([])


def test_chair_metrics_against_the_files_own_categories(tmp_path, capsys):
    shapes, answers = _shapes_coco(tmp_path), _captions(tmp_path, SHAPE_CAPTIONS)
    r = chair.score_answers_file(shapes, answers, lemmatizer="table", vocabulary="categories")
    per = {c["image_id"]: c for c in r["captions"]}
    assert {i: c["mentioned"] for i, c in per.items()} == {
        1: [("circle", "circle"), ("square", "square")],
        2: [("red bar", "red bar"), ("square", "square")],
        3: [("cross", "cross"), ("circle", "circle")]}
    assert per[1]["hallucinated"] == [("square", "square")] and per[3]["hallucinated"] == [("circle", "circle")]
    # mentions 2 + 2 + 2 = 6, hallucinated 1 + 0 + 1 = 2; captions 1 and 3 hallucinate
    assert (r["n_mentions"], r["n_hallucinated"]) == (6, 2)
    assert r["chair_i"] == 2 / 6 and r["chair_s"] == 2 / 3
    # ground truth 1 + 2 + 2 classes; mentioned: circle | red bar, square | cross ("blue bar" is no red bar)
    assert r["recall"] == (1 + 2 + 1) / (1 + 2 + 2)
    assert r["vocabulary"] == "categories"
    # the same files under COCO's lists: no shape is a COCO object, the dog is (and is not in the ground truth)
    coco = chair.score_answers_file(shapes, answers, lemmatizer="table")
    assert coco["vocabulary"] == "coco" and (coco["n_mentions"], coco["chair_i"], coco["recall"]) == (1, 1.0, 0.0)
    # category names: COCO's route keeps the case (as before); the file's own vocabulary lower-cases them
    assert chair.read_images(shapes)[0].gt_objects == {"Circle"}
    assert chair.read_images(shapes, vocabulary=chair.load_vocabulary("categories", shapes))[0].gt_objects == \
        {"circle"}

    from mmpo.app.cli import main

    assert main(["eval", "chair", "--annotations", str(shapes), "--answers", str(answers), "--lemmatizer", "table",
                 "--vocabulary", "categories", "--out", str(tmp_path / "m.json")]) == 0
    saved = json.loads((tmp_path / "m.json").read_text())
    assert (saved["chair_i"], saved["vocabulary"]) == (2 / 6, "categories")
    capsys.readouterr()


def test_chair_categories_need_a_coco_instances_file(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text(json.dumps({"image_id": 1, "gt_objects": ["circle"]}) + "\n")
    answers = _captions(tmp_path, [{"image_id": 1, "caption": "A circle."}])
    with pytest.raises(ValueError, match=r"gt\.jsonl: vocabulary 'categories' needs a COCO instances JSON"):
        chair.score_answers_file(gt, answers, lemmatizer="table", vocabulary="categories")
    with pytest.raises(ValueError, match=r"gt\.jsonl: a ground-truth JSONL holds COCO classes"):
        chair.read_images(gt, vocabulary=chair_words.category_words(["circle"]))
    with pytest.raises(ValueError, match="vocabulary must be one of"):
        chair.score_answers_file(gt, answers, lemmatizer="table", vocabulary="shapes")


# ---------------------------------------------------------------- AMBER

# responses to the 26 discriminative questions of the excerpt (ids 1005-1018, 8633-8638, 13557-13562)
AMBER_RESPONSES = ["Yes", "No", "Yes.", "yes", "No", " No", "NO", "No", "Yes", "No", "No", "Yes", "No", "Yes",
                   "No", "No", "Yes", "No.", "", "No",
                   "Yes", "No", "No", "Yes", "Yes", "no"]
# inference.py's printout for them (-d; -de/-da/-dr print the same per-dimension numbers)
AMBER_REFERENCE = {
    "overall": (42.3, 63.6, 46.7, 53.9),
    "existence": (50.0, 100.0, 50.0, 66.6),  # F1 with + 0.001 in the denominator
    "attribute": (35.7, 50.0, 42.8, 46.1),  # recall 3 / 7.003: three counters, each started at 0.001
    "relation": (50.0, 50.0, 50.0, 50.0),
}
AMBER_PARTS = {"state": (30.0, 50.0, 40.0, 44.4),
               "number": (100.0, 99.9, 99.9, 99.9),  # 0.001 in every denominator: 1/1.001 -> 99.9
               "action": (0.0, 0.0, 0.0, 0.0)}  # nothing answered "No": 0 / 0.001, no ZeroDivisionError


def _amber_answers(tmp_path):
    qs = json.loads((SAMPLES / "amber_query_discriminative_sample.json").read_text())
    path = tmp_path / "amber_answers.json"
    amber.write_answers(path, [amber.AmberAnswer(q["id"], r) for q, r in zip(qs, AMBER_RESPONSES)])
    return path


def test_amber_matches_inference_py(tmp_path):
    r = amber.score_answers_file(SAMPLES / "amber_query_discriminative_sample.json",
                                 SAMPLES / "amber_annotations_sample.json", _amber_answers(tmp_path))
    for dim, expected in AMBER_REFERENCE.items():
        assert tuple(r[dim][k] for k in ("accuracy", "precision", "recall", "f1")) == expected, dim
    for part, expected in AMBER_PARTS.items():
        assert tuple(r["attribute_parts"][part][k] for k in ("accuracy", "precision", "recall", "f1")) == expected
    # exact "Yes"/"No" only: "Yes.", "yes", " No", "NO", "No.", "" and "no" count as neither
    assert r["n_unparsed"] == 7 and r["n_questions"] == 26
    assert EVALUATORS["amber"].score_file is amber.score_answers_file


def test_amber_reads_the_real_layout_and_skips_generative():
    both = [SAMPLES / "amber_query_generative_sample.json", SAMPLES / "amber_query_discriminative_sample.json"]
    assert amber.read_questions(both[0], SAMPLES / "amber_annotations_sample.json") == []
    qs = amber.read_questions(both[1], SAMPLES / "amber_annotations_sample.json")
    assert [q.dimension for q in qs].count("relation") == 6  # 'discriminative-relation' and 'relation'
    assert qs[0] == amber.AmberQuestion(1005, "AMBER_1.jpg", "Is the sky sunny in this image?",
                                        "discriminative-attribute-state", "yes")


def test_amber_one_dimension_has_no_overall(tmp_path):
    qs = amber.read_questions(SAMPLES / "amber_query_discriminative_sample.json", SAMPLES / "amber_annotations_sample.json")
    answers = {q.id: amber.AmberAnswer(q.id, "No") for q in qs}
    r = amber.score([q for q in qs if q.dimension == "existence"], answers)
    assert "overall" not in r and r["existence"]["accuracy"] == 100.0  # 6 / 6.001 = 99.98 -> 100.0
    with pytest.raises(ValueError, match="no answer"):
        amber.score(qs, {})


# ---------------------------------------------------------------- EventHallusion

EH_TRICKY = [("Yes", "Yes."), ("yesterday it was", "Yes."), ("Not sure", "No."), ("NO.", "No."), ("nope", "No."),
             (" no", None), ("The answer is no", None), ("", None), (None, None)]


@pytest.mark.parametrize("text,expected", EH_TRICKY)
def test_eventhallusion_extract_pred(text, expected):
    assert eventhallusion.extract_pred(text) == expected


def test_eventhallusion_scores_like_eval_py(tmp_path):
    files = {s: SAMPLES / f"eventhallusion_{s}_questions_sample.json" for s in eventhallusion.SPLITS}
    questions = [q for f in files.values() for q in eventhallusion.read_questions(f)]
    preds = dict(zip([q.key for q in questions], ["no", "Not really", "Yes, they do", "yes", "Sure, yes", "No"]))
    out = eventhallusion.write_predictions(tmp_path / "pred.json", files, preds)
    data = json.loads(out.read_text())
    data["entire"]["entire_001"]["judgement"] = "**Yes**, it is accurate"  # eval.py strips '*'
    data["entire"]["entire_002"]["judgement"] = "No"
    out.write_text(json.dumps(data))
    r = eventhallusion.score_answers_file(list(files.values()), out)
    assert {s: (v["correct"], v["n"]) for s, v in r["splits"].items()} == \
        {"entire": (2, 3), "interleave": (1, 2), "misleading": (1, 1)}
    assert r["accuracy"] == 4 / 6 and r["not_matching_rate"] == 1 / 6  # "Sure, yes" matches nothing
    assert r["description_accuracy"] == 1 / 5  # 5 videos, one judged yes
    assert EVALUATORS["eventhallusion"].score_file is eventhallusion.score_answers_file


def test_eventhallusion_rejects_bad_files(tmp_path):
    bad = tmp_path / "entire_questions.json"
    bad.write_text(json.dumps([{"id": "entire_001", "questions": [{"question": "q", "answer": "no"}]}]))
    with pytest.raises(ValueError, match="answer must be 'Yes.' or 'No.'"):
        eventhallusion.read_questions(bad)
    with pytest.raises(ValueError, match="cannot tell the split"):
        eventhallusion.read_questions(SAMPLES / "amber_annotations_sample.json")


def test_cli_scores_each_benchmark(tmp_path, capsys):
    from mmpo.app.cli import main

    answers = _amber_answers(tmp_path)
    assert main(["eval", "amber", "--questions", str(SAMPLES / "amber_query_discriminative_sample.json"),
                 "--annotations", str(SAMPLES / "amber_annotations_sample.json"), "--answers", str(answers),
                 "--out", str(tmp_path / "amber.json")]) == 0
    assert json.loads((tmp_path / "amber.json").read_text())["overall"]["f1"] == 53.9
    caps = _captions(tmp_path, [{"image_id": 632, "caption": "A bird on a toilet seat."}])
    assert main(["eval", "chair", "--annotations", str(SAMPLES / "chair_coco_instances_sample.json"),
                 "--answers", str(caps), "--lemmatizer", "table", "--out", str(tmp_path / "chair.json")]) == 0
    saved = json.loads((tmp_path / "chair.json").read_text())
    assert saved["chair_i"] == 0.0 and saved["captions"][0]["mentioned"] == [["bird", "bird"], ["toilet", "toilet"]]
    assert '"captions"' not in capsys.readouterr().out  # the per-caption details go to the file only
    assert main(["eval", "eventhallusion", "--questions", str(SAMPLES / "amber_annotations_sample.json"),
                 "--answers", str(answers)]) == 1  # not a question file: one error line
    assert "cannot tell the split" in capsys.readouterr().err
