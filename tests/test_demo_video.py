"""The demo's video recipe end to end on a tiny world: SFT checkpoint, PaMi bags, PaMi-VDPO adapter.

Steps are few (seconds on one CPU thread); the real recipe's numbers are in benchmarks/LOG.md.
"""

import json

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


def test_suffix_is_videohallucers():
    from eval.videohallucer import PROMPT_SUFFIX

    assert vm.VH_SUFFIX == PROMPT_SUFFIX  # duplicated in mmpo core (no eval import); must stay equal


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
    qa = [r["prompt"] for r in rows if r["answer"] in ("yes", "no")]
    caps = [r for r in rows if r["prompt"] == vm.CAPTION_Q]
    assert qa and all(p.endswith(vm.VH_SUFFIX) for p in qa)
    assert len(caps) == 6 and all(r["answer"].startswith("There is") for r in caps)  # one caption per video


def test_eval_world_is_held_out(world, tmp_path):
    vh = vm.video_eval_world(world, tmp_path / "ev", n_videos=4, co_prob=0.0)
    pairs = json.loads((vh / "object_relation" / "object_relation.json").read_text())
    assert len(pairs) == 4 and (tmp_path / "ev" / "videos" / pairs[0]["basic"]["video"]).exists()
    held = (tmp_path / "ev" / "videos" / "00000.mp4").read_bytes()
    assert held != (world / "videos" / "00000.mp4").read_bytes()  # another seed: other videos


def test_pami_pairs_and_training_write_an_adapter(world, sft, tmp_path):
    from data_builders.augment import AugmentConfig, build

    out, model_dir = sft
    pairs_path = vm.pami_pairs(out / "sft_video_vh.jsonl", world, tmp_path / "pairs",
                               lambda **kw: build(AugmentConfig(**kw)), num_candidates=2)
    pairs = read_pairs(pairs_path, world)
    assert pairs and all(p.chosen == p.rejected and len(p.rejected_bag) == 2 for p in pairs)
    both = read_pairs(vm.with_wrong_answers(pairs_path, tmp_path / "both.jsonl"), world)
    assert both and len(both) < len(pairs)  # caption pairs dropped
    assert all({p.chosen, p.rejected} == {"yes", "no"} and len(p.rejected_bag) == 2 for p in both)
    adapter = vm.train_pami(model_dir, tmp_path / "both.jsonl", tmp_path / "pref", world, steps=2, lr=1e-3)
    assert (adapter / "adapter_config.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "pref" / "metrics.jsonl").read_text().splitlines()]
    assert "pami/kept_fraction" in rows[-1] and "rewards/margins" in rows[-1]  # both terms of PAMI_LOSS ran
