"""PaMi-VDPO's own pieces (Ding et al., arXiv 2504.05810; METHODS §1), in one place.

A PaMi pair holds one video and a bag of K augmentation specs (`PairRecord.rejected_bag`, written by
`mmpo build augment`). Training needs three things beyond a DPO pair, all here:

1. the bag's clips, made on the fly from the specs and encoded with the prompt (`encode_bag`, the collate piece of
   `mmpo.requirements.Bag`);
2. the prompt-aware distance of each clip from the original, d_k = mean over answer tokens of
   JS(p(.|v) || p(.|v_k)) under the current policy (`js_divergence`, `clip_distance`; the policy's pass in
   `mmpo.requirements.pair_logps` computes it from logits it already has, so it costs no forward of its own);
3. the close-to-far temperature that turns distances into instance weights (`pami_tau`).

The loss itself is `mmpo.losses.PaMiLoss`, next to the other losses and their registry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmpo.media import augment
from mmpo.models import encode_prompts

_LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------- 1. the bag

def encode_bag(processor, recs, media: list, prompts: list[str], media_type: str) -> dict:
    """The K augmented clips of each record, encoded with its prompt: {"prompts": K encodings of
    [B, ...], "mask": [B, K] bool}. Records with fewer specs than the longest bag are padded with their
    own media, masked out of the loss.

    Raises:
        ValueError: no record of the batch has a bag (naming the record): build with `mmpo build augment`.
    """
    k = max(len(r.rejected_bag or ()) for r in recs)
    if k == 0:
        r = recs[0]
        raise ValueError(f"{r.where or 'record ' + r.id}: a bag loss needs rejected_bag specs "
                         "(build with `mmpo build augment`)")
    bag_prompts, mask = [], torch.zeros(len(recs), k, dtype=torch.bool)
    for j in range(k):
        clips = []
        for i, (r, m) in enumerate(zip(recs, media, strict=True)):
            bag = r.rejected_bag or ()
            if j < len(bag):
                clips.append([augment(x, bag[j]) for x in m] if isinstance(m, list) else augment(m, bag[j]))
                mask[i, j] = True
            else:  # padding instance: any valid media, masked out of the loss
                clips.append(m)
        bag_prompts.append(encode_prompts(processor, prompts, clips, media_type))
    return {"prompts": bag_prompts, "mask": mask}


# ----------------------------------------------------------------------------- 2. the distance

def _js_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """JS(p || q) per row of [N, V] logits, in log space (natural log, so 0 <= JS <= log 2)."""
    p_logits, q_logits = p_logits.float(), q_logits.float()
    if top_k is not None and top_k < p_logits.shape[-1]:
        # Union of p's and q's top-k tokens (duplicates from q masked out), then renormalise on it:
        # the tail mass both distributions agree is negligible carries almost no divergence.
        ip, iq = p_logits.topk(top_k, dim=-1).indices, q_logits.topk(top_k, dim=-1).indices
        dup = (iq.unsqueeze(-1) == ip.unsqueeze(-2)).any(-1)
        drop, idx = torch.cat([torch.zeros_like(dup), dup], dim=-1), torch.cat([ip, iq], dim=-1)
        p_logits = p_logits.gather(-1, idx).masked_fill(drop, float("-inf"))
        q_logits = q_logits.gather(-1, idx).masked_fill(drop, float("-inf"))
    lp, lq = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
    lm = torch.logaddexp(lp, lq) - _LOG2  # log of the mixture m = (p + q) / 2

    def kl_to_m(la: torch.Tensor) -> torch.Tensor:
        # 0 * log 0 = 0: tokens with zero probability (masked duplicates, -inf logits) add nothing.
        return torch.where(torch.isfinite(la), la.exp() * (la - lm), torch.zeros_like(la)).sum(-1)

    return (0.5 * (kl_to_m(lp) + kl_to_m(lq))).clamp(min=0.0)


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor,
                  top_k: int | None = None, chunk: int = 512) -> torch.Tensor:
    """PaMi-VDPO prompt-aware distance d: mean over answer tokens of JS(p_t || q_t) (METHODS §1 step 2).

    p_t / q_t: next-token distributions of the same model on the original / augmented clip, answer
    teacher-forced. Only masked positions are computed, `chunk` at a time, so the float32 copies stay
    small with a 150k vocabulary. Call it under no_grad.

    Args:
        p_logits: [B, T, V] logits on the original media.
        q_logits: [B, T, V] logits on the augmented media (same answer positions).
        mask: [B, T] true on answer tokens.
        top_k: if set, compare on the union of both top-k token sets, renormalised (for speed).
        chunk: answer positions processed per step.

    Returns:
        [B] float32 mean JS in nats (0 for identical inputs, at most log 2; 0 without answer tokens).
    """
    b, t, v = p_logits.shape
    rows = mask.reshape(-1).bool().nonzero().squeeze(1)
    p_flat, q_flat = p_logits.reshape(b * t, v), q_logits.reshape(b * t, v)
    total = torch.zeros(b, dtype=torch.float32, device=p_logits.device)
    for part in rows.split(chunk):  # row r of the flat view belongs to sample r // t
        total.index_add_(0, part // t, _js_rows(p_flat[part], q_flat[part], top_k))
    return total / mask.reshape(b, t).sum(1).clamp(min=1).to(torch.float32)


@torch.no_grad()
def clip_distance(base_logits: torch.Tensor, clip_logits: torch.Tensor, mask: torch.Tensor, top_k: int) -> torch.Tensor:
    """d_k for one bag clip, [B], detached: the weights only rank instances, they carry no gradient.

    top_k: the config's `pami.js_top_k` (0 = the full vocabulary).
    """
    return js_divergence(base_logits.detach(), clip_logits.detach(), mask, top_k or None)


# ----------------------------------------------------------------------------- 3. the schedule

def pami_tau(progress: float, tau_start: float = 10.0, tau_end: float = 0.01, anneal_until: float = 0.5) -> float:
    """Close-to-far temperature [RECONSTRUCTION, METHODS §1 step 5]: log tau linear from log(tau_start)
    to log(tau_end) while progress goes 0 -> anneal_until, then a hard argmax (returned as 0.0).

    Args:
        progress: fraction of training done (clipped to >= 0).
        tau_start: temperature at progress 0 (large: near-uniform over the bag, "close").
        tau_end: temperature at progress == anneal_until (small: near-argmax, "far").
        anneal_until: progress after which the hard argmax is used.

    Returns:
        The temperature, or 0.0 meaning "hard argmax".
    """
    progress = max(progress, 0.0)
    if anneal_until <= 0 or progress > anneal_until:
        return 0.0
    frac = progress / anneal_until
    return math.exp(math.log(tau_start) + frac * (math.log(tau_end) - math.log(tau_start)))
