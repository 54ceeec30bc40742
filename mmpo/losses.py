"""Preference losses: one small class per loss and a plain `LOSSES` dict.

Every loss maps one `LossInputs` (answer log-probs summed over tokens, [B], plus optional per-pair
tensors) to `(scalar loss, metrics)`. The trainer reads `requires` ("reference", "corrupt", "bag", "gt",
"delta") to know which extra forward passes to run and which record fields every pair must carry (a pair
without the required `meta.gt` or `scores.delta` is an error, not a default), and sums `weight * term` over
the config's `loss: [{name, weight, params}]` (`build_loss_terms`).

Reduction: `mean_i(w_i * l_i)` (w = 1 when `weight` is None), not sum(w*l)/sum(w), so a weight scales
its pair's gradient and equal micro-batches give the full-batch loss and gradient (TRL's "gradient
accumulation 1x8 == 8x1" invariant). Losses that drop samples (beta-DPO's filter, PaMi's empty bags)
average over the kept ones, as their reference code does. Metrics are detached floats; `rewards/*`
use the unscaled beta, as TRL and the DA-DPO / beta-DPO code log them. Math: METHODS.md §0-§6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmpo.config import ConfigError, from_dict
from mmpo.logprobs import token_forward_kl, token_logps
from mmpo.pami import pami_tau


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss may need for one batch of B pairs. Log-probs are sums over answer tokens;
    policy ones carry grad, reference ones don't. Optional fields are None when not computed."""

    policy_chosen: torch.Tensor  # [B] log pi(y_w|x)
    policy_rejected: torch.Tensor  # [B] log pi(y_l|x)
    ref_chosen: torch.Tensor | None = None  # [B] log pi_ref(y_w|x)
    ref_rejected: torch.Tensor | None = None  # [B] log pi_ref(y_l|x)
    chosen_tokens: torch.Tensor | None = None  # [B] answer-token counts (IPO, SFT normalisation)
    rejected_tokens: torch.Tensor | None = None  # [B]
    weight: torch.Tensor | None = None  # [B] per-pair weight (None = 1)
    score_delta: torch.Tensor | None = None  # [B] s(y_w) - s(y_l) from the data (DA-DPO, VideoSAVi CLIP)
    policy_corrupt: torch.Tensor | None = None  # [B] log pi(y_w | corrupted media) (mDPO)
    ref_corrupt: torch.Tensor | None = None  # [B] log pi_ref(y_w | corrupted media)
    bag_policy: torch.Tensor | None = None  # [B, K] log pi(y | augmented clip k) (PaMi-VDPO)
    bag_ref: torch.Tensor | None = None  # [B, K] log pi_ref(y | augmented clip k)
    bag_distance: torch.Tensor | None = None  # [B, K] prompt-aware distance d_k (js_divergence)
    bag_mask: torch.Tensor | None = None  # [B, K] bool, False on padding instances (None = all valid)
    gt_logps: torch.Tensor | None = None  # [B] log pi(y_gt|x), ground-truth answer (mrDPO gdpo)
    gt_tokens: torch.Tensor | None = None  # [B] its token count
    progress: float = 0.0  # fraction of training done, 0..1 (PaMi close-to-far schedule)

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """log pi(y_w) - log pi_ref(y_w); the reference counts as 0 when absent (reference-free)."""
        return self.policy_chosen - (0.0 if self.ref_chosen is None else self.ref_chosen)

    @property
    def rejected_logratios(self) -> torch.Tensor:
        """log pi(y_l) - log pi_ref(y_l); the reference counts as 0 when absent."""
        return self.policy_rejected - (0.0 if self.ref_rejected is None else self.ref_rejected)

    @property
    def margin(self) -> torch.Tensor:
        """h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]  (METHODS §0)."""
        return self.chosen_logratios - self.rejected_logratios


