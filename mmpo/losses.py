"""Preference losses: one small class per loss and a plain `LOSSES` dict.

Every loss maps one `LossInputs` (answer log-probs summed over tokens, [B], plus optional per-pair
tensors) to `(scalar loss, metrics)`. Its `requires` ("reference", "corrupt", "bag", "gt", "delta": the
objects of `mmpo.requirements`) says which extra inputs are collated, which extra forwards run and which
LossInputs fields are set (a pair without the required `meta.gt` or `scores.delta` is an error, not a
default); the trainer sums `weight * term` over
the config's `loss: [{name, weight, params}]`, each entry a `LossTerm` holding its built loss object.

Reduction: `mean_i(w_i * l_i)` (w = 1 when `weight` is None), not sum(w*l)/sum(w), so a weight scales
its pair's gradient and equal micro-batches give the full-batch loss and gradient (TRL's "gradient
accumulation 1x8 == 8x1" invariant). Losses that drop samples (beta-DPO's filter, PaMi's empty bags)
average over the kept ones, as their reference code does. Metrics are detached floats; `rewards/*`
use the unscaled beta, as TRL and the DA-DPO / beta-DPO code log them. Math: docs/METHODS.md §0-§6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmpo.logprobs import token_forward_kl, token_logps
from mmpo.pami import pami_tau
from mmpo.requirements import REQUIREMENTS
from mmpo.schema import ConfigError, from_dict


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


def _check(loss: Any, x: LossInputs, fields: tuple[str, ...] = (), pairwise: bool = True) -> None:
    """Raise ValueError naming the loss and any missing input (pairwise=False: ref_rejected unused). The fields
    each requirement promises are its `fields` (`mmpo.requirements`)."""
    needed = [f for req in sorted(loss.requires) for f in REQUIREMENTS[req].fields] + list(fields)
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


# -- TRL's f_divergence_type: how a log-ratio u = log pi - log pi_ref enters the reward-difference losses --

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass(kw_only=True)
class FDivergence:
    """f-DPO (Wang et al., "Beyond Reverse KL", arXiv 2309.16240): with f-divergence f as the regulariser, a
    sequence's implicit reward is beta f'(pi/pi_ref), so each log-ratio u is replaced by a score f'(e^u) before the
    chosen-minus-rejected difference. TRL 1.16's `f_divergence_type`, with its formulas and clamps:

        reverse_kl: u (DPO)    forward_kl: 1 - e^-u    js_divergence: log 2 + log sigmoid(u)
        alpha_divergence: (e^((a-1) u) - 1) / (a - 1), a = f_alpha_divergence_coef; the exponent is clamped at
        80 (11 for fp16) and computed in fp32 (fp64 for fp64 inputs); a = 1 is reverse_kl.

    Only losses built on the reward difference take it (TRL's list: sigmoid, sigmoid_norm, hinge, ipo, exo_pair,
    robust, discopop): the f-DPO reparametrisation leaves a beta log Z(x) term that cancels only there.
    """

    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5

    def __post_init__(self) -> None:
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(f"f_divergence_type must be one of {list(F_DIVERGENCES)}, got {self.f_divergence_type!r}")

    def f_score(self, u: torch.Tensor) -> torch.Tensor:
        """The score f'(e^u) of a log-ratio tensor (see the class docstring)."""
        kind, a = self.f_divergence_type, self.f_alpha_divergence_coef
        if kind == "forward_kl":
            return 1 - torch.exp(-u)
        if kind == "js_divergence":
            return math.log(2) + F.logsigmoid(u)
        if kind == "alpha_divergence" and abs(a - 1.0) >= 1e-6:
            t = (a - 1.0) * u
            work = t if t.dtype == torch.float64 else t.float()
            clamped = torch.clamp(work, max=11.0 if t.dtype == torch.float16 else 80.0)
            return (torch.exp(clamped) - 1.0).to(t.dtype) * (1.0 / (a - 1.0))
        return u  # reverse_kl (and alpha -> 1)

    def scores(self, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) scores; their difference replaces the margin h."""
        return self.f_score(x.chosen_logratios), self.f_score(x.rejected_logratios)

    def score_margin(self, x: LossInputs) -> torch.Tensor:
        """f'(chosen) - f'(rejected): the margin h under reverse_kl."""
        chosen, rejected = self.scores(x)
        return chosen - rejected


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
class DPOLoss(FDivergence):
    """DPO (sigmoid). Rafailov et al., arXiv 2305.18290, Eq. 7; confirmed (TRL loss_type="sigmoid").

    l_i = -log sigmoid(beta * h_i),  h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)].
    Takes TRL's `f_divergence_type` (`FDivergence`: h becomes the difference of f-scores).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        return _reduce(-F.logsigmoid(self.beta * self.score_margin(x)), x.weight), _pair_rewards(self.beta, x)


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
class RobustDPOLoss(FDivergence):
    """rDPO, unbiased under label flips at rate eps. Chowdhury et al., arXiv 2403.00409; confirmed
    (TRL loss_type="robust"; METHODS §6.2). eps = 0 is DPO.

    l_i = [(1 - eps) * -log sigmoid(beta h_i) - eps * -log sigmoid(-beta h_i)] / (1 - 2 eps), eps < 0.5.
    eps is TRL's `label_smoothing`; takes its `f_divergence_type` (`FDivergence`).
    """

    beta: float = 0.1
    eps: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps}")
        super().__post_init__()

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        z = self.beta * self.score_margin(x)
        losses = (-(1 - self.eps) * F.logsigmoid(z) + self.eps * F.logsigmoid(-z)) / (1 - 2 * self.eps)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class IPOLoss(FDivergence):
    """IPO. Azar et al., arXiv 2310.12036, Eq. 17 with tau = beta; TRL loss_type="ipo" (METHODS §6.3).

    l_i = (h_bar_i - 1 / (2 beta))^2, where h_bar uses per-token averaged log-probs:
    h_bar = (pc - rc) / n_w - (pr - rr) / n_l. The length normalisation is TRL's (its source says it
    was confirmed with the IPO authors). Rewards are logged from the normalised ratios (TRL 1.16 logs the
    unnormalised ones for every loss). Takes TRL's `f_divergence_type` (`FDivergence`: scores replace the ratios).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, ("chosen_tokens", "rejected_tokens"))
        chosen, rejected = self.scores(x)
        chosen, rejected = chosen / x.chosen_tokens.clamp(min=1), rejected / x.rejected_tokens.clamp(min=1)
        losses = (chosen - rejected - 1.0 / (2.0 * self.beta)) ** 2
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x, per_token=True)


@dataclass
class HingeLoss(FDivergence):
    """SLiC-HF hinge. Zhao et al., arXiv 2305.10425; confirmed (TRL loss_type="hinge").

    l_i = max(0, 1 - beta * h_i). Takes TRL's `f_divergence_type` (`FDivergence`).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        return _reduce(torch.relu(1 - self.beta * self.score_margin(x)), x.weight), _pair_rewards(self.beta, x)


