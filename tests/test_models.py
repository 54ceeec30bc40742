"""mmpo.models: tiny checkpoints for every family, inputs layout, padding invariance, LoRA, 4-bit, 7B shapes.

The layout tests also run on shrunk checkpoints in the REAL hub formats ("real:<family>",
`mmpo.models.real_format`): real tokenizers, chat templates, processors, token ids and weight-key layout.
"""

import numpy as np
import pytest
import torch
from helpers import real_format_model
from PIL import Image

from mmpo.config import LoraConfig, ModelConfig
from mmpo.models import (
    FAMILIES,
    IGNORE_INDEX,
    VIDEO_FAMILIES,
    add_lora,
    count_parameters,
    encode_answers,
    encode_prompts,
    family_of,
    generate_answers,
    join_prompt_answer,
    load_model,
    make_tiny_model,
    media_keys,
    prompt_text,
    reference_mode,
    supports_video,
)
from mmpo.models.answer_tokens import answer_ids_in_context
from mmpo.models.real_format import REAL_FORMAT_FAMILIES
from mmpo.models.scoring import yes_no_ids

CASES = [(f, "image") for f in FAMILIES] + [(f, "video") for f in VIDEO_FAMILIES]
REAL = [f"real:{f}" for f in REAL_FORMAT_FAMILIES]
REAL_CASES = [("real:llava", "image"), ("real:llava_next_video", "image"), ("real:llava_next_video", "video"),
              ("real:llava_onevision", "image"), ("real:llava_onevision", "video")]
PROMPTS = ["is there a red square in the image ?", "what color ?"]  # second is shorter -> left-padded
ANSWERS = ["no", "the circle is blue"]  # first is shorter -> right-padded


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One tiny checkpoint per family, built once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_model(f, root / f, words=["zebra"]) for f in FAMILIES}


@pytest.fixture(scope="module")
def real_ckpts(tmp_path_factory):
    """One real-format checkpoint per family ("real:llava", ...), shared with the other test modules."""
    root = tmp_path_factory.mktemp("real")
    return {name: real_format_model(name.removeprefix("real:"), root) for name in REAL}


@pytest.fixture(scope="module")
def loaded(ckpts, real_ckpts):
    """(model, processor) per tiny family and per real-format checkpoint, frozen, eval mode."""
    return {name: load_model(ModelConfig(path=str(p), device="cpu")) for name, p in {**ckpts, **real_ckpts}.items()}


def _media(family, media_type, n=2):
    rng = np.random.default_rng(0)
    if media_type == "image":  # different sizes: anyres families unpad the wide one to fewer tokens
        sizes = [(50, 50), (30, 70)][-n:]
        return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    frames = 8 if family == "video_llava" else 4
    return [rng.integers(0, 256, (frames, 48, 64, 3), dtype=np.uint8) for _ in range(n)]


def _batch(processor, family, media_type, prompts=PROMPTS, answers=ANSWERS, media=None):
    media = media if media is not None else _media(family, media_type, len(prompts))
    return join_prompt_answer(encode_prompts(processor, prompts, media, media_type), encode_answers(processor, answers))


def _answer_logits(logits, labels):
    """Logits that predict the answer tokens (position t-1 predicts label t)."""
    return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]


def test_checkpoint_loads_with_auto_classes(ckpts):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for family, path in ckpts.items():
        model = AutoModelForImageTextToText.from_pretrained(path)
        proc = AutoProcessor.from_pretrained(path)
        assert model.config.model_type == family
        assert model.config.image_token_id == proc.tokenizer.convert_tokens_to_ids("<image>")
        assert proc.tokenizer.convert_tokens_to_ids("zebra") != proc.tokenizer.unk_token_id  # caller's words
        assert sum(p.numel() for p in model.parameters()) < 2_000_000  # tiny


def test_prompt_text_uses_chat_template(loaded):
    _, proc = loaded["llava"]
    assert prompt_text(proc, "is there a cat ?", "image") == "USER: <image>\nis there a cat ? ASSISTANT:"
    assert prompt_text(proc, "what happens ?", "video") == "USER: <video>\nwhat happens ? ASSISTANT:"
    assert prompt_text(proc, "hello", None) == "USER: hello ASSISTANT:"


@pytest.mark.parametrize("family,media_type", CASES + REAL_CASES)
def test_forward_backward_and_labels(loaded, family, media_type):
    model, proc = loaded[family]
    batch = _batch(proc, family, media_type)
    expected_media = {"image": "pixel_values", "video": "pixel_values_videos"}[media_type]
    assert expected_media in media_keys(batch)
    # prompts are left-padded: the shorter prompt's row starts with padding (which row is shorter depends on
    # the family: anyres gives the 30x70 image more tokens than the 50x50 one at real-format tile sizes)
    assert sorted(batch["attention_mask"][:, 0].tolist()) == [0, 1]
    # labels are exactly the answer's tokens as they follow the prompt in the chat template, then EOS
    tok = proc.tokenizer
    for row, answer in enumerate(ANSWERS):
        got = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert got == answer_ids_in_context(proc, answer) + [tok.eos_token_id]
        assert tok.decode(got[:-1]).strip() == answer
    media_id = model.config.image_token_id if media_type == "image" else model.config.video_token_id
    assert (batch["input_ids"] == media_id).any()
    model.requires_grad_(True)
    try:
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.abs().sum() for p in model.model.language_model.parameters() if p.grad is not None]
        assert torch.isfinite(out.loss) and grads and sum(grads) > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


