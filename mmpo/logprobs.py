"""Answer log-probabilities: the only thing preference losses need from the model.

Two ways to get them, checked equal by the tests:

- `plain_logps`: one row per (media, prompt, answer), the layout every trainer uses. Chosen and rejected
  rows each carry a full copy of the image tokens (576 for LLaVA-1.5), so a pair encodes its media twice
  (and TRL does it twice more for the reference).
- `packed_logps`: one row per pair, `[prompt | answer_1 | ... | answer_n]` (`packed_inputs`), with a block
  attention mask so every answer sees the prompt but not the other answers, and position ids that restart
  at the end of the prompt for each answer. The media and prompt are encoded once for all answers. It is one
  ordinary forward, so gradient checkpointing and DDP work unchanged (a KV-cache prefix would not:
  transformers turns the cache off under gradient checkpointing).

Logits are computed only at answer positions (`logits_to_keep`), and the log-softmax over the vocabulary
runs in chunks with a hand-written backward (`ChunkedTokenLogps`), so no fp32 copy of all logits is ever alive.
"""

from __future__ import annotations

import torch

from mmpo.models.inputs import join_prompt_answer, media_keys
from mmpo.models.positions import continue_positions, extend_token_types, prompt_positions

LOGSOFTMAX_CHUNK = 128  # answer positions per chunk; bounds the fp32 working set to ~2 x B x 128 x V


class ChunkedTokenLogps(torch.autograd.Function):
    """log p(target) = logit[target] - logsumexp(logits), chunk by chunk over positions, in fp32.

    Forward saves only the logits themselves (in their own dtype); backward recomputes the softmax per chunk
    and writes d logp / d logits = onehot(target) - softmax straight into one gradient tensor of the logits'
    dtype. So no [B, T, V] fp32 tensor ever exists (a plain `log_softmax(logits.float())` keeps one for
    backward), and, unlike slicing the logits and checkpointing each slice (this module's first version),
    no full-size gradient is allocated per chunk. Cost at V = 32k on CPU: 1.2x a plain log_softmax, from
    2.6x for the sliced version (benchmarks/LOG.md, 2026-11-23).

    With `sum_sq`, forward also returns log sum_v p_v^2 per position (WPO's weights, TRL's `log_sum_sq_probs`),
    = logsumexp(2 z) - 2 logsumexp(z), from the same chunks and without gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int, sum_sq: bool = False):
        work = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 when the logits are
        lse = torch.empty(targets.shape, dtype=work, device=logits.device)
        log_sum_sq = torch.empty(targets.shape, dtype=work, device=logits.device) if sum_sq else None
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(work)
        for s in range(0, logits.shape[1], chunk):
            z = logits[:, s:s + chunk].to(work)
            lse[:, s:s + chunk] = torch.logsumexp(z, dim=-1)
            if sum_sq:
                log_sum_sq[:, s:s + chunk] = torch.logsumexp(2 * z, dim=-1) - 2 * lse[:, s:s + chunk]
        ctx.save_for_backward(logits, targets)
        ctx.chunk = chunk
        if not sum_sq:
            return picked - lse
        ctx.mark_non_differentiable(log_sum_sq)
        return picked - lse, log_sum_sq

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, *_):
        logits, targets = ctx.saved_tensors
        work = torch.promote_types(logits.dtype, torch.float32)
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[1], ctx.chunk):
            g = grad_out[:, s:s + ctx.chunk].to(work).unsqueeze(-1)
            d = torch.softmax(logits[:, s:s + ctx.chunk], dim=-1, dtype=work).mul_(-g)
            d.scatter_add_(-1, targets[:, s:s + ctx.chunk].unsqueeze(-1), g)
            grad[:, s:s + ctx.chunk] = d
        return grad, None, None, None


class ChunkedForwardKL(torch.autograd.Function):
    """Per-position KL(p_T || p_S) = sum_v p_T (log p_T - log p_S), chunk by chunk in fp32.

    Like `ChunkedTokenLogps`: forward saves the two logit tensors in their own dtype, backward recomputes
    per chunk and writes d KL / d student logits = softmax(student) - p_T into one gradient tensor. The
    teacher gets no gradient. No [B, T, V] fp32 tensor is ever alive.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, chunk: int) -> torch.Tensor:
        work = torch.promote_types(student.dtype, torch.float32)
        kl = torch.empty(student.shape[:-1], dtype=work, device=student.device)
        for s in range(0, student.shape[1], chunk):
            log_s = torch.log_softmax(student[:, s:s + chunk].to(work), dim=-1)
            log_t = torch.log_softmax(teacher[:, s:s + chunk].to(work), dim=-1)
            kl[:, s:s + chunk] = (log_t.exp() * (log_t - log_s)).sum(-1)
        ctx.save_for_backward(student, teacher)
        ctx.chunk = chunk
        return kl

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        student, teacher = ctx.saved_tensors
        work = torch.promote_types(student.dtype, torch.float32)
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        for s in range(0, student.shape[1], ctx.chunk):
            d = torch.softmax(student[:, s:s + ctx.chunk], dim=-1, dtype=work)
            d.sub_(torch.softmax(teacher[:, s:s + ctx.chunk], dim=-1, dtype=work))
            grad[:, s:s + ctx.chunk] = d.mul_(grad_out[:, s:s + ctx.chunk].to(work).unsqueeze(-1))
        return grad, None, None