@dataclass
class DADPOLoss:
    """DA-DPO, difficulty-aware per-pair beta. Qiu et al., arXiv 2601.00623; confirmed from the code
    (Artanic30/DA-DPO llava/train/da_dpo.py; METHODS §3). Rewards log the unscaled beta, as it does.

    beta_i = beta * alpha * (1 + |score_delta_i|);  l_i = -log sigmoid(beta_i * h_i).
    score_delta is the fused difficulty score gap, built offline (mmpo/builders/difficulty.py).
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

    target="chosen": l_i = -log pi(y_w|x) / n_w   (RPO, Pang et al., arXiv 2404.19733; TRL rpo_alpha.)
    target="gt":     l_i = -log pi(y_gt|x) / n_gt (mrDPO "gdpo", arXiv 2410.06682; code
        bytedance/video-SALMONN-2: the CE is on the ground-truth caption, weight 0.1). Requires "gt".
    average="pair" (default): per pair, then the batch mean, so micro-batches add up to the full batch.
    average="batch_tokens": TRL 1.16's loss_type="sft", l_i = sum_j -log pi(y_j) / sum_j n_j for every i, the
        mean over all answer tokens of the (micro-)batch, so long answers count more and the value depends on
        how the batch is split, as in TRL; TRL's `loss_type: [sft]` reads as this.
    No reference model is needed (requires is per instance: {"gt"} only for target="gt").
    """

    target: str = "chosen"
    average: str = "pair"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if self.target not in ("chosen", "gt"):
            raise ValueError(f"target must be 'chosen' or 'gt', got {self.target!r}")
        if self.average not in ("pair", "batch_tokens"):
            raise ValueError(f"average must be 'pair' or 'batch_tokens', got {self.average!r}")
        if self.target == "gt":
            self.requires = frozenset({"gt"})  # instance attribute shadows the class default

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        if self.target == "gt":
            _check(self, x)
            logps, tokens = x.gt_logps, x.gt_tokens
        else:
            _check(self, x, ("chosen_tokens",))
            logps, tokens = x.policy_chosen, x.chosen_tokens
        if self.average == "pair":
            losses = -logps / tokens.clamp(min=1)
        else:  # one value for the batch, each pair's weight applied to it (TRL: WPO weights, mean(w) * value)
            losses = (-logps.sum() / tokens.sum().clamp(min=1)).expand(logps.shape[0])
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