# Which LossInputs fields each requirement name promises (checked before every call).
_REQUIRED_FIELDS = {"reference": ("ref_chosen", "ref_rejected"), "corrupt": ("policy_corrupt", "ref_corrupt"),
                    "bag": ("bag_policy", "bag_ref", "bag_distance"), "gt": ("gt_logps", "gt_tokens"),
                    "delta": ("score_delta",)}


def _check(loss: Any, x: LossInputs, fields: tuple[str, ...] = (), pairwise: bool = True) -> None:
    """Raise ValueError naming the loss and any missing input (pairwise=False: ref_rejected unused)."""
    _check_beta(getattr(loss, "beta", 1.0))
    needed = [f for req in sorted(loss.requires) for f in _REQUIRED_FIELDS[req]] + list(fields)
    if not pairwise:
        needed = [f for f in needed if f != "ref_rejected"]
    missing = [f for f in needed if getattr(x, f) is None]
    if missing:
        raise ValueError(f"{type(loss).__name__} needs LossInputs field(s) {missing}; got None")


def _reduce(losses: torch.Tensor, weight: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """mean(w * l) over the batch, or over the kept samples when `keep` is given (see module doc)."""
    w = torch.ones_like(losses) if weight is None else weight.to(losses.dtype)
    if keep is None:
        return (w * losses).mean()
    # torch.where, not multiplication: a dropped sample's loss may be inf/nan and 0*nan = nan.
    return torch.where(keep, w * losses, torch.zeros_like(losses)).sum() / keep.sum().clamp(min=1)


def _pair_rewards(beta: float, x: LossInputs, per_token: bool = False) -> dict[str, float]:
    """TRL's logged rewards: beta * log-ratio (detached; per token for IPO), margin, pair accuracy."""
    rc, rr = x.chosen_logratios.detach().float(), x.rejected_logratios.detach().float()
    if per_token:
        rc, rr = rc / x.chosen_tokens.clamp(min=1), rr / x.rejected_tokens.clamp(min=1)
    rc, rr = beta * rc, beta * rr
    return {"rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
            "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).float().mean().item()}


def _check_beta(beta: float) -> None:
    """beta is a temperature: it must be positive (a negative one would reverse the preference)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


# -- distillation (token level: they need both models' logits, so they are batch losses, not LOSSES terms) --

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1 (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def shared_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Both cut to the common vocabulary size (padded embedding rows; LLaVA-MoD truncates the same way)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :v], teacher_logits[..., :v]


def mimic_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mimic distillation (LLaVA-MoD, arXiv 2408.15881; METHODS §5): the mean over answer tokens of

        KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))

    (shufangxun/LLaVA-MoD align_trainer.py `only_kd`, response tokens only, no temperature), chunked
    (`mmpo.logprobs.token_forward_kl`).
    """
    s, t = shared_vocab(student_logits, teacher_logits)
    return masked_mean(token_forward_kl(s, t), mask)


def dpkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor,
         beta: float, kd_ratio: float) -> tuple[torch.Tensor, dict[str, float]]:
    """DPKD (arXiv 2406.19774; microsoft/LMOps dpkd; METHODS §6.5) with teacher forcing on the gold answer y.

    At each answer position, y_t = argmax p_T and y_s = argmax p_S (no gradient through the argmax), and

        h_t = [log p_S(y_t) - log p_S(y_s)] - [log p_T(y_t) - log p_T(y_s)]
        L_DPKD = mean_t -log sigmoid(beta h_t),   total = (1 - k) CE(y) + k L_DPKD

    (the lm_coef pre-training term is not used). Every log-probability is a chunked token log-prob
    (`mmpo.logprobs.token_logps`), so no [B, T, V] fp32 log-softmax is built.

    Returns:
        (total loss, metrics: dpkd/loss, dpkd/ce, dpkd/margin).
    """
    s, t = shared_vocab(student_logits, teacher_logits)
    y_t, y_s = t.argmax(-1), s.detach().argmax(-1)
    with torch.no_grad():
        teacher_gap = token_logps(t, y_t) - token_logps(t, y_s)
    h = token_logps(s, y_t) - token_logps(s, y_s) - teacher_gap
    l_dpkd = masked_mean(-F.logsigmoid(beta * h), mask)
    ce = -masked_mean(token_logps(s, gold), mask)
    total = (1 - kd_ratio) * ce + kd_ratio * l_dpkd
    return total, {"dpkd/loss": l_dpkd.item(), "dpkd/ce": ce.item(), "dpkd/margin": masked_mean(h, mask).item()}


@dataclass
class DPOLoss:
    """DPO (sigmoid). Rafailov et al., arXiv 2305.18290, Eq. 7; confirmed (TRL loss_type="sigmoid").

    l_i = -log sigmoid(beta * h_i),  h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)].
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        return _reduce(-F.logsigmoid(self.beta * x.margin), x.weight), _pair_rewards(self.beta, x)


@dataclass
class CDPOLoss:
    """cDPO, label smoothing (Mitchell, "A note on DPO with noisy preferences"); confirmed (TRL
    loss_type="sigmoid" with label_smoothing; METHODS §6.2). eps = 0 is DPO.

    l_i = (1 - eps) * -log sigmoid(beta h_i) + eps * -log sigmoid(-beta h_i),  0 <= eps <= 0.5.
    """

    beta: float = 0.1
    eps: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 0.5:
            raise ValueError(f"eps must be in [0, 0.5], got {self.eps}")

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        z = self.beta * x.margin
        losses = -(1 - self.eps) * F.logsigmoid(z) - self.eps * F.logsigmoid(-z)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class RobustDPOLoss:
    """rDPO, unbiased under label flips at rate eps. Chowdhury et al., arXiv 2403.00409; confirmed
    (TRL loss_type="robust"; METHODS §6.2). eps = 0 is DPO.

    l_i = [(1 - eps) * -log sigmoid(beta h_i) - eps * -log sigmoid(-beta h_i)] / (1 - 2 eps), eps < 0.5.
    """

    beta: float = 0.1
    eps: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps}")

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        z = self.beta * x.margin
        losses = (-(1 - self.eps) * F.logsigmoid(z) + self.eps * F.logsigmoid(-z)) / (1 - 2 * self.eps)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class IPOLoss:
    """IPO. Azar et al., arXiv 2310.12036, Eq. 17 with tau = beta; TRL loss_type="ipo" (METHODS §6.3).

    l_i = (h_bar_i - 1 / (2 beta))^2, where h_bar uses per-token averaged log-probs:
    h_bar = (pc - rc) / n_w - (pr - rr) / n_l. The length normalisation is TRL's (its source says it
    was confirmed with the IPO authors). Rewards are logged from the normalised ratios, as TRL does.
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, ("chosen_tokens", "rejected_tokens"))
        chosen = x.chosen_logratios / x.chosen_tokens.clamp(min=1)
        rejected = x.rejected_logratios / x.rejected_tokens.clamp(min=1)
        losses = (chosen - rejected - 1.0 / (2.0 * self.beta)) ** 2
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x, per_token=True)


