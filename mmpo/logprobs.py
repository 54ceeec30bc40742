"""Answer log-probabilities: the only thing preference losses need from the model.

Two ways to get them, checked equal by the tests:

- `plain_logps`: one row per (media, prompt, answer), the layout every trainer uses. Chosen and rejected
  rows each carry a full copy of the image tokens (576 for LLaVA-1.5), so a pair encodes its media twice
  (and TRL does it twice more for the reference).
- `packed_logps`: one row per pair, `[prompt | answer_1 | ... | answer_n]`, with a block attention mask
  so every answer sees the prompt but not the other answers, and position ids that restart at the end
  of the prompt for each answer. The media and prompt are encoded once for all answers. It is one
  ordinary forward, so gradient checkpointing and DDP work unchanged (a KV-cache prefix would not:
  transformers turns the cache off under gradient checkpointing).

Logits are computed only at answer positions (`logits_to_keep`), and the log-softmax over the vocabulary
runs in chunks that are recomputed in backward, so no fp32 copy of all logits is ever alive.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from mmpo.models.inputs import join_prompt_answer, media_keys

LOGSOFTMAX_CHUNK = 128  # answer positions per chunk; bounds the fp32 working set to B x 128 x V
# Recompute a chunk in backward only when its fp32 copy is big (>= 16 MiB); below that, storing it costs
# less than the recomputation (tiny CPU models: benchmarks/LOG.md, 2026-11-23).
RECOMPUTE_MIN_ELEMENTS = 2**22


def _chunk_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, chunk: int = LOGSOFTMAX_CHUNK) -> torch.Tensor:
    """Per-token log p(target) from logits, chunked over positions.

    Args:
        logits: [B, T, V] scores, `logits[:, t]` predicts `targets[:, t]` (any float dtype).
        targets: [B, T] token ids (masked positions may hold any valid id).
        chunk: positions per chunk; a large chunk is recomputed in backward instead of stored in fp32.

    Returns:
        [B, T] float32 log-probabilities.
    """
    pieces = []
    for start in range(0, logits.shape[1], chunk):
        lg, tg = logits[:, start:start + chunk], targets[:, start:start + chunk]
        if torch.is_grad_enabled() and lg.requires_grad and lg.numel() >= RECOMPUTE_MIN_ELEMENTS:
            pieces.append(checkpoint(_chunk_logps, lg, tg, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(lg, tg))
    return torch.cat(pieces, dim=1) if pieces else logits.new_zeros(targets.shape, dtype=torch.float32)


def answer_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-prob and answer token count per row.

    Args:
        logits: [B, T, V], aligned with `targets`.
        targets: [B, T] answer token ids.
        mask: [B, T] 1 on real answer tokens, 0 on padding.

    Returns:
        (sum_logps [B] float32, n_tokens [B] float32).
    """
    safe = targets.masked_fill(mask == 0, 0)
    lp = token_logps(logits, safe) * mask
    return lp.sum(-1), mask.sum(-1).float()


def _model_media(batch: dict) -> dict:
    return {k: batch[k] for k in media_keys(batch)}


def answer_logits(model, prompt_batch: dict, answer_batch: dict) -> torch.Tensor:
    """[B, La, V] logits that predict each answer token, from the ordinary one-row-per-answer layout.

    Only the last prompt position and the answer (minus its final token) go through the lm_head: these
    predict exactly the answer tokens, and the lm_head never runs on the hundreds of media tokens.
    """
    batch = join_prompt_answer(prompt_batch, answer_batch)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=answer_batch["input_ids"].shape[1] + 1,
                use_cache=False, **_model_media(batch))
    return out.logits[:, :-1]


def plain_logps(model, prompt_batch: dict, answer_batch: dict, keep_logits: bool = False) -> tuple:
    """Answer log-probs from the ordinary layout: one row per (media, prompt, answer).

    Args:
        model: a LLaVA-family model (or PeftModel around one).
        prompt_batch: `mmpo.models.encode_prompts` output (left-padded, with media tensors).
        answer_batch: `mmpo.models.encode_answers` output (right-padded).
        keep_logits: also return the [B, La, V] logits that predict the answer tokens (PaMi's JS distance
            reuses them instead of a second forward).

    Returns:
        (sum_logps [B], n_tokens [B]) (+ logits when `keep_logits`).
    """
    logits = answer_logits(model, prompt_batch, answer_batch)
    logps = answer_logps(logits, answer_batch["input_ids"], answer_batch["attention_mask"])
    return (*logps, logits) if keep_logits else logps


