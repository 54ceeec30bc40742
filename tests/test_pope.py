"""POPE reading, parsers and metrics, checked against the reference scorers on the real sample files.

Sample files are verbatim excerpts of AoiDragon/POPE (tests/fixtures/samples, see SOURCE.md there).
"""

import json
from fractions import Fraction as F

import pytest
from helpers import SAMPLES  # noqa: E402

from mmpo.eval import EVALUATORS
from mmpo.eval.pope import (
    PARSERS,
    PROMPT_SUFFIXES,
    PopePrediction,
    read_answers,
    read_questions,
    write_answers,
)
from mmpo.eval.pope_metrics import aggregate, score, score_answers_file, score_predictions
from mmpo.eval.pope_parsers import _VLM_PERIOD_PRE2025, _vlm_process_punctuation

# Reference result of each parser on tricky answers (worked from the reference code, docs/BENCHMARKS.md §1.4).
TRICKY = [
    # text,                      official, lmms,      vlmevalkit
    ("No\nThe image shows a cat", "yes", "unknown", "no"),  # official splits on ' ' only: token "No\nThe"
    ("Yes, there is no doubt", "no", "unknown", "unknown"),  # official: any "no" token; vlm: both words
    ("NO", "yes", "no", "no"),  # official is case-sensitive: only "No"/"no"/"not"
    ("", "yes", "unknown", "unknown"),
    ("Nope", "yes", "unknown", "unknown"),
    ("There isn't", "yes", "unknown", "unknown"),
    ("yes.", "yes", "unknown", "yes"),  # lmms: exact match after lower/strip; vlm strips the period
    ("Yes", "yes", "yes", "yes"),
]


@pytest.mark.parametrize("text,official,lmms,vlm", TRICKY)
def test_parsers_match_references(text, official, lmms, vlm):
    assert PARSERS["official"](text) == official
    assert PARSERS["lmms"](text) == lmms
    assert PARSERS["vlmevalkit"](text) == vlm
    assert PARSERS["vlmevalkit_pre2025"](text) == vlm  # the period-pattern change does not matter here


# VLMEvalKit's period pattern: current r'(?<!\d)\.(?!\d)' vs pre-May-2025 '(?!<=\d)(\.)(?!\d)' (in effect
# "not followed by a digit"). Output of process_punctuation on the lower-cased answer:
PERIODS = [
    # text,       current,   pre2025
    ("3.Yes", "3.yes", "3yes"),  # digit before: kept now, removed before
    ("2. Yes", "2. yes", "2 yes"),
    ("yes 3.", "yes 3.", "yes 3"),
    ("1.no", "1.no", "1no"),
    ("Yes.5", "yes.5", "yes.5"),  # digit after: kept by both
    ("No...", "no", "no"),  # no digit near: removed by both
    ("e.g. yes", "eg yes", "eg yes"),
]


@pytest.mark.parametrize("text,current,pre2025", PERIODS)
def test_vlmevalkit_period_patterns(text, current, pre2025):
    assert _vlm_process_punctuation(text.lower()) == current
    assert _vlm_process_punctuation(text.lower(), _VLM_PERIOD_PRE2025) == pre2025
    # A period next to a digit stays inside a token holding that digit, which is never "yes"/"no": alone,
    # the pattern change cannot change a parse ...
    assert PARSERS["vlmevalkit"](text) == PARSERS["vlmevalkit_pre2025"](text)


# ... but the reference passes re.UNICODE (= 32) as sub()'s count: only the first 32 matching periods go.
# After 32 digit-adjacent periods (a numbered list) the old pattern has used its 32, the new one has not.
LIST_32 = " ".join(f"{i}." for i in range(1, 33))  # "1. 2. ... 32."


@pytest.mark.parametrize("text,current,pre2025", [
    (LIST_32 + " Yes.", "yes", "unknown"),  # before: token "yes." survives
    (LIST_32 + " No.", "no", "unknown"),
    (LIST_32 + " Yes, no.", "unknown", "yes"),  # before: "no." survives, so only "yes" is a word
    (LIST_32[:-4] + " Yes.", "yes", "yes"),  # 31 list periods: both have one left for "yes."
])
def test_vlmevalkit_versions_differ_after_32_periods(text, current, pre2025):
    assert PARSERS["vlmevalkit"](text) == current
    assert PARSERS["vlmevalkit_pre2025"](text) == pre2025


