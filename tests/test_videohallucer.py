"""VideoHallucer reading, hit rule, pair accuracy, overall and bias scores, worked by hand on the real samples.

Samples are verbatim pairs of patrick-tssn/VideoHallucer @ae4c2f2 (tests/fixtures/samples, see SOURCE.md there).
"""

import json

import pytest
from helpers import SAMPLES  # noqa: E402

from mmpo.eval import EVALUATORS
from mmpo.eval.videohallucer import CATEGORIES, VHPrediction, read_pairs, to_reference_layout, write_results
from mmpo.eval.videohallucer_metrics import bias_scores, fact_score, hit, overall, score_category


def sample(cat):
    return SAMPLES / f"videohallucer_{cat}_sample.json"


@pytest.mark.parametrize("answer,predict,expected", [
    ("yes", "No, wait... yes", True),  # anywhere in the output, no check for the opposite word
    ("no", "It is not there.", False),  # "not" is not "no"
    ("no", "NO.", True),  # case-insensitive
    ("yes", "Yesterday it rained", False),  # whole word only
    ("no", "Nobody is there", False),
    ("yes", "yes", True),
    ("no", "", False),
])
def test_hit_rule(answer, predict, expected):
    assert hit(answer, predict) is expected


def test_read_category_files():
    obj = read_pairs(sample("object_relation"))
    assert len(obj) == 6 and {p.category for p in obj} == {"object_relation"}
    assert [p.type for p in obj] == ["subject", "subject", "object", "object", "relation", "relation"]
    assert obj[0].basic.prompt() == "Is there a baby in the video?\nAnswer the question using 'yes' or 'no'."
    sem = read_pairs(sample("semantic_detail"))
    assert all(p.basic.video != p.hallucination.video and p.basic.question == p.hallucination.question for p in sem)
    fact = read_pairs(sample("external_factual"))
    assert fact[0].hallucination.explanation.startswith("missing the detail")
    assert fact[0].basic.explanation is None
    assert read_pairs(sample("external_nonfactual"))[0].category == "external_nonfactual"
    assert {p.type for p in read_pairs(sample("interaction"))} == {None}
    det = read_pairs(sample("fact_detect"))
    assert {(p.basic.answer, p.hallucination.answer) for p in det} == {("no", "no")}


# object_relation sample, six pairs: (basic output, hallucinated output) -> (B, H)
OBJ_REL = [VHPrediction("Yes, there is a baby.", "No."),  # B, H
           VHPrediction("yes", "Yes, there is a table."),  # B, not H
           VHPrediction("No, there is no sink.", "no"),  # not B, H
           VHPrediction("I think not.", "There is not a doll."),  # not B, not H ("not" is not "no")
           VHPrediction("No. Actually yes.", "Nope"),  # B, not H
           VHPrediction("YES", "no, it is not")]  # B, H


def test_pair_accuracy_by_hand():
    r = score_category(read_pairs(sample("object_relation")), OBJ_REL)
    # B = 1,1,0,0,1,1 (4 of 6); H = 1,0,1,0,0,1 (3 of 6); both = pairs 0 and 5 (2 of 6)
    assert r["basic_accuracy"] == pytest.approx(4 / 6)
    assert r["hallucinated_accuracy"] == pytest.approx(3 / 6)
    assert r["pair_accuracy"] == pytest.approx(2 / 6)
    assert r["n_pairs"] == 6 and r["category"] == "object_relation"


def test_bias_scores_by_hand():
    b = bias_scores(read_pairs(sample("object_relation")), OBJ_REL)
    # N = 6; fp = #(B and not H) = 2 (pairs 1, 4); n_yes = #B + fp = 4 + 2 = 6;
    # n_no = #(not B and H) + #H = 1 + 3 = 4; wrong = #not B + #not H = 2 + 3 = 5
    assert b["ydp"] == pytest.approx((6 - 6) / 12)
    assert b["ndp"] == pytest.approx((4 - 6) / 12)
    assert b["fpr"] == pytest.approx(2 / 5)
    assert b["hallucination_score"] == pytest.approx(2 / 4)
    assert (b["basic"], b["halluc"], b["overall"]) == pytest.approx((4 / 6, 3 / 6, 2 / 6))
    with pytest.raises(ValueError, match="basic=yes / hallucination=no"):
        bias_scores(read_pairs(sample("fact_detect")), [VHPrediction("no", "no")] * 5)