# -- the rest of TRL 1.16's DPOTrainer loss family (trl/trainer/dpo_trainer.py `_compute_loss`). Each is TRL's
# per-sequence loss l_i reduced as every mmpo loss is (mean of w_i * l_i; TRL: plain mean, i.e. w = 1), and
# equals TRL's own code in float64 (tests/test_trl_losses.py). h, rho_w = pc - rc, rho_l = pr - rr as above.


def _uniform_weight(loss: Any, weight: torch.Tensor | None) -> None:
    """Sorting losses pair the i-th smallest chosen with the i-th smallest rejected quantity, so l_i belongs to no
    one pair and a per-pair weight cannot follow it (TRL refuses use_weighting with them for the same reason)."""
    if weight is not None and weight.numel() and not bool((weight == weight.flatten()[0]).all()):
        raise ValueError(f"{type(loss).__name__} sorts the batch, so per-pair weights (a record's `weight`, "
                         "use_weighting) cannot apply to its terms; drop the weights or use another loss")


@dataclass
class EXOPairLoss(FDivergence):
    """EXO, pairwise (Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment", arXiv
    2402.00856, Eq. 16 with K = 2); TRL loss_type="exo_pair". KL(q || p) from the model's preference distribution
    q = softmax over {y_w, y_l} of beta * log-ratio to the smoothed label distribution p = (1 - eps, eps):

        z = beta h;  l_i = s(z) (log s(z) - log(1 - eps)) + s(-z) (log s(-z) - log eps),  s = sigmoid.

    eps is TRL's `label_smoothing` (mmpo's name, as in cdpo / robust); it must be > 0 (TRL refuses 0; the paper
    recommends 1e-3, the default here). Takes TRL's `f_divergence_type` (`FDivergence`).
    """

    beta: float = 0.1
    eps: float = 1e-3
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1) (EXO's label smoothing, TRL's label_smoothing; the paper uses "
                             f"1e-3), got {self.eps}")
        super().__post_init__()

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        z = self.beta * self.score_margin(x)
        losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-self.eps))
                  + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(self.eps)))
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class NCAPairLoss:
    """NCA, pairwise (Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards", arXiv
    2402.05369, the K = 2 preference case); TRL loss_type="nca_pair". Each answer's own reward counts, not only
    the margin, so the chosen likelihood is pushed up rather than only the gap:

        r_w = beta rho_w, r_l = beta rho_l;  l_i = -log s(r_w) - 0.5 log s(-r_w) - 0.5 log s(-r_l).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        r_w, r_l = self.beta * x.chosen_logratios, self.beta * x.rejected_logratios
        losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class BCOPairLoss:
    """BCO, pairwise (Jung et al., "Binary Classifier Optimization for Large Language Model Alignment", arXiv
    2404.04656, without its reward shift); TRL loss_type="bco_pair". A binary classifier with logit
    beta * log-ratio: chosen answers labelled 1, rejected 0:

        l_i = -log s(beta rho_w) - log s(-beta rho_l).

    State: none. The paper subtracts a running mean delta of the rewards, and earlier TRL releases kept one
    (`RunningMoments`); TRL 1.16 dropped it and computes the stateless form above, which this mirrors. So there
    is nothing to checkpoint or resume, and DDP ranks need no shared statistic.
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        losses = -F.logsigmoid(self.beta * x.chosen_logratios) - F.logsigmoid(-self.beta * x.rejected_logratios)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class SPPOHardLoss:
    """SPPO, hard-label version (Wu et al., "Self-Play Preference Optimization for Language Model Alignment",
    arXiv 2405.00675, Eq. 4.7 of Algorithm 1 with P(y_w > y_l) = 1 for the winner, 0 for the loser); TRL
    loss_type="sppo_hard". Squared errors pull each log-ratio to +-1/(2 beta):

        l_i = (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2.
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        losses = (x.chosen_logratios - 0.5 / self.beta) ** 2 + (x.rejected_logratios + 0.5 / self.beta) ** 2
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class AOTLoss:
    """AOT, paired (Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport", arXiv
    2406.05882); TRL loss_type="aot". First-order stochastic dominance of the policy's chosen-over-rejected
    log-prob gap over the reference's, via the 1-D optimal transport plan, i.e. sorting across the batch:

        d_i = sort_j(pc_j - pr_j)_i - sort_j(rc_j - rr_j)_i;
        l_i = (1 - eps) * -log s(beta d_i) + eps * -log s(-beta d_i).

    eps is TRL's `label_smoothing` (mmpo's name), 0 <= eps <= 0.5. The sort runs over the micro-batch each
    process holds (TRL: the per-device batch), so unlike the per-pair losses its value depends on how the batch
    is split: grad_accum and process count change what it computes. Per-pair weights are refused
    (`_uniform_weight`).
    """

    beta: float = 0.1
    eps: float = 0.0
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 0.5:
            raise ValueError(f"eps must be in [0, 0.5], got {self.eps}")

    def _delta(self, x: LossInputs) -> torch.Tensor:
        policy = torch.sort(x.policy_chosen - x.policy_rejected, dim=0).values
        return policy - torch.sort(x.ref_chosen - x.ref_rejected, dim=0).values

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        _uniform_weight(self, x.weight)
        z = self.beta * self._delta(x)
        losses = -(1 - self.eps) * F.logsigmoid(z) - self.eps * F.logsigmoid(-z)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class AOTUnpairedLoss(AOTLoss):
    """AOT, unpaired (arXiv 2406.05882); TRL loss_type="aot_unpaired": the chosen and the rejected log-ratios are
    sorted separately, so the distribution of chosen rewards dominates that of rejected ones with no pairing:

        d_i = sort_j(rho_w,j)_i - sort_j(rho_l,j)_i;  l_i as in `AOTLoss` (same eps, same batch caveats).
    """

    def _delta(self, x: LossInputs) -> torch.Tensor:
        return torch.sort(x.chosen_logratios, dim=0).values - torch.sort(x.rejected_logratios, dim=0).values


@dataclass
class APOZeroLoss:
    """APO-zero (D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions", arXiv
    2408.06266, Eq. 7); TRL loss_type="apo_zero". For chosen answers better than the model's own: raise the
    chosen likelihood and lower the rejected one, each anchored at the reference:

        l_i = [1 - s(beta rho_w)] + s(beta rho_l).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        losses = 1 - torch.sigmoid(self.beta * x.chosen_logratios) + torch.sigmoid(self.beta * x.rejected_logratios)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class APODownLoss:
    """APO-down (arXiv 2408.06266, Eq. 8); TRL loss_type="apo_down". For chosen answers worse than the model's
    own: lower both likelihoods, the rejected one more:

        l_i = s(beta rho_w) + [1 - s(beta (rho_w - rho_l))].
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        losses = torch.sigmoid(self.beta * x.chosen_logratios) + 1 - torch.sigmoid(self.beta * x.margin)
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class DiscoPOPLoss(FDivergence):
    """DiscoPOP / LRML, the log-ratio modulated loss (Chris Lu et al., "Discovering Preference Optimization
    Algorithms with and for Large Language Models", arXiv 2406.08414, Eq. 5); TRL loss_type="discopop". A
    blend of the logistic (DPO) and exponential losses, the mix set by the margin itself:

        z = beta h;  m = s(z / tau);  l_i = (1 - m) * -log s(z) + m * e^-z.

    tau is TRL's `discopop_tau` (> 0; the paper's 0.05 is the default). Takes TRL's `f_divergence_type`.
    """

    beta: float = 0.1
    tau: float = 0.05
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0 (TRL's discopop_tau), got {self.tau}")
        super().__post_init__()

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x)
        z = self.beta * self.score_margin(x)
        m = torch.sigmoid(z / self.tau)
        losses = -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m
        return _reduce(losses, x.weight), _pair_rewards(self.beta, x)


@dataclass
class SigmoidNormLoss(FDivergence):
    """Length-normalised DPO; TRL loss_type="sigmoid_norm" (the average-log-prob reward of SimPO, Meng et al.,
    arXiv 2405.14734, but with the reference kept and no margin). Each log-ratio is divided by its
    answer's token count n (TRL: completion tokens, at least 1) before the difference:

        l_i = -log sigmoid(beta * (rho_w / n_w - rho_l / n_l)).

    Rewards are logged unnormalised, as TRL does. Takes TRL's `f_divergence_type` (scores replace the ratios).
    """

    beta: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"reference"})

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        _check(self, x, ("chosen_tokens", "rejected_tokens"))
        chosen, rejected = self.scores(x)
        delta = chosen / x.chosen_tokens.clamp(min=1) - rejected / x.rejected_tokens.clamp(min=1)
        return _reduce(-F.logsigmoid(self.beta * delta), x.weight), _pair_rewards(self.beta, x)


LOSSES: dict[str, type] = {
    "dpo": DPOLoss, "cdpo": CDPOLoss, "robust": RobustDPOLoss, "ipo": IPOLoss, "hinge": HingeLoss,
    "dadpo": DADPOLoss, "clip_dpo": ClipDPOLoss, "beta_dpo": BetaDPOLoss, "kto_pair": KTOPairLoss,
    "sft": SFTLoss, "mdpo_conditional": MDPOConditionalLoss, "mdpo_anchor": MDPOAnchorLoss, "pami": PaMiLoss,
    # TRL 1.16 loss types under TRL's names (its "sigmoid" is dpo; TRL_LOSS_NAMES maps every TRL name)
    "exo_pair": EXOPairLoss, "nca_pair": NCAPairLoss, "bco_pair": BCOPairLoss, "sppo_hard": SPPOHardLoss,
    "aot": AOTLoss, "aot_unpaired": AOTUnpairedLoss, "apo_zero": APOZeroLoss, "apo_down": APODownLoss,
    "discopop": DiscoPOPLoss, "sigmoid_norm": SigmoidNormLoss,
}


# TRL 1.16's loss_type names -> LOSSES names (the README's loss table), all equal to TRL in float64
# (tests/test_trl_losses.py); TRL's "sft" is mmpo's with TRL_PARAMS' batch-token average.
TRL_PARAMS = {"sft": {"average": "batch_tokens"}}
TRL_LOSS_NAMES = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "robust": "robust", "sft": "sft",
                  **{n: n for n in ("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                                    "apo_zero", "apo_down", "discopop", "sigmoid_norm")}}
# TRL DPOConfig loss knobs (TrainConfig fields of the same name) -> the loss parameter each sets, in every term
# whose class has that parameter (label_smoothing -> eps: robust, exo_pair, aot, aot_unpaired and mmpo's cdpo;
# TRL 1.16's sigmoid ignores it, and so does dpo).
TRL_KNOBS = {"beta": "beta", "label_smoothing": "eps", "discopop_tau": "tau", "f_divergence_type": "f_divergence_type",
             "f_alpha_divergence_coef": "f_alpha_divergence_coef"}


@dataclass
class LossTerm:
    """One entry of a train config's `loss:` list. Validated once, when the config is read: `loss` then holds the
    built loss object (an instance of `LOSSES[name]` with `params` as its fields), which the trainer runs."""

    name: str = "dpo"  # a key of LOSSES
    weight: float = 1.0  # the term's weight in the explicit weighted sum
    params: dict = field(default_factory=dict)  # the loss class's fields (e.g. beta), checked by the class

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ConfigError(f"name: unknown loss {self.name!r}; valid names: {sorted(LOSSES)}")
        at = f"params ({self.name})"
        try:  # from_dict names unknown/mistyped keys; the class's __post_init__ checks values (ValueError)
            self.loss = from_dict(LOSSES[self.name], dict(self.params), at)
            _check_beta(getattr(self.loss, "beta", 1.0))
        except ValueError as exc:
            raise exc if isinstance(exc, ConfigError) else ConfigError(f"{at}: {exc}") from None


def requires_of(terms: list[LossTerm]) -> set[str]:
    """Union of what the terms' losses need ("reference", "corrupt", "bag", "gt", "delta")."""
    return set().union(*(t.loss.requires for t in terms))