# Hand-made answers for pope_random_sample.jsonl (ids 3..12, labels alternate yes/no starting with yes).
ANSWERS = {3: "Yes, there is a person.", 4: "No, there is no sandwich.", 5: "There is no skis in the image.",
           6: "Yes", 7: "Yes", 8: "No", 9: "yes", 10: "NO", 11: "Nope", 12: ""}


@pytest.mark.parametrize("parser,counts,expect", [
    # official: 3 TP, 4 TN, 5 FN, 6 FP, 7 TP, 8 TN, 9 TP, 10 FP ("NO"), 11 TP ("Nope"), 12 FP ("")
    ("official", dict(tp=4, fp=3, tn=2, fn=1, unknown=0, unknown_yes=0),
     dict(accuracy=F(6, 10), precision=F(4, 7), recall=F(4, 5), f1=F(2, 3), yes_ratio=F(7, 10))),
    # lmms exact match: only 6..10 are parsed (6 FP, 7 TP, 8 TN, 9 TP, 10 TN); 3,4,5,11,12 unknown
    # (3, 5, 11 have label yes). Unknowns: wrong in accuracy, not in P/R: recall = 2/(2+0).
    ("lmms", dict(tp=2, fp=1, tn=2, fn=0, unknown=5, unknown_yes=3),
     dict(accuracy=F(4, 10), precision=F(2, 3), recall=F(1), f1=F(4, 5), yes_ratio=F(3, 10))),
    # vlmevalkit: 3 TP, 4 TN, 5 FN, 6 FP, 7 TP, 8 TN, 9 TP, 10 TN; 11 ("Nope", yes) and 12 ("", no) unknown.
    # Unknown = predicted No in F1: recall = 3/(3+1+1).
    ("vlmevalkit", dict(tp=3, fp=1, tn=3, fn=1, unknown=2, unknown_yes=1),
     dict(accuracy=F(6, 10), precision=F(3, 4), recall=F(3, 5), f1=F(2, 3), yes_ratio=F(4, 10))),
])
def test_metrics_on_sample_by_hand(parser, counts, expect):
    questions = read_questions(SAMPLES / "pope_random_sample.jsonl")
    preds = [PopePrediction(q.question_id, ANSWERS[q.question_id]) for q in questions]
    qfile = SAMPLES / "pope_random_sample.jsonl"
    r = score_predictions(questions, preds, parser, prompt_suffix="", question_file=qfile)
    assert {k: r[k] for k in counts} == counts and r["n"] == 10
    for k, v in expect.items():
        assert r[k] == pytest.approx(float(v)), k
    assert r["parser"] == parser and r["prompt_suffix"] == "" and r["aggregation"] == "single_split"
    assert r["question_file"] == {"name": "pope_random_sample.jsonl", "count": 10}


def test_yes_ratio_counts_predictions_not_labels():
    # Balanced labels, all answered yes: lmms-eval's label-based ratio would say 0.5; the model's is 1.0.
    r = score(["yes", "no", "yes", "no"], ["yes"] * 4)
    assert r["yes_ratio"] == 1.0 and r["precision"] == 0.5 and r["recall"] == 1.0


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="labels but"):
        score(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="item 0"):
        score(["maybe"], ["yes"])


def test_aggregate_mean_of_split_f1_vs_pooled():
    rnd = read_questions(SAMPLES / "pope_random_sample.jsonl")
    pop = read_questions(SAMPLES / "pope_popular_sample.jsonl")
    r1 = score_predictions(rnd, [PopePrediction(q.question_id, ANSWERS[q.question_id]) for q in rnd])
    r2 = score_predictions(pop, [PopePrediction(q.question_id, "No") for q in pop])  # tn=5, fn=5, F1 = 0
    agg = aggregate({"random": r1, "popular": r2})
    assert agg["f1"] == pytest.approx((2 / 3 + 0) / 2)  # LLaVA: mean of split F1s
    # pooled: tp=4, fp=3, tn=7, fn=6 -> P=4/7, R=4/10, F1 = 2PR/(P+R) = 8/17
    assert {k: agg["pooled"][k] for k in ("tp", "fp", "tn", "fn", "n")} == dict(tp=4, fp=3, tn=7, fn=6, n=20)
    assert agg["pooled"]["f1"] == pytest.approx(8 / 17)
    assert agg["accuracy"] == pytest.approx(0.55) and agg["yes_ratio"] == pytest.approx(0.35)
    assert agg["aggregation"] == "mean_of_splits" and set(agg["splits"]) == {"random", "popular"}
    with pytest.raises(ValueError, match="different parsers"):
        aggregate({"a": r1, "b": {**r2, "parser": "lmms"}})