@dataclass
class HingeLoss:
    """SLiC-HF hinge. Zhao et al., arXiv 2305.10425; confirmed (TRL loss_type="hinge").

    l_i = max(0, 1 - beta * h_i).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        return _reduce(torch.relu(1 - self.beta * x.margin), x.weight), _pair_rewards(self.beta, x)


@dataclass
class DADPOLoss:
    """DA-DPO, difficulty-aware per-pair beta. Qiu et al., arXiv 2601.00623; confirmed from the code
    (Artanic30/DA-DPO llava/train/da_dpo.py; METHODS §3). Rewards log the unscaled beta, as it does.

    beta_i = beta * alpha * (1 + |score_delta_i|);  l_i = -log sigmoid(beta_i * h_i).
    score_delta is the fused difficulty score gap, built offline (data_builders/difficulty.py).
    """

    beta: float = 0.1
    alpha: float = 1.0
    requires: ClassVar[frozenset[str]] = frozenset({"reference", "delta"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        beta_i = self.beta * self.alpha * (1 + x.score_delta.abs())
        losses = -F.logsigmoid(beta_i * x.margin)
        metrics = _pair_rewards(self.beta, x)
        metrics["dadpo/beta_mean"] = beta_i.detach().float().mean().item()
        return _reduce(losses, x.weight), metrics


@dataclass
class ClipDPOLoss:
    """VideoSAVi v1 "CLIP-adjusted DPO". Kulkarni & Fazli, arXiv 2412.00624 v1 (METHODS §2).

    RECONSTRUCTION (the v1 paper body was not available; only the name of the loss is confirmed):
      form="scale":  l_i = -log sigmoid(beta * (1 + gamma * score_delta_i) * h_i)   (default)
      form="margin": l_i = -log sigmoid(beta * h_i - gamma_m * score_delta_i)
    score_delta = s_clip(y_w) - s_clip(y_l) >= 0 (the builder drops pairs where it is negative).
    The scale form mirrors how DA-DPO's code injects a CLIP-based score. gamma = 0 is DPO.
    """

    beta: float = 0.1
    gamma: float = 1.0
    form: str = "scale"
    gamma_m: float = 1.0
    requires: ClassVar[frozenset[str]] = frozenset({"reference", "delta"})

    def __post_init__(self) -> None:
        if self.form not in ("scale", "margin"):
            raise ValueError(f"form must be 'scale' or 'margin', got {self.form!r}")

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        if self.form == "scale":
            logits = self.beta * (1 + self.gamma * x.score_delta) * x.margin
        else:
            logits = self.beta * x.margin - self.gamma_m * x.score_delta
        losses = -F.logsigmoid(logits)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class BetaDPOLoss:
    """beta-DPO, dynamic batch beta + data filter. Wu et al., arXiv 2407.08639; code junkangwu/beta-DPO
    trainers.py (METHODS §6.1). a = 0, rho = 0 is DPO.

    Per call, in the code's order: (1) EMA (momentum 0.9, from 0, no bias correction) of M0 = mean(h),
    sigma = std(h) with this batch; (2) keep N*(1 - rho) pairs sampled without replacement with
    p_i ∝ exp(-(h_i - M0)^2 / (2 sigma^2)); (3) beta_b = max(beta * (1 + a*(mean_kept h - M0)), 1e-3),
    detached; (4) mean over kept of -log sigmoid(beta_b * h_i). Confirmed (code), except: Gumbel-top-k
    sampling (the multinomial's distribution, but it cannot fail when weights underflow), seeded by
    `seed + calls` for determinism, and single-process statistics (the code all-gathers h). M0, sigma
    and the call counter are state: checkpoint them with `state_dict()` / `load_state_dict()`.
    """

    beta: float = 0.1
    a: float = 0.6
    rho: float = 0.2
    momentum: float = 0.9
    seed: int = 0
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {self.rho}")
        self.gap_mean, self.gap_std, self.calls = 0.0, 0.0, 0

    def state_dict(self) -> dict[str, float | int]:
        """Running statistics and call counter, for checkpoints."""
        return {"gap_mean": self.gap_mean, "gap_std": self.gap_std, "calls": self.calls}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore what `state_dict` returned."""
        self.gap_mean, self.gap_std = float(state["gap_mean"]), float(state["gap_std"])
        self.calls = int(state["calls"])

    def _update_stats(self, gap: torch.Tensor) -> None:
        # torch.std is unbiased (as in the code); one pair has no spread, so count it as 0.
        batch_std = gap.std().item() if gap.numel() > 1 else 0.0
        m = self.momentum
        self.gap_mean = m * self.gap_mean + (1 - m) * gap.mean().item()
        self.gap_std = m * self.gap_std + (1 - m) * batch_std

    def _keep_mask(self, gap: torch.Tensor) -> torch.Tensor:
        n = gap.numel()
        n_keep = max(1, int(n * (1 - self.rho)))
        if n_keep >= n:  # rho = 0: keep all (and draw no random numbers)
            return torch.ones_like(gap, dtype=torch.bool)
        log_w = -0.5 * ((gap.double().cpu() - self.gap_mean) / max(self.gap_std, 1e-12)) ** 2
        log_w = log_w - log_w.max()  # so the Gumbel noise is not lost next to a huge common offset
        u = torch.rand(n, generator=torch.Generator().manual_seed(self.seed + self.calls), dtype=torch.float64)
        keys = log_w - torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))  # Gumbel-top-k sampling
        keep = torch.zeros(n, dtype=torch.bool)
        keep[keys.topk(n_keep).indices] = True
        return keep.to(gap.device)

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        h = x.margin
        self._update_stats(gap := h.detach().float())
        keep = self._keep_mask(gap)
        self.calls += 1
        beta_b = max(self.beta * (1 + self.a * (gap[keep].mean().item() - self.gap_mean)), 1e-3)
        losses = -F.logsigmoid(beta_b * h)
        metrics = _pair_rewards(self.beta, x)
        metrics.update({"beta_dpo/beta": beta_b, "beta_dpo/gap_mean": self.gap_mean,
                        "beta_dpo/gap_std": self.gap_std, "beta_dpo/kept_fraction": keep.float().mean().item()})
        return _reduce(losses, x.weight, keep), metrics


