"""Position ids for every forward mmpo builds: 1-D from the mask, or M-RoPE from the model itself.

mmpo always passes position ids explicitly, so a left-padded prompt, a plain `[prompt | answer]` row and a
packed `[prompt | answer_1 | answer_2]` row give every token the positions it has in its own unpadded
example. How the prompt's positions are made is the family's (`Family.positions`):

- "mask": `cumsum(mask) - 1` (LLaVA, Idefics3). Shape [B, L].
- "mrope": Qwen2/2.5/3-VL's multimodal RoPE, [3, B, L] (temporal, height, width). Image and video tokens get
  grid positions, text continues from the largest; the model's own `get_rope_index` computes them from
  `input_ids`, `mm_token_type_ids` and the media grids, so mmpo never reimplements the rule.

Whatever the family, the tokens after a prompt (answers, evaluation questions) are text, and text positions
advance by one in all three M-RoPE axes: a segment of length n after the prompt gets `last + 1 .. last + n`,
where `last` is the position of the prompt's final (real) token. Prompts are left-padded, so that is the last
column. In a packed row every segment restarts from there, so each answer sees exactly its plain positions.

Worked example (M-RoPE; prompt "<s> <v><v><v><v> q" with a 2x2 image grid after one text token):
    prompt  t: [0, 1,1,1,1, 3]   h: [0, 1,1,2,2, 3]   w: [0, 1,2,1,2, 3]
    answer "a b" (all axes): [4, 5]
"""

from __future__ import annotations

import torch

TOKEN_TYPES_KEY = "mm_token_type_ids"  # Qwen-VL processors: 0 text, 1 image, 2 video, per token


def _core(model):
    """The transformers model under peft / DDP / compile wrappers."""
    from mmpo.models.loading import base_model

    while hasattr(model, "module") and not hasattr(model, "config"):  # DDP
        model = model.module
    return base_model(model)


def uses_mrope(model) -> bool:
    """True for a family whose positions are M-RoPE (`Family.positions == "mrope"`)."""
    from mmpo.models.loading import family_spec

    return family_spec(_core(model)).positions == "mrope"


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding: cumsum(mask) - 1, clamped at 0 for leading pads (TRL / HF generate)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_positions(model, prompt_batch: dict) -> torch.Tensor:
    """The prompt's position ids: [B, Lp] (mask) or [3, B, Lp] (M-RoPE, from the model's `get_rope_index`).

    Args:
        model: the model the batch is for (plain, peft- or DDP-wrapped).
        prompt_batch: `encode_prompts` / `encode_templated` output (left-padded, media tensors included).
    """
    if model is None or not uses_mrope(model):
        return mask_positions(prompt_batch["attention_mask"])
    inner = _core(model).model  # Qwen*VLModel: owns get_rope_index
    ids = prompt_batch["input_ids"]
    types = prompt_batch.get(TOKEN_TYPES_KEY)
    if types is None:
        raise ValueError(f"an M-RoPE model needs the processor's {TOKEN_TYPES_KEY!r} with the prompt; "
                         "encode prompts with mmpo.models.encode_prompts")
    grids = {k: prompt_batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
             if prompt_batch.get(k) is not None}
    with torch.no_grad():
        pos, _ = inner.get_rope_index(ids, mm_token_type_ids=types.to(ids.device),
                                      attention_mask=prompt_batch["attention_mask"], **grids)
    return pos.to(ids.device)


def continue_positions(prompt_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of `length` text tokens right after a left-padded prompt: last + 1, last + 2, ...

    Works for [B, Lp] and [3, B, Lp] positions alike (text advances all M-RoPE axes together).
    """
    last = prompt_pos[..., -1:]
    return last + 1 + torch.arange(length, device=prompt_pos.device)


def extend_token_types(prompt_batch: dict, lengths: list[int]) -> dict:
    """{mm_token_type_ids: prompt's types + 0 (text) over each following segment}, or {} if there are none.

    Qwen-VL models refuse to compute M-RoPE without types covering every token, and `generate` reads them:
    answer and question tokens are text (0).
    """
    types = prompt_batch.get(TOKEN_TYPES_KEY)
    if types is None:
        return {}
    pads = [torch.zeros(types.shape[0], n, dtype=types.dtype, device=types.device) for n in lengths]
    return {TOKEN_TYPES_KEY: torch.cat([types, *pads], dim=1)}