def _uniform(cat, basic, halluc):
    pairs = read_pairs(sample(cat))
    return score_category(pairs, [VHPrediction(basic, halluc)] * len(pairs))


def test_overall_is_unweighted_mean_of_five_categories():
    results = {"object_relation": score_category(read_pairs(sample("object_relation")), OBJ_REL),  # 4/6 3/6 2/6
               "temporal": _uniform("temporal", "Yes.", "No."),  # 1 1 1
               "semantic_detail": _uniform("semantic_detail", "yes", "yes"),  # 1 0 0
               "external_factual": _uniform("external_factual", "no", "no"),  # 0 1 0
               "external_nonfactual": _uniform("external_nonfactual", "yes", "no"),  # 1 1 1
               "interaction": _uniform("interaction", "no", "yes")}  # 0 0 0: extra, left out
    o = overall(results)
    assert o["pair_accuracy"] == pytest.approx((2 / 6 + 1 + 0 + 0 + 1) / 5)  # 7/15
    assert o["basic_accuracy"] == pytest.approx((4 / 6 + 1 + 1 + 0 + 1) / 5)  # 11/15
    assert o["hallucinated_accuracy"] == pytest.approx((3 / 6 + 1 + 0 + 1 + 1) / 5)  # 0.7
    assert o["categories"] == list(CATEGORIES) and o["complete"]
    # README leaderboard arithmetic: GPT-4o (66 + 48.5 + 55.5 + 26 + 70.5) / 5 = 53.3
    gpt4o = dict(zip(CATEGORIES, (0.66, 0.485, 0.555, 0.26, 0.705)))
    fake = {c: {"basic_accuracy": 0, "hallucinated_accuracy": 0, "pair_accuracy": v} for c, v in gpt4o.items()}
    assert overall(fake)["pair_accuracy"] == pytest.approx(0.533)
    assert not overall({"temporal": results["temporal"]})["complete"]


def test_fact_score():
    pairs = read_pairs(sample("fact_detect"))
    preds = [VHPrediction("No.", "No.")] * 3 + [VHPrediction("Yes.", "No.")] * 2  # basic 3/5, halluc 5/5
    r = score_category(pairs, preds)
    assert fact_score(r) == pytest.approx((3 / 5 + 1) / 2)


def test_score_answers_file_reference_layout(tmp_path):
    data = sample("object_relation")
    pairs = read_pairs(data)
    layout = to_reference_layout(pairs, OBJ_REL)
    assert layout[0]["basic"]["predict"] == "Yes, there is a baby." and layout[0]["type"] == "subject"
    answers = tmp_path / "obj_rel_model.json"
    answers.write_text(json.dumps(layout, indent=4))
    r = EVALUATORS["videohallucer"].score_file(data, answers)
    assert r["pair_accuracy"] == pytest.approx(2 / 6) and r["bias"]["fpr"] == pytest.approx(2 / 5)
    assert r["prompt_suffix"] == "\nAnswer the question using 'yes' or 'no'."
    assert r["data_file"] == data.name
    fact = tmp_path / "factual.json"  # explanation survives the round trip
    fpairs = read_pairs(sample("external_factual"))
    write_results(fact, fpairs, [VHPrediction("yes", "no")] * 6)
    assert json.loads(fact.read_text())[0]["hallucination"]["explanation"] == fpairs[0].hallucination.explanation
    assert EVALUATORS["videohallucer"].score_file(sample("external_factual"), fact)["pair_accuracy"] == 1.0
    answers.write_text(json.dumps(layout[:5]))
    with pytest.raises(ValueError, match="5 pairs, but"):
        EVALUATORS["videohallucer"].score_file(data, answers)
    layout[2]["hallucination"]["question"] = "Is there a cat in the video?"
    answers.write_text(json.dumps(layout))
    with pytest.raises(ValueError, match="pair 2 differs"):
        EVALUATORS["videohallucer"].score_file(data, answers)


def test_report_files(tmp_path):
    from mmpo.eval.report import write_videohallucer_report

    results = {"object_relation": score_category(read_pairs(sample("object_relation")), OBJ_REL),
               "temporal": _uniform("temporal", "Yes.", "No.")}
    results["overall"] = overall(results)
    out = write_videohallucer_report(tmp_path, results)
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["pair_accuracy"] == pytest.approx((2 / 6 + 1) / 2)
    assert set(metrics["categories"]) == {"object_relation", "temporal"}
    assert "| object_relation | 6 | 66.7 | 50.0 | 33.3 |" in out["report"].read_text()
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
