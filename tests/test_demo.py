"""The reduced demo end to end: every stage writes its files, and the reported numbers come from predictions."""

import json
import re

import pytest


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path):
    from mmpo.demo import pipeline
    from mmpo.eval import chair, pope, pope_metrics, videohallucer_metrics

    result = pipeline.run(tmp_path, quick=True)
    for rel in ("world/annotations.json", "world/sft.jsonl", "models/llava/config.json", "models/clip",
                "world/pope/coco_pope_adversarial.json", "eval/sft/predictions.jsonl", "pairs/difficulty/pairs.jsonl",
                "pairs/video_augment/pairs.jsonl", "pairs/video_pami_dpo.jsonl", "pairs/video_self_qa/pairs.jsonl",
                "runs/video_pamivdpo_dpo_seed0/adapter",
                "runs/video_dpo_seed0/adapter", "runs/video_pamivdpo_seed0/adapter",
                "eval/video_sft/metrics.json", "report.md", "pope_f1.png", "training_curves.png", "results.json",
                "videohallucer.png"):
        assert (tmp_path / rel).exists(), rel
    for method in pipeline.METHODS:
        assert (tmp_path / "runs" / f"{method.name.lower().replace('-', '')}_seed0" / "adapter").is_dir()

    # the "before" numbers are exactly what the official scorer gives on the written answers
    for split, metrics in result["before"].items():
        qs = pope.read_questions(tmp_path / "world" / "pope" / f"coco_pope_{split}.json")
        rescored = pope_metrics.score_answers_file(tmp_path / "world" / "pope" / f"coco_pope_{split}.json",
                                           tmp_path / "eval" / "sft" / f"answers_{split}.jsonl")
        assert rescored["f1"] == pytest.approx(metrics["f1"]) and rescored["n"] == len(qs)
    report = (tmp_path / "report.md").read_text()
    assert "SFT (before)" in report and all(m.name in report for m in pipeline.METHODS)
    assert "PaMi-VDPO" in report
    # so are the video SFT model's, from the reference-layout results files
    for cat in ("object_relation", "temporal"):
        rescored = videohallucer_metrics.score_answers_file(
            tmp_path / "video" / "eval_world" / "videohallucer" / cat / f"{cat}.json",
            tmp_path / "eval" / "video_sft" / "results" / f"{cat}.json")
        assert rescored["pair_accuracy"] == pytest.approx(result["video"]["before"][cat]["pair_accuracy"])
    # and the CHAIR columns, from the captions each model wrote, against the world's own object list
    assert "CHAIR_s" in report and set(result["chair"]) == {"SFT"} | {m.name for m in pipeline.METHODS}
    for name, folder in [("SFT", "sft_chair"), ("DPO", "dpo_seed0_chair")]:
        got = result["chair"][name] if name == "SFT" else result["chair"][name][0]
        rescored = chair.score_answers_file(tmp_path / "world" / "annotations.json",
                                            tmp_path / "eval" / folder / "answers.jsonl", vocabulary="categories")
        assert rescored["n_captions"] == got["n_captions"] == 40  # every held-out image of the quick world
        assert (rescored["chair_i"], rescored["chair_s"]) == pytest.approx((got["chair_i"], got["chair_s"]))
    # VideoSAVi trains when its 4-step model kept any pair (it may name no object to ask about)
    savi_kept = bool((tmp_path / "pairs" / "video_self_qa" / "pairs.jsonl").read_text().strip())
    assert (tmp_path / "runs" / "video_videosavi_seed0" / "adapter").is_dir() == savi_kept
    assert set(result["video"]["after"]) == {"DPO", "PaMi-VDPO", "PaMi-VDPO + DPO"} | ({"VideoSAVi"} if savi_kept else set())
    assert not re.search(r"± 0\.0+(?![0-9])", report) and "1 seed" in report  # one seed: no made-up "± 0.0"
    # the counter-prior split is scored from the written answers
    assert set(result["video"]["before"]["temporal_by_prior"]) <= {"prior", "counter", "none"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["after"]) == {m.name for m in pipeline.METHODS}


def test_demo_output_folder_is_cleaned_only_when_it_is_a_demo_folder(tmp_path):
    from mmpo.demo.pipeline import prepare_out

    foreign = tmp_path / "mine"
    (foreign / "eval").mkdir(parents=True)
    (foreign / "eval" / "keep.py").write_text("x")
    with pytest.raises(ValueError, match="no earlier demo output"):
        prepare_out(foreign)
    assert (foreign / "eval" / "keep.py").exists()

    demo = prepare_out(tmp_path / "demo")  # new folder: marked as a demo folder
    (demo / "eval" / "old").mkdir(parents=True)
    (demo / "notes.txt").write_text("user file")
    prepare_out(demo)
    assert not (demo / "eval").exists() and (demo / "notes.txt").exists()