@pytest.mark.parametrize("family,media_type", CASES + REAL_CASES)
def test_left_padding_matches_unpadded_example(loaded, family, media_type):
    model, proc = loaded[family]
    media = _media(family, media_type)
    batch = _batch(proc, family, media_type, media=media)
    r = int(batch["attention_mask"][:, 0].argmin())  # the left-padded row
    single = _batch(proc, family, media_type, PROMPTS[r:r + 1], ANSWERS[r:r + 1], media=media[r:r + 1])
    assert batch["input_ids"].shape[1] > single["input_ids"].shape[1]  # the row really is padded
    with torch.no_grad():
        padded = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = model(**{k: v for k, v in single.items() if k != "labels"}).logits
    got = _answer_logits(padded[r:r + 1], batch["labels"][r:r + 1])
    want = _answer_logits(alone, single["labels"])
    assert got.shape == want.shape and got.shape[0] == len(ANSWERS[r].split()) + 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_encode_answers_right_padded_without_bos(loaded):
    _, proc = loaded["llava"]
    out = encode_answers(proc, ["yes", "no it is not"])
    tok = proc.tokenizer
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert out["input_ids"][0].tolist() == [tok.convert_tokens_to_ids("yes"), tok.eos_token_id] + [tok.pad_token_id] * 3
    assert tok.bos_token_id not in out["input_ids"].tolist()[1]


