"""mmpo.clip: tiny open_clip checkpoints and the CLIP scores built on them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from videos import make_frames

from mmpo.clip import CONFIG_NAME, WEIGHTS_NAME, load_clip, make_tiny_clip
from mmpo.media import augment
from mmpo.records import AugSpec


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return load_clip(clip_dir)


@pytest.fixture(scope="module")
def video():
    return make_frames(T=4, H=64, W=64, seed=0)


def test_checkpoint_is_an_open_clip_local_dir(clip_dir, scorer):
    cfg = json.loads((clip_dir / CONFIG_NAME).read_text())
    assert cfg["model_cfg"]["vision_cfg"]["image_size"] == 64 and cfg["model_cfg"]["embed_dim"] == 64
    assert "mean" in cfg["preprocess_cfg"] and (clip_dir / WEIGHTS_NAME).is_file()
    assert not scorer.model.training
    assert scorer.preprocess(Image.new("RGB", (80, 50))).shape == (3, 64, 64)
    assert scorer.tokenizer(["a red square"]).shape == (1, scorer.context_length)


def test_reload_gives_identical_embeddings(clip_dir, scorer, video, tmp_path):
    again = load_clip("local-dir:" + str(clip_dir))
    assert torch.equal(scorer.encode_images(video), again.encode_images(video))
    assert torch.equal(scorer.encode_texts(["a red square"]), again.encode_texts(["a red square"]))
    # Same seed -> same weights; another seed -> different weights.
    same = load_clip(make_tiny_clip(tmp_path / "same", seed=0))
    other = load_clip(make_tiny_clip(tmp_path / "other", seed=1))
    assert torch.equal(same.encode_images(video), scorer.encode_images(video))
    assert not torch.allclose(other.encode_images(video), scorer.encode_images(video))


def test_embeddings_are_normalised_and_batch_independent(scorer, video):
    emb = scorer.encode_images(video)
    assert emb.shape == (4, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    scorer.batch_size = 3                               # 4 frames -> batches of 3 and 1
    try:
        assert torch.allclose(scorer.encode_images(video), emb, atol=1e-5)
    finally:
        scorer.batch_size = 64
    txt = scorer.encode_texts(["a red square", "a blue circle", "a dog"])
    assert txt.shape == (3, 64) and torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_frame_text_similarity_is_mean_frame_cosine(scorer, video):
    texts = ["a red square", "a blue circle"]
    sims = scorer.frame_text_similarity(video, texts)
    expected = (scorer.encode_images(video) @ scorer.encode_texts(texts).T).mean(dim=0)
    assert sims.shape == (2,) and torch.allclose(sims, expected, atol=1e-6)
    one = scorer.frame_text_similarity(Image.fromarray(video[0]), texts)
    assert torch.allclose(one, scorer.encode_images(video[:1]) @ scorer.encode_texts(texts).T.squeeze(0), atol=1e-6)


def test_long_text_is_split_into_sentences_and_averaged(scorer, video):
    sentences = ["the red square moves to the right side of the picture over time .",
                 "a small blue circle stays still in the lower left corner the whole time ."]
    long_text = " ".join(sentences * 2)              # far past the 32-token context
    assert scorer.split_text(long_text) == sentences * 2
    assert scorer.split_text("a red square.") == ["a red square."]
    got = scorer.frame_text_similarity(video, [long_text, "a red square"])
    per_sentence = scorer.frame_text_similarity(video, sentences)
    assert torch.allclose(got[0], per_sentence.mean(), atol=1e-6)
    assert torch.allclose(got[1], scorer.frame_text_similarity(video, ["a red square"])[0], atol=1e-6)


def test_media_similarity_orders_mild_and_heavy_corruption(scorer, video):
    assert scorer.media_similarity(video, video) == pytest.approx(1.0, abs=1e-5)
    identity = augment(video, AugSpec("spatial_crop", {"scale": 1.0}))
    mild = augment(video, AugSpec("gaussian_noise", {"std": 2.0}, seed=0))
    heavy = augment(augment(video, AugSpec("gaussian_noise", {"std": 120.0}, seed=0)),
                    AugSpec("region_mask", {"scale": 0.6}, seed=0))
    s_id, s_mild, s_heavy = (scorer.media_similarity(video, m) for m in (identity, mild, heavy))
    assert s_id == pytest.approx(1.0, abs=1e-5)
    assert s_id >= s_mild > s_heavy
    # Images work the same way (one frame).
    img = Image.fromarray(video[0])
    assert scorer.media_similarity(img, img) == pytest.approx(1.0, abs=1e-5)


def test_model_can_be_trained_contrastively(scorer, video):
    """The demo trains the tiny CLIP through `model`, `preprocess` and `tokenizer`: gradients must flow."""
    model = scorer.model
    x = torch.stack([scorer.preprocess(Image.fromarray(f)) for f in video[:2]])
    tokens = scorer.tokenizer(["a red square", "a blue circle"])
    model.train()
    try:
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = F.cross_entropy(logits, torch.arange(2))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert model.visual.conv1.weight.grad.abs().sum() > 0 and model.token_embedding.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_load_clip_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_clip(tmp_path)


def test_load_clip_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope: no such folder \(expected an open_clip local-dir"):
        load_clip(tmp_path / "nope")


def test_contrastive_train_lowers_the_loss(tmp_path):
    """Two kinds of images with two captions: 40 InfoNCE steps must pull matching pairs together."""
    import numpy as np
    from PIL import Image

    from mmpo.clip import load_clip, make_tiny_clip
    from mmpo.demo.image_models import contrastive_train

    scorer = load_clip(make_tiny_clip(tmp_path / "c", seed=0, image_size=64))
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 220, 220
    images = [Image.fromarray(red), Image.fromarray(blue)] * 8
    pixels = torch.stack([scorer.preprocess(im) for im in images])
    tokens = scorer.tokenizer(["a red image", "a blue image"] * 8)
    first = contrastive_train(scorer.model, pixels, tokens, steps=1, batch_size=16, seed=0)
    last = contrastive_train(scorer.model, pixels, tokens, steps=40, lr=3e-3, batch_size=16, seed=0)
    assert last < first - 0.1
    sims = scorer.frame_text_similarity(np.stack([red]), ["a red image", "a blue image"])
    assert sims[0] > sims[1]