def test_read_both_layouts_and_legacy_file():
    legacy = read_questions(SAMPLES / "pope_random_legacy2910_sample.jsonl")
    assert [q.question_id for q in legacy] == list(range(3, 13))
    assert legacy[8].text == "Is there an umbrella in the imange?"  # the typo is kept verbatim
    assert {q.split for q in legacy} == {"random"}  # from the file name
    seem = read_questions(SAMPLES / "pope_aokvqa_seem_random_sample.json")  # one JSON array
    assert [q.label for q in seem] == ["yes"] * 3 + ["no"] * 3
    assert seem[4].text == "Is there an elephant in the image?"
    gqa = read_questions(SAMPLES / "pope_gqa_seem_random_sample.json", split="x")
    assert gqa[0].image == "2405722.jpg" and {q.split for q in gqa} == {"x"}


def test_read_questions_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    good = '{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}\n'
    bad.write_text(good + '{"question_id": 2, "image": "a.jpg", "text": "t", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: field 'label'"):
        read_questions(bad)
    bad.write_text(good + "\n" + '{"question_id": 3, "image": "a.jpg"\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:3: invalid JSON"):
        read_questions(bad)
    bad.write_text('{"question_id": 1, "image": "a.jpg", "label": "no"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:1: field 'text': missing"):
        read_questions(bad)


def test_read_questions_keeps_images_inside_image_root(tmp_path):
    root = tmp_path / "coco"
    (root / "sub").mkdir(parents=True)
    q = tmp_path / "q.jsonl"
    rows = [{"question_id": 1, "image": "a.jpg", "text": "t", "label": "yes"},
            {"question_id": 2, "image": "sub/../b.jpg", "text": "t", "label": "no"}]  # stays inside: fine
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [x.image for x in read_questions(q, image_root=root)] == ["a.jpg", "sub/../b.jpg"]
    for bad in ("../x.jpg", "sub/../../x.jpg", str(tmp_path / "x.jpg")):
        q.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**rows[0], "image": bad}]))
        with pytest.raises(ValueError, match=r"q\.jsonl:3: field 'image': media path .* escapes the media root"):
            read_questions(q, image_root=root)
        assert len(read_questions(q)) == 3  # no image_root: nothing checked (scoring an answers file)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_answers_matched_by_id_or_position(tmp_path):
    questions = read_questions(SAMPLES / "pope_random_sample.jsonl")
    rows = [{"question_id": q, "answer": a} for q, a in ANSWERS.items()]
    by_id = read_answers(_write_jsonl(tmp_path / "a.jsonl", rows[::-1]), questions)  # shuffled order
    assert [p.answer for p in by_id] == list(ANSWERS.values())
    llava = read_answers(_write_jsonl(tmp_path / "l.jsonl", [{"question_id": 3, "text": "Yes"}] + [
        {"question_id": q, "text": "No"} for q in range(4, 13)]), questions)  # LLaVA's key is "text"
    assert llava[0].answer == "Yes" and llava[1].answer == "No"
    by_pos = read_answers(_write_jsonl(tmp_path / "p.jsonl", [{"answer": a} for a in ANSWERS.values()]), questions)
    assert [(p.question_id, p.answer) for p in by_pos] == list(ANSWERS.items())


def test_answers_and_questions_holding_unicode_line_separators(tmp_path):
    """U+2028 / U+0085 are line ends for str.splitlines() but plain characters in a JSON string."""
    questions = read_questions(SAMPLES / "pope_random_sample.jsonl")
    odd = {q: a + " \u2028(really)\u0085" for q, a in ANSWERS.items()}
    text = "".join(json.dumps({"question_id": q, "answer": a}, ensure_ascii=False) + "\n" for q, a in odd.items())
    (tmp_path / "a.jsonl").write_text(text, encoding="utf-8")
    assert "\u2028" in text and len(text.splitlines()) == 30  # raw in the file: 10 lines, 30 for splitlines
    assert [p.answer for p in read_answers(tmp_path / "a.jsonl", questions)] == list(odd.values())
    r = score_answers_file(SAMPLES / "pope_random_sample.jsonl", tmp_path / "a.jsonl", parser="official")
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (4, 3, 2, 1)  # as the plain answers: parsed text unchanged
    rows = [{"question_id": 1, "image": "a.jpg", "text": "Is there a\u2028cat\u0085?", "label": "yes"}] * 2
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [q.text for q in read_questions(qfile)] == [rows[0]["text"]] * 2


