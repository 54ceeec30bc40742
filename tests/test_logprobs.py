"""Answer log-probs: chunked log-softmax, packed (shared-prefix) forward == plain forward, and == TRL."""

import numpy as np
import pytest
import torch
from helpers import checkpoint, color_image, tiny_model

from mmpo.config import LoraConfig, ModelConfig
from mmpo.logprobs import block_mask, packed_logps, plain_logps, token_logps
from mmpo.models import encode_answers, encode_prompts, load_model


def test_token_logps_matches_log_softmax_and_its_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 300, 50, requires_grad=True)
    targets = torch.randint(0, 50, (2, 300))
    ours = token_logps(logits, targets, chunk=64)
    ref = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(ours, ref, atol=1e-6)
    g1, = torch.autograd.grad(ours.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_chunked_logps_gradient_is_exact_in_double_and_keeps_bf16():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 7))
    assert torch.autograd.gradcheck(lambda x: token_logps(x, targets, chunk=3), (logits,))
    half = torch.randn(2, 5, 9, dtype=torch.bfloat16, requires_grad=True)
    out = token_logps(half, torch.randint(0, 9, (2, 5)), chunk=2)
    out.sum().backward()
    assert out.dtype == torch.float32 and half.grad.dtype == torch.bfloat16


def test_block_mask_keeps_answers_apart():
    """Prompt [pad p p] + answer1 [a a] + answer2 [b]: b must see the prompt and itself, never a."""
    seg = torch.tensor([[0, 0, 0, 1, 1, 2]])
    valid = torch.tensor([[False, True, True, True, True, True]])
    m = block_mask(seg, valid, None)[0, 0]
    assert m[5].tolist() == [False, True, True, False, False, True]
    assert m[4].tolist() == [False, True, True, True, True, False]
    assert m[0, 0]  # the pad attends to itself only (no fully masked row -> no NaN)


def _batch(processor, family, media_type, n=3):
    prompts = ["what color is the square ?", "describe the image .", "is there a cat ?"][:n]
    if media_type == "image":
        media = [color_image(c, seed=i) for i, c in enumerate(["red", "blue", "green"][:n])]
    else:
        rng = np.random.default_rng(0)
        media = [(rng.random((4, 32, 32, 3)) * 255).astype("uint8") for _ in range(n)]
    prompt = encode_prompts(processor, prompts, media, media_type)
    chosen = encode_answers(processor, ["red", "a square on noise .", "no"][:n])
    rejected = encode_answers(processor, ["blue blue", "yes", "a cat is there"][:n])
    return prompt, chosen, rejected


# tiny word-level checkpoints and shrunk ones in the real hub formats (`helpers.checkpoint`)
PACKED_CASES = [("llava", "image"), ("llava_next_video", "video"), ("real:llava", "image"),
                ("real:llava_next_video", "video"), ("real:llava_onevision", "image"), ("real:llava_onevision", "video")]


@pytest.mark.parametrize("family,media_type", PACKED_CASES)
def test_packed_equals_plain_values_and_gradients(tmp_path_factory, family, media_type):
    path = checkpoint(family, tmp_path_factory.mktemp("m"))
    model, processor = load_model(ModelConfig(path=str(path)), LoraConfig(r=4), trainable=True)
    with torch.no_grad():  # non-zero LoRA B so the adapter matters for the gradient check
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    prompt, chosen, rejected = _batch(processor, family, media_type)

    plain = [plain_logps(model, prompt, chosen), plain_logps(model, prompt, rejected)]
    loss_plain = plain[0][0].sum() - 0.5 * plain[1][0].sum()
    params = [p for p in model.parameters() if p.requires_grad]
    g_plain = torch.autograd.grad(loss_plain, params)

    packed = packed_logps(model, prompt, [chosen, rejected])
    loss_packed = packed[0][0].sum() - 0.5 * packed[1][0].sum()
    g_packed = torch.autograd.grad(loss_packed, params)

    for (a, na), (b, nb) in zip(plain, packed, strict=True):
        assert torch.equal(na, nb)
        assert torch.allclose(a, b, atol=1e-4), (a, b)
    for a, b in zip(g_plain, g_packed, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_answer_logps_equal_trl(tmp_path_factory):
    """TRL's DPOTrainer (test-only reference) gives the same summed answer log-probs on the same batch."""
    pytest.importorskip("trl")
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from mmpo.models import prompt_text

    path = tiny_model("llava", tmp_path_factory.mktemp("m"))
    model, processor = load_model(ModelConfig(path=str(path)))
    images = [color_image(c, seed=i) for i, c in enumerate(["red", "blue", "green"])]
    prompts = ["what color is the square ?", "describe the image .", "is there a cat ?"]
    chosen, rejected = ["red", "a square on noise .", "no"], ["blue blue", "yes", "a cat is there"]

    ours_c = plain_logps(model, encode_prompts(processor, prompts, images, "image"), encode_answers(processor, chosen))
    ours_r = plain_logps(model, encode_prompts(processor, prompts, images, "image"), encode_answers(processor, rejected))

    # TRL tokenises with add_special_tokens=False, so the BOS our processor adds goes into the text.
    bos, eos = processor.tokenizer.bos_token, processor.tokenizer.eos_token
    rows = [{"images": [im], "prompt": bos + prompt_text(processor, p, "image"), "chosen": c + eos, "rejected": r + eos}
            for im, p, c, r in zip(images, prompts, chosen, rejected)]
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=3, max_length=None,
                     use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none", save_strategy="no")
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=processor)
    batch = trainer.data_collator(list(trainer.train_dataset))
    theirs_c, theirs_r = trainer.compute_ref_log_probs(model, batch)
    assert torch.allclose(ours_c[0], theirs_c, atol=1e-5), (ours_c[0], theirs_c)
    assert torch.allclose(ours_r[0], theirs_r, atol=1e-5), (ours_r[0], theirs_r)
