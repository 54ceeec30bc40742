"""The demo's video recipe end to end on a tiny world: SFT checkpoint, PaMi bags, PaMi-VDPO adapter.

Steps are few (seconds on one CPU thread); the real recipe's numbers are in benchmarks/LOG.md.
"""

import json
import re

import pytest
import torch

from mmpo.config import ModelConfig
from mmpo.demo import video_models as vm
from mmpo.demo.world import WorldConfig, build_world
from mmpo.models import load_model
from mmpo.records import read_pairs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("vworld")
    build_world(WorldConfig(seed=0, n_images=2, n_test_images=2, n_videos=6), out, videos=True)
    return out


@pytest.fixture(scope="module")
def sft(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("vsft")
    return out, vm.train_video_model(world, out, seed=0, steps=12, batch_size=8, lr=3e-3, clip_steps=3)


def test_sft_checkpoint_loads_and_loss_falls(sft):
    out, model_dir = sft
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 and rows[-1]["loss"] < 0.75 * rows[0]["loss"]
    model, _ = load_model(ModelConfig(path=str(model_dir), device="cpu"))
    assert model.config.vision_feature_layer == -1  # pretrained CLIP tower: its last layer
    assert model.config.video_seq_length == vm.NUM_FRAMES * (vm.IMAGE_SIZE // (vm.IMAGE_SIZE // 4)) ** 2 // 4
    # the tower stayed frozen: equal to the random init
    init, _ = load_model(ModelConfig(path=str(out / "init"), device="cpu"))
    for a, b in zip(model.model.vision_tower.parameters(), init.model.vision_tower.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (out / "sft_video_vh.jsonl").read_text().splitlines()]
    qa = [r["prompt"] for r in rows if r["meta"]["kind"] in ("qa", "order")]
    caps = [r for r in rows if r["prompt"] == vm.CAPTION_Q]
    assert qa and all(p.endswith(vm.VH_SUFFIX) for p in qa)
    assert len(caps) == 6 and all(r["answer"].startswith("First a") for r in caps)  # one caption per video
    assert not [r for r in rows if r["meta"]["kind"] == "judge"]  # off by default (JUDGE_RECORDS = 0)


def test_judge_records_say_yes_exactly_when_the_candidate_is_true(world, tmp_path):
    rows = [json.loads(line) for line in vm.suffixed_sft(world, tmp_path / "s.jsonl", judge=2).read_text().splitlines()]
    judge = [r for r in rows if r["meta"]["kind"] == "judge"]
    assert len(judge) == 6 * 2 and {r["answer"] for r in judge} == {"yes", "no"}
    for r in judge:
        question, candidate = re.match(r"Question: (.*) Answer: (yes|no) Is this", r["prompt"], re.S).groups()
        truth = next(x["answer"] for x in rows if x["prompt"] == question and x["media"] == r["media"])
        assert r["answer"] == ("yes" if candidate == truth else "no")


def test_eval_world_is_held_out(world, tmp_path):
    vh = vm.video_eval_world(world, tmp_path / "ev", n_videos=4, co_prob=0.0)
    pairs = json.loads((vh / "object_relation" / "object_relation.json").read_text())
    assert len(pairs) == 4 and (tmp_path / "ev" / "videos" / pairs[0]["basic"]["video"]).exists()
    held = (tmp_path / "ev" / "videos" / "00000.mp4").read_bytes()
    assert held != (world / "videos" / "00000.mp4").read_bytes()  # another seed: other videos


def test_pami_pairs_and_training_write_an_adapter(world, sft, tmp_path):
    out, model_dir = sft
    pairs_path = vm.pami_pairs(out / "sft_video_vh.jsonl", world, tmp_path / "pairs", num_candidates=2)
    pairs = read_pairs(pairs_path, world)
    assert pairs and all(p.chosen == p.rejected and len(p.rejected_bag) == 2 for p in pairs)
    both = read_pairs(vm.with_wrong_answers(pairs_path, tmp_path / "both.jsonl"), world)
    assert both and len(both) < len(pairs)  # caption pairs dropped
    assert all({p.chosen, p.rejected} == {"yes", "no"} and len(p.rejected_bag) == 2 for p in both)
    adapter = vm.train_pami(model_dir, tmp_path / "both.jsonl", tmp_path / "pref", world, steps=2, lr=1e-3)
    assert (adapter / "adapter_config.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "pref" / "metrics.jsonl").read_text().splitlines()]
    assert "pami/kept_fraction" in rows[-1] and "rewards/margins" in rows[-1]  # both terms of PAMI_LOSS ran


def test_prior_breakdown_scores_each_tag(tmp_path):
    """Pair accuracy per prior tag from a run's reference results file, scored with the reference hit rule."""

    (tmp_path / "run" / "results").mkdir(parents=True)
    (tmp_path / "vh" / "temporal").mkdir(parents=True)
    side = lambda a, p: {"video": "v.mp4", "question": "q", "answer": a, "predict": p}  # noqa: E731
    rows = [{"basic": side("yes", "yes"), "hallucination": side("no", "no")},     # prior: both right
            {"basic": side("yes", "yes"), "hallucination": side("no", "yes")},    # counter: follows the prior
            {"basic": side("yes", "No."), "hallucination": side("no", "no")},     # counter: right on one side
            {"basic": side("yes", "Yes"), "hallucination": side("no", "no")}]     # none
    (tmp_path / "run" / "results" / "temporal.json").write_text(json.dumps(rows))
    (tmp_path / "vh" / "temporal" / "prior.json").write_text(json.dumps(["prior", "counter", "counter", "none"]))
    got = vm.prior_breakdown(tmp_path / "run", tmp_path / "vh")
    assert got["prior"]["pair_accuracy"] == 1.0 and got["none"]["n_pairs"] == 1
    assert got["counter"] == {"basic_accuracy": 0.5, "hallucinated_accuracy": 0.5, "pair_accuracy": 0.0, "n_pairs": 2}


def test_savi_questions_come_from_what_the_model_named():
    import numpy as np

    from mmpo.demo.world import WorldConfig

    cfg = WorldConfig()
    named = vm.named_objects("First a red circle appears, then a green triangle, then a blue square.", cfg.classes)
    assert named == ["circle", "triangle", "square"]
    for seed in range(10):
        order_q, presence_q = vm.savi_questions(named, cfg, np.random.default_rng(seed))
        # the named co-occurring pair (circle, square) is the order question, in either direction
        assert order_q.split("\n")[0] in ("Does the circle appear before the square?",
                                          "Does the square appear before the circle?")
        # presence: the partner of a named object that the model did not name (triangle -> cross)
        assert presence_q.startswith("Is there a cross in the video?") and presence_q.endswith(vm.VH_SUFFIX)
    assert vm.savi_questions([], cfg, np.random.default_rng(0)) == []


def test_savi_pairs_with_a_fixed_asker_and_the_likelihood_judge(world, sft, tmp_path):
    """VideoSAVi through the self_qa builder: the unlabelled videos are new ones, every question is answered at
    the 4 temperatures, the likelihood judge scores yes/no as 1 + 9 P (the two sum to 11) and other text as
    unusable; kept pairs are best vs worst judged and train with DPO."""
    from mmpo.media import load_video

    out, model_dir = sft
    videos = vm.unlabelled_videos(world, tmp_path / "unl", n_videos=2)
    assert (tmp_path / "unl" / "videos" / "00000.mp4").read_bytes() != (world / "videos" / "00000.mp4").read_bytes()
    questions = ["Does the circle appear before the square?" + vm.VH_SUFFIX, "Is there a ring in the video?" + vm.VH_SUFFIX]
    model, processor = load_model(ModelConfig(path=str(model_dir), num_frames=vm.NUM_FRAMES, device="cpu"))
    judge = vm.likelihood_judge(model, processor)
    clip = load_video(tmp_path / "unl" / "videos" / "00000.mp4", num_frames=vm.NUM_FRAMES)
    yes, no, other = judge([(questions[0], "yes"), (questions[0], "No."), (questions[0], "a ring")], [clip] * 3, "video")
    assert yes + no == pytest.approx(11.0) and other is None

    pairs = vm.savi_pairs(model_dir, world, videos, tmp_path / "sq", min_gap=0.0, judge="likelihood",
                          ask=lambda index, media, word: list(questions))
    counts = json.loads((pairs.parent / "manifest.json").read_text())["counts"]
    assert counts["answers"] == 2 * len(questions) * 4
    kept = read_pairs(pairs, tmp_path / "unl")
    assert len(kept) == counts["pairs"]
    for p in kept:
        assert p.prompt in questions and p.chosen != p.rejected
        assert p.scores["judge_chosen"] >= p.scores["judge_rejected"]
    if kept:
        adapter = vm.train_pami(model_dir, pairs, tmp_path / "savi", tmp_path / "unl", steps=2, loss=vm.SAVI_LOSS)
        assert (adapter / "adapter_config.json").exists()