def test_write_answers_round_trip_keeps_logit_margin(tmp_path):
    questions = read_questions(SAMPLES / "pope_random_sample.jsonl")
    preds = [PopePrediction(q.question_id, "yes" if i % 3 else "no", q.split, margin=0.5 - i)
             for i, q in enumerate(questions)]
    path = write_answers(tmp_path / "run" / "predictions.jsonl", preds[:4])
    write_answers(path, preds[4:], append=True)  # a resumed run appends
    assert read_answers(path, questions) == preds


def test_answer_count_and_id_errors(tmp_path):
    questions = read_questions(SAMPLES / "pope_random_sample.jsonl")
    nine = _write_jsonl(tmp_path / "nine.jsonl", [{"answer": "yes"}] * 9)
    with pytest.raises(ValueError, match="9 answers without question_id for 10 questions"):
        read_answers(nine, questions)  # POPE#17: no silent misalignment
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"question_id": 3, "answer": "yes"}] * 2)
    with pytest.raises(ValueError, match=r"dup\.jsonl:2: question_id 3 answered twice"):
        read_answers(dup, questions)
    extra = [{"question_id": q, "answer": "yes"} for q in range(3, 13)] + [{"question_id": 10000003, "answer": "no"}]
    path = _write_jsonl(tmp_path / "extra.jsonl", extra)
    with pytest.raises(ValueError, match="10000003 is not in the question file"):
        read_answers(path, questions)
    assert len(read_answers(path, questions, allow_extra=True)) == 10
    missing = _write_jsonl(tmp_path / "missing.jsonl", extra[:9])
    with pytest.raises(ValueError, match="1 questions have no answer"):
        read_answers(missing, questions)


def test_score_answers_file_end_to_end(tmp_path):
    answers = _write_jsonl(tmp_path / "a.jsonl", [{"question_id": q, "answer": a} for q, a in ANSWERS.items()])
    r = EVALUATORS["pope"].score_file(SAMPLES / "pope_random_sample.jsonl", answers, parser="official")
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (4, 3, 2, 1) and r["f1"] == pytest.approx(2 / 3)
    # A file holding several splits (LLaVA's llava_pope_test layout has a `category` field) is aggregated.
    rows = [json.loads(line) for line in (SAMPLES / "pope_random_sample.jsonl").read_text().splitlines()]
    multi = [{**r, "question_id": 100 + r["question_id"], "category": "popular"} for r in rows]
    qfile = _write_jsonl(tmp_path / "q.jsonl", [{**r, "category": "random"} for r in rows] + multi)
    afile = _write_jsonl(tmp_path / "b.jsonl", [{"question_id": r["question_id"], "answer": "Yes"}
                                                for r in rows + multi])
    agg = score_answers_file(qfile, afile, parser="lmms", prompt_suffix=PROMPT_SUFFIXES["llava"])
    assert agg["aggregation"] == "mean_of_splits" and set(agg["splits"]) == {"random", "popular"}
    assert agg["f1"] == pytest.approx(2 / 3) and agg["pooled"]["n"] == 20 and agg["parser"] == "lmms"
    assert agg["question_files"]["random"] == {"name": "q.jsonl", "count": 10}


def test_report_files(tmp_path):
    from mmpo.eval.report import write_pope_report

    rnd = read_questions(SAMPLES / "pope_random_sample.jsonl")
    preds = [PopePrediction(q.question_id, ANSWERS[q.question_id]) for q in rnd]
    r = score_predictions(rnd, preds, "official", "", SAMPLES / "pope_random_sample.jsonl")
    out = write_pope_report(tmp_path, aggregate({"random": r, "popular": r}))
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["yes_ratio"] == pytest.approx(0.7)
    md = out["report"].read_text()
    assert "| random | 60.00 | 57.14 | 80.00 | 66.67 | 70.00 | 4 | 3 | 2 | 1 | 0 | 10 |" in md
    assert "- parser: `official`" in md
    assert "- question file (random): `pope_random_sample.jsonl`, 10 questions" in md
    for key in ("splits_plot", "confusion_plot"):
        assert out[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