def test_join_prompt_answer_worked_example():
    """The module docstring's example: positions skip left padding, labels only on answer tokens."""
    prompt = {"input_ids": torch.tensor([[0, 2, 7, 8], [2, 7, 8, 9]]),
              "attention_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), "pixel_values": torch.zeros(2, 3)}
    answer = {"input_ids": torch.tensor([[5, 3, 0], [5, 6, 3]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    out = join_prompt_answer(prompt, answer)
    assert out["position_ids"].tolist() == [[0, 0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 5, 6]]
    assert out["labels"].tolist() == [[-100] * 4 + [5, 3, -100], [-100] * 4 + [5, 6, 3]]
    assert out["pixel_values"] is prompt["pixel_values"] and media_keys(out) == ["pixel_values"]


def _perturb_lora(model, seed=0):
    """peft inits lora_B to zero (adapter == base); random B makes the adapter change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_language_model_only_reference_and_merge(ckpts, family):
    model, proc = load_model(ModelConfig(path=str(ckpts[family]), device="cpu"))
    batch = _batch(proc, family, "image")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base = model(**inputs).logits
    peft_model = add_lora(model, LoraConfig(r=4, alpha=8))
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.endswith("proj")]
    assert wrapped and all("language_model" in n for n in wrapped)
    assert not any(t in n for n in wrapped for t in ("vision_tower", "image_tower", "video_tower"))
    _perturb_lora(peft_model)
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        with reference_mode(peft_model):
            ref = peft_model(**inputs).logits
    assert (adapted - base).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(ref, base, atol=1e-6, rtol=0)
    merged = peft_model.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)


def test_reference_mode_needs_an_adapter(loaded):
    with pytest.raises(ValueError, match="adapter"):
        with reference_mode(loaded["llava"][0]):
            pass


def test_family_and_video_support(loaded):
    assert [family_of(loaded[f][0]) for f in FAMILIES] == list(FAMILIES)
    assert [supports_video(loaded[f][0]) for f in FAMILIES] == [f in VIDEO_FAMILIES for f in FAMILIES]


def test_an_image_only_model_refuses_video_instead_of_reading_the_text_alone(loaded):
    """LlavaProcessor drops `videos=` silently: a LLaVA-1.5 evaluated or trained on video answered from the text."""
    for name, (_, processor) in loaded.items():
        family = name.removeprefix("real:")
        if family in FAMILIES and family not in VIDEO_FAMILIES:
            with pytest.raises(ValueError, match="takes no video: this model cannot read video data"):
                encode_prompts(processor, PROMPTS, _media(family, "video"), "video")


def test_missing_folder_error_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model(ModelConfig(path=str(missing)))
    adapter = tmp_path / "adapter"  # what a user points model.path at by mistake: transformers said "Unrecognized model"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "checkpoints/tiny-llava"}')
    with pytest.raises(ValueError, match=rf"{adapter} is a LoRA adapter, not a model: use "
                                         rf"model.path=checkpoints/tiny-llava model.adapter={adapter}"):
        load_model(ModelConfig(path=str(adapter)))


def test_trainable_lora_with_projector_and_full_finetune(ckpts):
    cfg = ModelConfig(path=str(ckpts["llava"]), device="cpu")
    model, _ = load_model(cfg, LoraConfig(r=4, train_projector=True), trainable=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and any("multi_modal_projector" in n for n in names)
    assert not any("vision_tower" in n or ("language_model" in n and "lora_" not in n) for n in names)
    full, _ = load_model(cfg, LoraConfig(enabled=False), trainable=True)
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.language_model") for n in trainable) and "lm_head.weight" in trainable
    assert not any(n.startswith(("model.vision_tower", "model.multi_modal_projector")) for n in trainable)


@pytest.mark.parametrize("name", ["llava"] + REAL)
def test_4bit_lora_on_cpu(ckpts, real_ckpts, name):
    bnb = pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(path=str({**ckpts, **real_ckpts}[name]), device="cpu", load_in_4bit=True)
    model, proc = load_model(cfg, LoraConfig(r=4, alpha=8), trainable=True)
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all("language_model" in n for n in linear4)  # tower, projector, lm_head unquantised
    out = model(**_batch(proc, name, "image"))
    out.loss.backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None for g in lora_b) and sum(g.abs().sum() for g in lora_b) > 0


# The generation prompt ends where the answer begins: the Vicuna template's "ASSISTANT:" is followed by a space
# (so SentencePiece gives "▁Yes"), OneVision's "<|im_start|>assistant\n" by the answer directly.
ANSWER_SEPARATOR = {"real:llava_onevision": ""}


@pytest.mark.parametrize("name", list(FAMILIES) + REAL)
def test_yes_no_ids_are_the_first_token_after_the_generation_prompt(loaded, name):
    _, proc = loaded[name]
    tok = proc.tokenizer
    yes, no = yes_no_ids(proc)
    head = prompt_text(proc, "is there a cat ?", "image")
    head_ids = tok(head)["input_ids"]
    for word, ids in (("Yes", yes), ("yes", yes), ("No", no), ("no", no)):
        full = tok(head + ANSWER_SEPARATOR.get(name, " ") + word)["input_ids"]
        assert full[:len(head_ids)] == head_ids  # the prompt's tokens do not change
        assert full[len(head_ids)] in ids, (word, tok.convert_ids_to_tokens(full[len(head_ids):]))
    assert not set(yes) & set(no)


@pytest.mark.parametrize("family,media_type", CASES + REAL_CASES)
def test_left_padded_batched_generation_equals_one_by_one(loaded, family, media_type):
    model, proc = loaded[family]
    media = _media(family, media_type)
    batched = generate_answers(model, proc, PROMPTS, media, media_type, max_new_tokens=4)
    alone = [generate_answers(model, proc, [p], [m], media_type, max_new_tokens=4)[0] for p, m in zip(PROMPTS, media)]
    assert batched == alone


def test_7b_config_has_published_shape_without_weights(tmp_path):
    path = make_tiny_model("llava", tmp_path / "llava7b", size="7b")
    assert not list(path.glob("*.safetensors"))
    n = count_parameters(path)  # meta device: no memory
    assert 7.0e9 < n < 7.12e9, n  # LLaVA-1.5-7B: 7.06B
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    assert len(proc.tokenizer) == 32000
    batch = encode_prompts(proc, ["what is this ?"], [Image.new("RGB", (50, 40))], "image")
    assert (batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<image>")).sum() == 576


def test_image_size_keeps_16_tokens_and_cli_entry(tmp_path, capsys):
    from mmpo.models import make_model_main

    path = make_model_main("llava", "tiny", tmp_path / "llava64")
    assert "llava (tiny" in capsys.readouterr().out
    assert family_of(load_model(ModelConfig(path=str(path), device="cpu"))[0]) == "llava"
    small = make_tiny_model("llava", tmp_path / "llava64b", image_size=64)
    model64, proc64 = load_model(ModelConfig(path=str(small), device="cpu"))
    assert model64.config.vision_config.image_size == 64 and model64.config.vision_config.patch_size == 16
    batch = encode_prompts(proc64, ["is there a cat ?"], [Image.new("RGB", (64, 64))], "image")
    assert batch["pixel_values"].shape[-1] == 64
    assert (batch["input_ids"] == model64.config.image_token_id).sum() == 16


def test_text_only_prompts(loaded):
    model, proc = loaded["llava"]
    batch = encode_prompts(proc, ["hello", "is there a cat ?"], None, None)
    assert media_keys(batch) == [] and batch["input_ids"][:, -1].eq(proc.tokenizer.convert_tokens_to_ids(":")).all()
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_saved_adapter_reloads_through_config(ckpts, tmp_path):
    cfg = ModelConfig(path=str(ckpts["llava"]), device="cpu")
    model, proc = load_model(cfg, LoraConfig(r=4, alpha=8, train_projector=True), trainable=True)
    _perturb_lora(model)
    with torch.no_grad():  # the projector copy (modules_to_save) must travel with the adapter too
        model.base_model.model.model.multi_modal_projector.modules_to_save["default"].linear_1.bias.add_(1.0)
    model.save_pretrained(tmp_path / "adapter")
    inputs = {k: v for k, v in _batch(proc, "llava", "image").items() if k != "labels"}
    reloaded, _ = load_model(ModelConfig(path=cfg.path, device="cpu", adapter=str(tmp_path / "adapter")))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in reloaded.parameters())  # trainable=False freezes everything
