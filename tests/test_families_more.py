"""The new families' user settings and edges: image resolution (`model.min_pixels` / `max_pixels` /
`image_longest_edge`) on shrunk real-format Qwen-VL and SmolVLM checkpoints, checked against the processor's own
encoding; several images in the CLIP-based builders."""

import numpy as np
import pytest
from helpers import real_format_model
from PIL import Image

from mmpo.batches import PairCollator
from mmpo.config import ConfigError, ModelConfig
from mmpo.lengths import MediaTokens, record_length
from mmpo.models import load_model
from mmpo.records import PairRecord, read_pairs, write_jsonl

SMALLER = {"qwen2_5_vl": dict(max_pixels=2000), "qwen3_vl": dict(max_pixels=2000),
           "idefics3": dict(image_longest_edge=64)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("families_more")
    return {f: real_format_model(f, root) for f in SMALLER}


def _one_image_record(root):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(root / "img/a.png")
    rec = PairRecord(id="a", media=("img/a.png",), media_type="image", prompt="What is it?", chosen="A cat.",
                     rejected="A dog.")
    write_jsonl(root / "p.jsonl", [rec])
    return read_pairs(root / "p.jsonl", root)[0]


def _image_tokens(proc, batch) -> int:
    ids = batch.prompt["input_ids"][0][batch.prompt["attention_mask"][0].bool()]
    return int((ids == proc.tokenizer.convert_tokens_to_ids(proc.image_token)).sum())


def _lengths(path, root, rec, **settings):
    """(pre-flight length, collated prompt+answer length, image tokens in the collated prompt)."""
    _, proc = load_model(ModelConfig(path=str(path), device="cpu", **settings))
    batch = PairCollator(proc, str(root))([rec])
    n_answer = max(int(batch.chosen["attention_mask"].sum()), int(batch.rejected["attention_mask"].sum()))
    collated = int(batch.prompt["attention_mask"].sum()) + n_answer
    return record_length(rec, proc, MediaTokens(proc, 8), root), collated, _image_tokens(proc, batch)


@pytest.mark.parametrize("family", list(SMALLER))
def test_a_smaller_image_size_gives_fewer_tokens_and_the_preflight_counts_them(paths, family, tmp_path):
    rec = _one_image_record(tmp_path)
    pre_default, collated_default, image_default = _lengths(paths[family], tmp_path, rec)
    pre_small, collated_small, image_small = _lengths(paths[family], tmp_path, rec, **SMALLER[family])
    assert pre_default == collated_default and pre_small == collated_small
    assert image_small < image_default
    if family != "idefics3":  # Idefics3 also drops the <row_i_col_j> tile tags of the tiles it no longer cuts
        assert collated_default - collated_small == image_default - image_small  # only the image tokens changed


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_max_pixels_matches_qwens_own_resize_rule_and_leaves_video_alone(paths, family):
    """Qwen's own `smart_resize` (factor = patch size * merge size of the checkpoint) decides the grid."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    model, proc = load_model(ModelConfig(path=str(paths[family]), device="cpu", min_pixels=500, max_pixels=2000))
    _, default = load_model(ModelConfig(path=str(paths[family]), device="cpu"))
    ip = proc.image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = smart_resize(84, 112, factor=factor, min_pixels=500, max_pixels=2000)
    grid = proc.image_processor(images=[Image.new("RGB", (112, 84))], return_tensors="pt")["image_grid_thw"]
    assert grid[0].tolist() == [1, h // ip.patch_size, w // ip.patch_size]
    assert dict(proc.video_processor.size) == dict(default.video_processor.size)


def test_a_resolution_setting_the_family_does_not_take_is_refused(paths):
    with pytest.raises(ValueError, match=r"model.max_pixels: idefics3 .*qwen2_5_vl: min_pixels/max_pixels"):
        load_model(ModelConfig(path=str(paths["idefics3"]), device="cpu", max_pixels=2000))
    with pytest.raises(ValueError, match="model.image_longest_edge: qwen3_vl"):
        load_model(ModelConfig(path=str(paths["qwen3_vl"]), device="cpu", image_longest_edge=64))
    with pytest.raises(ConfigError, match="min_pixels"):
        ModelConfig(min_pixels=5000, max_pixels=2000)
