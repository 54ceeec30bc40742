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


def test_first_entry_before_reads_the_first_frame_each_object_is_seen():
    x, y = [0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]
    assert vm.first_entry_before(x, y) == pytest.approx(1.0)
    assert vm.first_entry_before(y, x) == pytest.approx(0.0)
    assert vm.first_entry_before([0] * 8, [0] * 8) == 0.5  # never seen: no evidence either way
    # unsure frames: x is half-seen at frame 0, y surely at frame 1 -> x first with prob 0.5, else y first
    assert vm.first_entry_before([0.5, 0, 0, 1], [0, 1, 1, 1]) == pytest.approx(0.5)


def _ordered_video(world) -> tuple:
    """A world video with two objects entering at different frames: (frames, first, second)."""
    from mmpo.media import load_video

    for gt in json.loads((world / "video_events.json").read_text()):
        if len(gt["order"]) >= 2:
            return load_video(world / gt["video"], num_frames=vm.NUM_FRAMES), gt["order"][0], gt["order"][1]
    raise AssertionError("the test world has no video with two objects")


def test_order_clip_check_scores_the_claim_against_the_frames_in_order(world):
    """The shipped CLIP sees the world's classes frame by frame: "yes" to "does the first-entering object appear
    before the second?" scores above "no", the frames reversed flip it, and presence follows the objects shown."""
    frames, first, second = _ordered_video(world)
    check = vm.order_clip_check(vm.SHIPPED_CLIP, vm.world_config(world))
    question = f"Does the {first} appear before the {second}?" + vm.VH_SUFFIX
    yes, no, other = check(frames, question, ["Yes.", "no", "a circle"])
    assert yes > 0 > no and yes == pytest.approx(-no) and other == 0.0
    yes_reversed, _, _ = check(frames[::-1].copy(), question, ["yes", "no", "x"])
    assert yes_reversed == pytest.approx(-yes, abs=1e-5)
    absent = next(c for c in vm.world_config(world).classes if c not in (first, second))
    present_yes, absent_yes = (check(frames, f"Is there a {o} in the video?", ["yes"])[0] for o in (first, absent))
    assert present_yes > absent_yes
    assert check(frames, "What is shown in the video?", ["yes", "no"]) == [0.0, 0.0]


def test_frame_judge_answers_from_each_still_frame(world, sft):
    """The per-frame judge: P(yes) to "does x appear before y?" is `first_entry_before` of the model's own
    presence answers on each frame alone (the frame repeated to a clip), P(yes) to "is there a x?" their
    maximum; yes and no scores sum to 11, other text is None."""
    import numpy as np

    _, model_dir = sft
    frames, first, second = _ordered_video(world)
    model, processor = load_model(ModelConfig(path=str(model_dir), num_frames=vm.NUM_FRAMES, device="cpu"))
    judge = vm.frame_judge(model, processor, vm.world_config(world))
    q = f"Does the {first} appear before the {second}?" + vm.VH_SUFFIX
    yes, no, other = judge([(q, "yes"), (q, "No."), (q, "a ring")], [frames] * 3, "video")
    assert yes + no == pytest.approx(11.0) and other is None
    # the same per-frame probabilities through the likelihood judge, one still frame at a time
    stills = [np.repeat(frames[t:t + 1], len(frames), axis=0) for t in range(len(frames))]
    likely = vm.likelihood_judge(model, processor)
    p = {o: [(likely([(f"Is there a {o} in the video?" + vm.VH_SUFFIX, "yes")], [c], "video")[0] - 1) / 9
             for c in stills] for o in (first, second)}
    assert (yes - 1) / 9 == pytest.approx(vm.first_entry_before(p[first], p[second]), abs=1e-4)
    presence_q = [(f"Is there a {first} in the video?" + vm.VH_SUFFIX, "yes")]
    assert (judge(presence_q, [frames], "video")[0] - 1) / 9 == pytest.approx(max(p[first]), abs=1e-4)
    # still_presence=False: presence from the whole clip (the likelihood judge), order still from the stills
    mixed = vm.frame_judge(model, processor, vm.world_config(world), still_presence=False)
    assert mixed(presence_q, [frames], "video")[0] == pytest.approx(likely(presence_q, [frames], "video")[0], abs=1e-4)
    assert mixed([(q, "yes")], [frames], "video")[0] == pytest.approx(yes, abs=1e-4)