@dataclass
class KTOPairLoss:
    """Paired KTO, TRL's former loss_type="kto_pair" (KTO, arXiv 2402.01306, Eq. 7); the default of
    LLaVA-MoD's preference distillation (shufangxun/LLaVA-MoD dpo_trainer.py; METHODS §5). Confirmed.

    chosen_KL = clamp(mean(pc - rc), 0), rejected_KL = clamp(mean(pr - rr), 0), not detached (as TRL);
    l = cat(1 - sigmoid(beta*(rho_w - rejected_KL)), 1 - sigmoid(beta*(chosen_KL - rho_l))) over 2B
    entries, each KL from the other half. A pair's weight applies to both of its entries.
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        rho_w, rho_l = x.chosen_logratios, x.rejected_logratios
        chosen_kl, rejected_kl = rho_w.mean().clamp(min=0), rho_l.mean().clamp(min=0)
        losses = torch.cat([
            1 - torch.sigmoid(self.beta * (rho_w - rejected_kl)),
            1 - torch.sigmoid(self.beta * (chosen_kl - rho_l)),
        ])
        weight = None if x.weight is None else torch.cat([x.weight, x.weight])
        metrics = _pair_rewards(self.beta, x)
        metrics.update({"kto/chosen_kl": chosen_kl.item(), "kto/rejected_kl": rejected_kl.item()})
        return _reduce(losses, weight), metrics


@dataclass
class SFTLoss:
    """Token-averaged NLL regulariser (METHODS §6.4), added to a preference term with its own weight.

    target="chosen": l_i = -log pi(y_w|x) / n_w   (RPO, Pang et al., arXiv 2404.19733; TRL rpo_alpha.
        TRL averages over all tokens of the batch; here per pair, then the batch mean.)
    target="gt":     l_i = -log pi(y_gt|x) / n_gt (mrDPO "gdpo", arXiv 2410.06682; code
        bytedance/video-SALMONN-2: the CE is on the ground-truth caption, weight 0.1). Requires "gt".
    No reference model is needed (requires is per instance: {"gt"} only for target="gt").
    """

    target: str = "chosen"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if self.target not in ("chosen", "gt"):
            raise ValueError(f"target must be 'chosen' or 'gt', got {self.target!r}")
        if self.target == "gt":
            self.requires = frozenset({"gt"})  # instance attribute shadows the class default

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        if self.target == "gt":
            _check(self, x)
            logps, tokens = x.gt_logps, x.gt_tokens
        else:
            _check(self, x, ("chosen_tokens",))
            logps, tokens = x.policy_chosen, x.chosen_tokens
        losses = -logps / tokens.clamp(min=1)
        return _reduce(losses, x.weight), {f"sft/nll_{self.target}": losses.detach().float().mean().item()}


@dataclass
class MDPOConditionalLoss:
    """mDPO conditional (image) preference term. Wang et al., arXiv 2406.11839; code luka-group/mDPO
    mdpo_trainer.py (METHODS §6.6).

    l_i = -log sigmoid(beta * ([pc - rc] - [p_corrupt - r_corrupt])): the same chosen answer under the
    original media is preferred over it under corrupted media. Confirmed (code). With a video
    augmentation as the corruption this is single-clip VDPO (METHODS §1).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference", "corrupt"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, pairwise=False)
        h_img = x.chosen_logratios - (x.policy_corrupt - x.ref_corrupt)
        losses = -F.logsigmoid(self.beta * h_img)
        metrics = {"mdpo/img_margin": self.beta * h_img.detach().float().mean().item(),
                   "mdpo/img_accuracy": (h_img.detach() > 0).float().mean().item()}
        return _reduce(losses, x.weight), metrics