def token_forward_kl(student: torch.Tensor, teacher: torch.Tensor, chunk: int = LOGSOFTMAX_CHUNK) -> torch.Tensor:
    """[B, T] KL(p_teacher || p_student) per position from [B, T, V] logits of the same vocabulary."""
    return ChunkedForwardKL.apply(student, teacher.detach(), chunk)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, chunk: int = LOGSOFTMAX_CHUNK) -> torch.Tensor:
    """Per-token log p(target) from logits (`ChunkedTokenLogps`).

    Args:
        logits: [B, T, V] scores, `logits[:, t]` predicts `targets[:, t]` (any float dtype).
        targets: [B, T] token ids (masked positions may hold any valid id).
        chunk: positions per chunk (bounds the fp32 working set to about 2 x B x chunk x V in backward).

    Returns:
        [B, T] log-probabilities in float32 (float64 for float64 logits).
    """
    return ChunkedTokenLogps.apply(logits, targets, chunk)


def wpo_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              chunk: int = LOGSOFTMAX_CHUNK) -> torch.Tensor:
    """WPO's per-answer log weight (Zhou et al., arXiv 2406.11827, Eq. 2; TRL `use_weighting`), no gradient:

        mean over answer tokens t of [log p(y_t) - log sum_v p(v)^2]

    (the policy's probability of its own answer, length-normalised and "aligned" by the distribution's
    peakedness). One no-grad pass of `ChunkedTokenLogps` with `sum_sq`: no [B, T, V] fp32 tensor.

    Args:
        logits: [B, T, V], aligned with `targets`.
        targets: [B, T] answer token ids.
        mask: [B, T] 1 on real answer tokens.

    Returns:
        [B] float32 (float64 for float64 logits); exp of it is the answer's weight.
    """
    with torch.no_grad():
        safe = targets.masked_fill(mask == 0, 0)
        logp, log_sum_sq = ChunkedTokenLogps.apply(logits, safe, chunk, True)
        return ((logp - log_sum_sq) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


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
    batch = join_prompt_answer(prompt_batch, answer_batch, prompt_positions(model, prompt_batch))
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


def supports_packing(model) -> bool:
    """Packed rows need a 4D attention mask: SDPA and eager take one; flash-attention kernels do not."""
    return _attn_implementation(model) in ("sdpa", "eager")


def packed_inputs(model, prompt_batch: dict, segment_batches: list[dict]) -> dict:
    """Model inputs for ONE row per prompt: `[left-padded prompt | segment_1 | segment_2 | ...]`.

    Each segment (an answer when training, a question when evaluating) sees the prompt and itself but not
    the other segments (`block_mask`), and its position ids continue from the prompt's last position (1-D,
    or all three M-RoPE axes: `mmpo.models.positions`), so it gets exactly the positions and logits it would
    have in its own plain row. The media and prompt are
    encoded once for all segments.

    Worked example (prompt of 3 real tokens after 1 pad, segments "a b" and "c"):
        tokens    : [pad p1 p2 p3 | a  b  | c ]
        segments  : [ 0   0  0  0 | 1  1  | 2 ]
        positions : [ 0   0  1  2 | 3  4  | 3 ]

    Args:
        model: the model the inputs are for (its attention implementation picks a boolean or additive mask).
        prompt_batch: `encode_prompts` output (left-padded, with media tensors).
        segment_batches: one {input_ids, attention_mask} [B, L_j] per segment, right-padded; a row may
            have an empty (all-padding) segment.

    Returns:
        input_ids, attention_mask [B, 1, T, T], position_ids ([B, T], or [3, B, T] for M-RoPE),
        mm_token_type_ids where the processor gave them, and the prompt's media tensors.
    """
    if not supports_packing(model):
        raise ValueError(f"shared-prefix packing needs sdpa or eager attention, not {_attn_implementation(model)!r}: "
                         "set model.attn_implementation: sdpa, or shared_prefix: false")
    p_ids, p_mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    device = p_ids.device
    p_pos = prompt_positions(model, prompt_batch)
    ids, masks, segs, poss = [p_ids], [p_mask], [torch.zeros_like(p_ids)], [p_pos]
    for j, seg in enumerate(segment_batches, start=1):
        s_ids, s_mask = seg["input_ids"].to(device), seg["attention_mask"].to(device)
        ids.append(s_ids)
        masks.append(s_mask)
        segs.append(torch.full_like(s_ids, j))
        poss.append(continue_positions(p_pos, s_ids.shape[1]).expand(*p_pos.shape[:-1], -1))
    input_ids, valid = torch.cat(ids, 1), torch.cat(masks, 1).bool()
    types = extend_token_types(prompt_batch, [s["input_ids"].shape[1] for s in segment_batches])
    float_dtype = None if _attn_implementation(model) == "sdpa" else next(model.parameters()).dtype
    if float_dtype is not None and not float_dtype.is_floating_point:  # 4-bit weights: use compute dtype
        float_dtype = torch.float32
    return {"input_ids": input_ids, "attention_mask": block_mask(torch.cat(segs, 1), valid, float_dtype),
            "position_ids": torch.cat(poss, -1), **types, **_model_media(prompt_batch)}


def packed_logps(model, prompt_batch: dict, answer_batches: list[dict], keep_logits: bool = False) -> list[tuple]:
    """Answer log-probs for several answers per prompt from ONE row per prompt (shared prefix).

    Layout: `packed_inputs` with the answers as segments. Logits are kept from the last prompt position
    on; the predictor of answer token t is the last prompt position for t = 0, else the answer's token t - 1.

    Args:
        model: a LLaVA-family model (or PeftModel around one).
        prompt_batch: `encode_prompts` output (left-padded).
        answer_batches: one `encode_answers` output per answer set, each [B, L_j].
        keep_logits: also return each answer's [B, L_j, V] predicting logits.

    Returns:
        One (sum_logps [B], n_tokens [B]) (+ logits) per answer batch, equal to `plain_logps` on the same data.
    """
    inputs = packed_inputs(model, prompt_batch, answer_batches)
    n_answer = sum(a["input_ids"].shape[1] for a in answer_batches)
    logits = model(**inputs, logits_to_keep=n_answer + 1, use_cache=False).logits  # [B, 1 + sum L_j, V]
    device = logits.device
    results, start = [], 1
    for ans in answer_batches:
        length = ans["input_ids"].shape[1]
        idx = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(start, start + length - 1)]).to(device)
        predicting = logits[:, idx]
        logps = answer_logps(predicting, ans["input_ids"].to(device), ans["attention_mask"].to(device))
        results.append((*logps, predicting) if keep_logits else logps)
        start += length
    return results
