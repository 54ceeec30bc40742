"""HallusionBench: the scorer against the reference harnesses' keyword rules on the vendored excerpt with tricky
answers, the file layout, bad input, and the runner on a tiny model (generate and logits).

Expected values are worked by hand from the reference code's rules (issue 27 item 4): lmms-eval
`tasks/hallusion_bench/evaluate_hb.py::hb_aggregation_result_intern` ("yes" anywhere -> "1"; qAcc groups
category_subcategory_set_id_question_id, fAcc groups category_subcategory_set_id_figure_id, a group counts when
all its answers are right) and VLMEvalKit `yorn.py::YOrN_Extraction` + `Hallusion_rating` (Unknown is wrong).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import COLORS, SAMPLES, color_image, yes_no_model

from mmpo.app.cli import main
from mmpo.config import ConfigError, ModelConfig, load
from mmpo.eval import EVALUATORS, hallusionbench
from mmpo.eval.hallusionbench_runner import HallusionBenchEvalConfig, run_hallusionbench
from mmpo.models import load_model

SAMPLE = SAMPLES / "hallusionbench_sample.json"
# one prediction per excerpt item, in file order; (gt, lmms verdict, vlmevalkit verdict) in the comment
TRICKY = [
    "Yes, they are the same size.",  # 1: right / right
    "No.",  # 0: right / right
    "The eyes deceive: no.",  # 0: lmms reads "yes" inside "eyes" -> wrong / words say no -> right
    "Yes and no.",  # 0: wrong / both words: Unknown -> wrong
    "YES",  # 1: right / right
    "Not really.",  # 0: no "yes" -> "0", right / neither word: Unknown -> wrong
    "no",  # 0: right / right
    "Yes.",  # 1: right / right
    "yes",  # VS map, no image, 1: right / right
    "no",  # 0: right / right
    "Nope",  # 0: right / Unknown -> wrong
    "I cannot tell.",  # 0: right / Unknown -> wrong
    "Yes",  # 0: wrong / wrong
    "yes, Arizona",  # 1: right / right
    "No",  # 0: right / right
    "No",  # 0: right / right
    "Yes",  # VS ocr, no image, 1: right / right
    "Yes",  # 0: wrong / wrong
    "No, it ranges from 3.1615926.",  # 0: right / right
    "yes",  # 1: right / right
]


def _answers(tmp_path, predictions=TRICKY, drop=()) -> Path:
    items = json.loads(SAMPLE.read_text())
    rows = [{**it, "model_prediction": p} for i, (it, p) in enumerate(zip(items, predictions)) if i not in drop]
    path = tmp_path / "HallusionBench_result.json"
    path.write_text(json.dumps(rows, indent=4))
    return path


def test_excerpt_reads_as_the_release_lays_it_out():
    qs = hallusionbench.read_questions(SAMPLE)
    assert len(qs) == 20 and [q.category for q in qs].count("VD") == 8
    assert qs[0].key == ("VD", "illusion", "0", "0", "0") and qs[0].gt_answer == "1"
    assert qs[0].filename == "./hallusion_bench/VD/illusion/0_0.png"
    assert sum(q.filename is None for q in qs) == 6  # VS figure 0 asked without an image


def test_lmms_rule_on_tricky_answers(tmp_path):
    m = hallusionbench.score_answers_file(SAMPLE, _answers(tmp_path))
    # 16 of 20 right (wrong: "eyes", "Yes and no.", and two "Yes" for "0")
    assert (m["aAcc"], m["n_correct"], m["n_questions"]) == (16 / 20, 16, 20)
    # pairs: VD set 0 q1, set 4 q0, map q1-q3, ocr q0 of 10
    assert (m["qAcc"], m["n_pairs_correct"], m["n_question_pairs"]) == (6 / 10, 6, 10)
    # figures: VD set 4 figures 0 and 1, map figure 0 (no image), ocr figure 1 of 8
    assert (m["fAcc"], m["n_figures_correct"], m["n_figures"]) == (4 / 8, 4, 8)
    vd, vs = m["categories"]["VD"], m["categories"]["VS"]
    assert (vd["aAcc"], vd["qAcc"], vd["fAcc"]) == (6 / 8, 2 / 4, 2 / 4)
    assert (vs["aAcc"], vs["qAcc"], vs["fAcc"]) == (10 / 12, 4 / 6, 2 / 4)
    assert set(m["subcategories"]) == {"VD/illusion", "VS/map", "VS/ocr"}
    assert m["subcategories"]["VS/ocr"]["qAcc"] == 1 / 2 and m["n_unknown"] == 0
    assert m["n_unanswered"] == 0 and m["n_not_asked_no_image"] == 0
    assert EVALUATORS["hallusionbench"].score_file is hallusionbench.score_answers_file


def test_vlmevalkit_rule_on_tricky_answers(tmp_path):
    m = hallusionbench.score_answers_file(SAMPLE, _answers(tmp_path), parser="vlmevalkit")
    assert (m["aAcc"], m["n_unknown"]) == (14 / 20, 4)  # Unknown: "Yes and no.", "Not really.", "Nope", "I cannot tell."
    assert (m["qAcc"], m["fAcc"]) == (4 / 10, 4 / 8)
    assert [hallusionbench.judge(t, "vlmevalkit") for t in ("The eyes deceive: no.", "Yes and no.")] == ["0", "unknown"]
    assert [hallusionbench.judge(t) for t in ("The eyes deceive: no.", "Yes and no.", "Nope")] == ["1", "1", "0"]


def test_cli_scores_a_file_and_its_image_questions(tmp_path, capsys):
    no_image = [i for i, it in enumerate(json.loads(SAMPLE.read_text())) if "filename" not in it]
    answers = _answers(tmp_path, drop=no_image)  # what a run writes: the image questions only
    assert main(["eval", "hallusionbench", "--questions", str(SAMPLE), "--answers", str(answers),
                 "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["n_questions"], m["n_not_asked_no_image"]) == (14, 6)
    answers = _answers(tmp_path, drop=[0, 1])  # two image questions unanswered
    assert main(["eval", "hallusionbench", "--questions", str(SAMPLE), "--answers", str(answers)]) == 1
    assert "2 questions have no answer (20 asked; first ids: ['VD_illusion_0_0_0', 'VD_illusion_0_0_1'])" in \
        capsys.readouterr().err
    assert main(["eval", "hallusionbench", "--questions", str(SAMPLE), "--answers", str(answers),
                 "--unanswered", "skip"]) == 0
    assert json.loads(capsys.readouterr().out)["n_unanswered"] == 2


def test_bad_files_name_the_item(tmp_path):
    items = json.loads(SAMPLE.read_text())
    items[3]["gt_answer"] = "yes"
    (tmp_path / "q.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match=r"q\.json: item 3: field 'gt_answer': expected \"1\" \(yes\) or \"0\""):
        hallusionbench.read_questions(tmp_path / "q.json")
    items = json.loads(SAMPLE.read_text())
    items.append(dict(items[0]))
    (tmp_path / "q.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match="item 20: question VD_illusion_0_0_0 appears twice"):
        hallusionbench.read_questions(tmp_path / "q.json")
    rows = json.loads(_answers(tmp_path).read_text())
    rows[2]["model_prediction"] = 1
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="a.json: item 2: field 'model_prediction': expected a string"):
        hallusionbench.score_answers_file(SAMPLE, tmp_path / "a.json")
    with pytest.raises(ConfigError, match="parser"):
        load(HallusionBenchEvalConfig, None, ["parser=gpt4"])


@pytest.fixture(scope="module")
def hb_world(tmp_path_factory):
    """The excerpt with one colour image per figure, and a tiny llava trained to answer colour questions."""
    root = tmp_path_factory.mktemp("hb")
    items = json.loads(SAMPLE.read_text())
    for i, name in enumerate(sorted({it["filename"] for it in items if "filename" in it})):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        color_image(COLORS[i % 4], seed=i).save(root / name)
    path = yes_no_model("llava", root)
    return {"root": root, "model_path": path, "loaded": load_model(ModelConfig(path=str(path), device="cpu"))}


@pytest.mark.parametrize("mode", ["generate", "logits"])
def test_runner_asks_the_image_questions_and_rescores_the_same(hb_world, mode):
    root = hb_world["root"]
    cfg = HallusionBenchEvalConfig(model=ModelConfig(path=str(hb_world["model_path"]), device="cpu"),
                                   questions=str(SAMPLE), image_root=str(root), out_dir=str(root / f"out_{mode}"),
                                   mode=mode, max_new_tokens=4, batch_size=4)
    m = run_hallusionbench(cfg, *hb_world["loaded"])
    out = Path(cfg.out_dir)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 14 and m["n_questions"] == 14 and m["n_not_asked_no_image"] == 6  # image questions only
    if mode == "logits":
        assert {r["answer"] for r in rows} <= {"Yes", "No"} and all(isinstance(r["margin"], float) for r in rows)
    again = EVALUATORS["hallusionbench"].score_file(cfg.questions, out / "answers.json")
    assert {k: again[k] for k in ("aAcc", "qAcc", "fAcc", "categories")} == \
        {k: m[k] for k in ("aAcc", "qAcc", "fAcc", "categories")}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    report = (out / "report.md").read_text()
    assert f"| **all** | {100 * m['qAcc']:.2f} | {100 * m['fAcc']:.2f} | {100 * m['aAcc']:.2f} | 14 |" in report
    assert (out / "hallusionbench.png").stat().st_size > 0
    saved = json.loads((out / "answers.json").read_text())
    assert len(saved) == 14 and all("model_prediction" in r for r in saved)