@dataclass
class MDPOAnchorLoss:
    """mDPO reward anchor. Wang et al., arXiv 2406.11839; confirmed (code luka-group/mDPO, METHODS §6.6).

    l_i = -log sigmoid(beta * (pc - rc) - delta), delta = 0: keeps the chosen reward positive.
    """

    beta: float = 0.1
    delta: float = 0.0
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, pairwise=False)
        z = self.beta * x.chosen_logratios - self.delta
        losses = -F.logsigmoid(z)
        return _reduce(losses, x.weight), {"mdpo/anchor_reward": z.detach().float().mean().item()}


@dataclass
class PaMiLoss:
    """PaMi-VDPO multi-instance video preference. Ding et al., arXiv 2504.05810 (METHODS §1). The bag, the
    distance d_k and the temperature schedule are in `mmpo.pami`.

    Confirmed: chosen = (v, y), rejected = (T_k(v), y) with the same answer; a bag of augmented
    clips; close-to-far selection; prompt-aware JS distance from the model itself.
    RECONSTRUCTION (no code or paper body): per instance h_k = [pc - rc] - [bag_policy_k - bag_ref_k];
    instances with bag_distance < delta_min or bag_mask False are false rejections and dropped (the floor
    applies from progress `floor_from` on: a warm-up for a policy that starts blind to the augmentation);
    w_k = softmax over kept k of d_k / tau(progress) (`pami_tau`; hard argmax after anneal_until),
    detached; mil_reduce="weighted_loss": l = sum_k w_k * -log sigmoid(beta h_k), or
    "weighted_logit": l = -log sigmoid(beta * sum_k w_k h_k). A sample whose bag is empty after the
    guard is left out of the batch mean. K = 1 is single-clip VDPO (= mdpo_conditional). *_rejected unused.
    """

    beta: float = 0.1
    tau_start: float = 10.0
    tau_end: float = 0.01
    anneal_until: float = 0.5
    delta_min: float = 1e-3
    floor_from: float = 0.0
    mil_reduce: str = "weighted_loss"
    requires: ClassVar[frozenset[str]] = frozenset({"reference", "bag"})

    def __post_init__(self) -> None:
        if self.mil_reduce not in ("weighted_loss", "weighted_logit"):
            raise ValueError(f"mil_reduce must be 'weighted_loss' or 'weighted_logit', got {self.mil_reduce!r}")
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ValueError("tau_start and tau_end must be > 0")

    def _weights(self, distance: torch.Tensor, kept: torch.Tensor, progress: float) -> torch.Tensor:
        """Detached [B, K] close-to-far weights: rows sum to 1 over kept instances, 0 for an empty bag."""
        d = distance.detach().float().masked_fill(~kept, float("-inf"))
        tau = pami_tau(progress, self.tau_start, self.tau_end, self.anneal_until)
        if tau == 0.0:
            w = F.one_hot(d.argmax(dim=1), d.shape[1]).float()
        else:
            w = torch.softmax(d / tau, dim=1)
        return torch.where(kept, torch.nan_to_num(w, nan=0.0), torch.zeros_like(w))

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, pairwise=False)
        kept = x.bag_distance >= (self.delta_min if x.progress >= self.floor_from else float("-inf"))
        if x.bag_mask is not None:
            kept = kept & x.bag_mask.bool()
        valid = kept.any(dim=1)
        w = self._weights(x.bag_distance, kept, x.progress).to(x.bag_policy.dtype)
        # Zero dropped instances before they enter the loss: padding may hold garbage log-probs.
        h = x.chosen_logratios.unsqueeze(1) - (x.bag_policy - x.bag_ref)
        h = torch.where(kept, h, torch.zeros_like(h))
        if self.mil_reduce == "weighted_loss":
            losses = (w * -F.logsigmoid(self.beta * h)).sum(dim=1)
        else:
            losses = -F.logsigmoid(self.beta * (w * h).sum(dim=1))
        n_inst = kept.numel() if x.bag_mask is None else max(int(x.bag_mask.sum()), 1)
        n_valid = max(int(valid.sum()), 1)
        metrics = {"pami/tau": pami_tau(x.progress, self.tau_start, self.tau_end, self.anneal_until),
                   "pami/kept_fraction": kept.sum().item() / n_inst,
                   "pami/empty_fraction": 1 - valid.sum().item() / len(valid),
                   "pami/margin": self.beta * (w * h.detach()).sum(1).sum().item() / n_valid,  # 0 rows for empty bags
                   "pami/w_max": w.max(dim=1).values.sum().item() / n_valid}
        return _reduce(losses, x.weight, valid), metrics


