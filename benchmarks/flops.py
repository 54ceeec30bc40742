"""Useful-FLOP counting for one DPO step of a LLaVA-style model, and a measured matmul peak.

How we count (a "useful" FLOP is one the DPO math needs, whatever layout a trainer executes):

- A matmul of [n, k] x [k, m] costs 2nkm FLOPs (multiply + add); norms, activations, softmax and the
  optimizer are ignored (<2% at 7B shapes).
- Vision tower + projector run forward once per media item and have no backward (both are frozen and
  come before every LoRA weight, so no gradient has to flow into them).
- Language model forward over the minimal layout: media + prompt tokens ONCE per pair, plus the chosen
  and the rejected answer tokens (what a shared-prefix forward executes; a plain layout repeats the
  prompt, and those repeats are not counted as useful).
- Attention scores and values: 2 matmuls of 2 * d FLOPs per (query, key) pair, causal, so a token at
  position t attends to t + 1 keys; an answer token attends to the whole prompt plus its own answer.
- lm_head only at the answer positions (all other logits are not needed).
- Backward with LoRA: activation gradients only (frozen weights need no weight gradient), i.e. 1x the
  forward of the language model; LoRA's own weight gradients are negligible (r << d) and ignored.
  (Full fine-tuning would be 2x; the widespread "6N" rule assumes that.)
- Reference: one forward of the language model + media, unless log-probs were precomputed.
- Gradient-checkpointing recomputation is NOT useful work and is not counted.

Utilisation = useful FLOPs per step / step time / measured peak (a large bf16 matmul on the device).
"""

from __future__ import annotations

import time

import torch


def _text(cfg):
    return getattr(cfg, "text_config", cfg)


def layer_linear_params(text_cfg) -> int:
    """Weights of the matmuls in one decoder layer (q, k, v, o and the gated MLP)."""
    d, ff = text_cfg.hidden_size, text_cfg.intermediate_size
    heads = text_cfg.num_attention_heads
    kv = getattr(text_cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(text_cfg, "head_dim", None) or d // heads
    return d * heads * head_dim * 2 + 2 * d * kv * head_dim + 3 * d * ff


def lm_forward_flops(text_cfg, prompt_tokens: float, answer_tokens: list[float]) -> float:
    """Forward FLOPs of the language model for one prompt and its answers (shared-prefix layout).

    Args:
        text_cfg: the language model's config (hidden_size, intermediate_size, layers, heads, vocab).
        prompt_tokens: media + prompt tokens.
        answer_tokens: tokens of each answer scored after that prompt.

    Returns:
        FLOPs.
    """
    d, layers = text_cfg.hidden_size, text_cfg.num_hidden_layers
    heads = text_cfg.num_attention_heads
    attn_dim = heads * (getattr(text_cfg, "head_dim", None) or d // heads)
    tokens = prompt_tokens + sum(answer_tokens)
    dense = 2 * layer_linear_params(text_cfg) * tokens * layers
    # causal pairs: prompt p(p+1)/2; an answer of length a attends to p + (1..a) keys
    pairs = prompt_tokens * (prompt_tokens + 1) / 2 + sum(a * prompt_tokens + a * (a + 1) / 2 for a in answer_tokens)
    attention = 2 * 2 * attn_dim * pairs * layers
    lm_head = 2 * d * text_cfg.vocab_size * sum(answer_tokens)
    return dense + attention + lm_head


def qwen_vision_forward_flops(model_cfg, media_tokens: float) -> float:
    """Qwen2/2.5-VL's vision tower: media_tokens x merge^2 patches (an image is one temporal patch), windowed
    attention (window_size px) except in `fullatt_block_indexes` (Qwen2-VL: all full), a gated MLP (2.5) or a
    plain one (2), then the merger MLP (merge^2 * d -> merge^2 * d -> text width) per token."""
    v = model_cfg.vision_config
    merge = v.spatial_merge_size
    patches = media_tokens * merge ** 2
    d = getattr(v, "embed_dim", None) or v.hidden_size
    ff = getattr(v, "intermediate_size", None) or int(getattr(v, "mlp_ratio", 4) * d)
    gated = hasattr(v, "fullatt_block_indexes")
    full = set(getattr(v, "fullatt_block_indexes", range(v.depth)))
    window = ((getattr(v, "window_size", 0) or 0) // v.patch_size) ** 2 or patches
    flops = 0.0
    for layer in range(v.depth):
        keys = patches if layer in full else min(window, patches)
        flops += 2 * (4 * d * d + (3 if gated else 2) * d * ff) * patches + 2 * 2 * d * patches * keys
    flops += 2 * 3 * v.temporal_patch_size * v.patch_size ** 2 * d * patches  # patch embedding (a 3-D conv)
    wide, dt = d * merge ** 2, getattr(v, "out_hidden_size", None) or _text(model_cfg).hidden_size
    return flops + 2 * (wide * wide + wide * dt) * media_tokens


def vision_forward_flops(model_cfg, media_tokens: float, frames: int = 1) -> float:
    """Forward FLOPs of the vision tower (ViT on (patches + CLS) per frame) and the 2-layer projector."""
    v = model_cfg.vision_config
    if hasattr(v, "spatial_merge_size"):  # Qwen-VL: patches follow the image size, not a fixed square
        return qwen_vision_forward_flops(model_cfg, media_tokens)
    patches = (v.image_size // v.patch_size) ** 2 + 1
    d, ff, layers = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    per_frame = layers * (2 * (4 * d * d + 2 * d * ff) * patches + 2 * 2 * d * patches * patches)
    per_frame += 2 * 3 * v.patch_size ** 2 * d * patches  # patch embedding
    dt = _text(model_cfg).hidden_size
    projector = 2 * (d * dt + dt * dt) * media_tokens
    return frames * per_frame + projector


def dpo_step_useful_flops(model_cfg, pairs: int, media_tokens: float, prompt_tokens: float, chosen_tokens: float,
                          rejected_tokens: float, frames: int = 1, reference: bool = True) -> dict[str, float]:
    """Useful FLOPs of one DPO step with LoRA (see the module docstring for the rules).

    Args:
        model_cfg: the model's top-level config (vision_config, text_config).
        pairs: preference pairs per step.
        media_tokens: media tokens per pair in the language model's input.
        prompt_tokens: text prompt tokens per pair (template and BOS included, media excluded).
        chosen_tokens, rejected_tokens: mean answer lengths (EOS included).
        frames: frames per media item (1 for images).
        reference: whether the reference forward runs each step (False when precomputed).

    Returns:
        {"policy_forward", "policy_backward", "reference_forward", "total"} in FLOPs per step.
    """
    text = _text(model_cfg)
    lm = lm_forward_flops(text, media_tokens + prompt_tokens, [chosen_tokens, rejected_tokens]) * pairs
    vision = vision_forward_flops(model_cfg, media_tokens, frames) * pairs
    out = {"policy_forward": lm + vision, "policy_backward": lm, "reference_forward": (lm + vision) if reference else 0.0}
    out["total"] = sum(out.values())
    return out


def measured_peak_flops(device: str, dtype: torch.dtype | None = None, size: int | None = None,
                        seconds: float = 1.0) -> float:
    """Achieved FLOP/s of a large square matmul (bf16 on CUDA, fp32 on CPU), the denominator of utilisation."""
    cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 512)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
        if cuda:
            torch.cuda.synchronize()
    return 2 * size ** 3 * n / (time.perf_counter() - start)