def block_mask(segments: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """4D attention mask for packed `[prompt | answer_1 | ... ]` rows.

    A query attends to an earlier-or-same key that is real (not padding) and lies in the prompt
    (segment 0) or in the query's own answer. Every token also attends to itself, so no row is fully
    masked (a fully masked row makes SDPA return NaN, and 0 x NaN then leaks into real rows).

    Args:
        segments: [B, T] segment id per position (0 = prompt, j = answer j).
        valid: [B, T] bool, real tokens.
        dtype: None for a boolean mask (SDPA), else the float dtype of an additive mask (eager).

    Returns:
        [B, 1, T, T] mask.
    """
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    same_or_prompt = (segments[:, None, :] == segments[:, :, None]) | (segments[:, None, :] == 0)
    allowed = causal & same_or_prompt & valid[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def _attn_implementation(model) -> str:
    config = getattr(model, "config", None)
    impl = getattr(getattr(config, "text_config", config), "_attn_implementation", None)
    return impl or getattr(config, "_attn_implementation", "sdpa") or "sdpa"


def packed_logps(model, prompt_batch: dict, answer_batches: list[dict], keep_logits: bool = False) -> list[tuple]:
    """Answer log-probs for several answers per prompt from ONE row per prompt (shared prefix).

    Layout per row: `[left-padded prompt (Lp) | answer_1 (L1, right-padded) | answer_2 (L2) | ...]`.
    Position ids continue from the prompt's length for every answer, so each answer sees exactly the
    positions it would have in its own plain row.

    Worked example (prompt of 3 real tokens after 1 pad, answers "a b" and "c"):
        tokens    : [pad p1 p2 p3 | a  b  | c ]
        segments  : [ 0   0  0  0 | 1  1  | 2 ]
        positions : [ 0   0  1  2 | 3  4  | 3 ]
        logits used for answer 1: positions of p3, a -> predict a, b; for answer 2: p3 -> predicts c.

    Args:
        model: a LLaVA-family model (or PeftModel around one).
        prompt_batch: `encode_prompts` output (left-padded).
        answer_batches: one `encode_answers` output per answer set, each [B, L_j].
        keep_logits: also return each answer's [B, L_j, V] predicting logits.

    Returns:
        One (sum_logps [B], n_tokens [B]) (+ logits) per answer batch, equal to `plain_logps` on the same data.
    """
    p_ids, p_mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    bsz, n_prompt = p_ids.shape
    device = p_ids.device
    prompt_len = p_mask.sum(-1, keepdim=True)
    ids, masks, segs, poss = [p_ids], [p_mask], [torch.zeros_like(p_ids)], [(p_mask.cumsum(-1) - 1).clamp(min=0)]
    for j, ans in enumerate(answer_batches, start=1):
        a_ids, a_mask = ans["input_ids"].to(device), ans["attention_mask"].to(device)
        ids.append(a_ids)
        masks.append(a_mask)
        segs.append(torch.full_like(a_ids, j))
        poss.append(prompt_len + torch.arange(a_ids.shape[1], device=device)[None])
    input_ids, valid = torch.cat(ids, 1), torch.cat(masks, 1).bool()
    impl = _attn_implementation(model)
    float_dtype = None if impl == "sdpa" else next(model.parameters()).dtype
    if float_dtype is not None and not float_dtype.is_floating_point:  # 4-bit weights: use compute dtype
        float_dtype = torch.float32
    mask4d = block_mask(torch.cat(segs, 1), valid, float_dtype)
    # Logits from the last prompt position onwards: every answer token's predictor is in that range.
    out = model(input_ids=input_ids, attention_mask=mask4d, position_ids=torch.cat(poss, 1),
                logits_to_keep=input_ids.shape[1] - n_prompt + 1, use_cache=False, **_model_media(prompt_batch))
    logits = out.logits  # [B, 1 + sum L_j, V]; index 0 is the last prompt position
    results, start = [], 1
    for ans in answer_batches:
        length = ans["input_ids"].shape[1]
        # predictor of answer token t: last prompt position for t = 0, else the answer's own token t - 1
        idx = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(start, start + length - 1)]).to(device)
        logps = answer_logps(logits[:, idx], ans["input_ids"].to(device), ans["attention_mask"].to(device))
        results.append((*logps, logits[:, idx]) if keep_logits else logps)
        start += length
    return results