LOSSES: dict[str, type] = {
    "dpo": DPOLoss, "cdpo": CDPOLoss, "robust": RobustDPOLoss, "ipo": IPOLoss, "hinge": HingeLoss,
    "dadpo": DADPOLoss, "clip_dpo": ClipDPOLoss, "beta_dpo": BetaDPOLoss, "kto_pair": KTOPairLoss,
    "sft": SFTLoss, "mdpo_conditional": MDPOConditionalLoss, "mdpo_anchor": MDPOAnchorLoss, "pami": PaMiLoss,
}


def build_loss_terms(specs: list[dict], where: str = "loss") -> list[tuple[float, Any]]:
    """Build the weighted loss terms of a train config (`loss: [{name, weight, params}]`).

    Args:
        specs: entries with `name` (a LOSSES key), optional `weight` (default 1.0) and `params`
            (the loss dataclass's fields).
        where: prefix for error messages (e.g. "train.yaml: loss").

    Returns:
        [(weight, loss object)] in config order; the trainer sums weight * loss(inputs).

    Raises:
        ConfigError: unknown loss name, unknown or mistyped parameter, invalid value.
    """
    terms = []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected a mapping {{name, weight, params}}, got {spec!r}")
        extra = sorted(set(spec) - {"name", "weight", "params"})
        if extra:
            raise ConfigError(f"{at}: unknown key(s) {extra}; valid keys: ['name', 'params', 'weight']")
        name = spec.get("name")
        if not isinstance(name, str) or name not in LOSSES:
            raise ConfigError(f"{at}: unknown loss {name!r}; valid names: {sorted(LOSSES)}")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{at}.weight: expected a number, got {weight!r}")
        try:  # from_dict names unknown/mistyped keys; __post_init__ checks values (ValueError)
            loss = from_dict(LOSSES[name], dict(spec.get("params") or {}), f"{at}.params ({name})")
            _check_beta(getattr(loss, "beta", 1.0))
        except ValueError as exc:
            raise exc if isinstance(exc, ConfigError) else ConfigError(f"{at}.params ({name}): {exc}") from None
        terms.append((float(weight), loss))
    return terms


def requires_of(terms: list[tuple[float, Any]]) -> set[str]:
    """Union of what the terms need ("reference", "corrupt", "bag", "gt"): which passes to run."""
    return set().union(*(loss.requires for _, loss in terms)) if terms else set()
