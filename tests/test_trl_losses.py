"""TRL 1.16's DPO loss family in mmpo: each loss equals TRL's own `DPOTrainer._compute_loss` (called, not copied)
on the same random float64 log-probs, value and gradient (rel 1e-9); hand-worked arithmetic per new loss.

TRL's method is run on a minimal stand-in for the trainer (`_trl_self`: the attributes `_compute_loss` reads,
reference log-probs "precomputed" so no reference model runs) and a stand-in model whose fused LM head returns
the chosen per-token log-probs (`_FusedHead`); everything between those log-probs and the loss is TRL's code.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmpo.losses import LOSSES, LossInputs, LossTerm

trl_trainer = pytest.importorskip("trl.trainer.dpo_trainer")

B, T = 6, 9  # pairs, sequence length (prompt + completion) of TRL's rows


def ls(z: float) -> float:
    """-log sigmoid(z)."""
    return math.log1p(math.exp(-z))


def s(z: float) -> float:
    return 1 / (1 + math.exp(-z))


class _FusedHead:
    """What TRL's fused LM head gives `_compute_loss`: per-token log-probs of the labels, 0 where the label is
    masked, and the metric outputs (entropy, mean logits, top-1 hits), plus log sum_v p^2 for WPO."""

    def __init__(self, token_logps, log_sum_sq=None):
        self.token_logps, self.log_sum_sq = token_logps, log_sum_sq

    def __call__(self, labels, **_):
        mask = (labels[:, 1:] != -100).to(self.token_logps.dtype)
        zeros = torch.zeros_like(self.token_logps)
        return SimpleNamespace(log_probs=self.token_logps * mask, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(mask, dtype=torch.bool), log_sum_sq_probs=self.log_sum_sq)


def _trl_self(loss_type, weights=None, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
              f_alpha_divergence_coef=0.5, use_weighting=False, discopop_tau=0.05):
    """The attributes DPOTrainer.__init__ sets that `_compute_loss` reads (single process, precomputed reference)."""
    loss_type = [loss_type] if isinstance(loss_type, str) else loss_type
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, beta=beta, loss_types=loss_type, loss_weights=weights or [1.0] * len(loss_type),
        label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef, use_weighting=use_weighting,
        args=SimpleNamespace(discopop_tau=discopop_tau), _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)


def random_batch(seed=0, dtype=torch.float64):
    """B pairs as TRL lays them out ([chosen rows; rejected rows], prompt then completion of varied length), with
    per-token log-probs (a leaf, for gradients), log sum p^2 and reference sums."""
    g = torch.Generator().manual_seed(seed)
    completion = torch.zeros(2 * B, T, dtype=torch.long)
    for row in range(2 * B):
        start = int(torch.randint(1, 4, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        completion[row, start:end] = 1
    token_logps = (-3 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    log_sum_sq = -2 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64).to(dtype)
    ref = (token_logps.detach() * completion[:, 1:] + 0.7 * torch.randn(2 * B, T - 1, generator=g).to(dtype)
           * completion[:, 1:]).sum(1)
    return dict(completion=completion, token_logps=token_logps, log_sum_sq=log_sum_sq, ref=ref)


def trl_loss(batch, trl_args):
    """TRL's loss on `batch`, from its own `DPOTrainer._compute_loss`."""
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
              "completion_mask": batch["completion"], "ref_chosen_logps": batch["ref"][:B],
              "ref_rejected_logps": batch["ref"][B:]}
    head = _FusedHead(batch["token_logps"], batch["log_sum_sq"])
    # exo_pair builds its epsilon with torch.tensor(label_smoothing), in the default dtype: float64 here too
    default = torch.get_default_dtype()
    torch.set_default_dtype(batch["token_logps"].dtype)
    try:
        return trl_trainer.DPOTrainer._compute_loss(_trl_self(**trl_args), head, inputs, False)
    finally:
        torch.set_default_dtype(default)


def mmpo_inputs(batch, weight=None) -> LossInputs:
    """The same batch as mmpo's loss inputs: summed answer log-probs and token counts per pair."""
    mask = batch["completion"][:, 1:].to(batch["token_logps"].dtype)
    sums, counts = (batch["token_logps"] * mask).sum(1), mask.sum(1)
    return LossInputs(policy_chosen=sums[:B], policy_rejected=sums[B:], ref_chosen=batch["ref"][:B],
                      ref_rejected=batch["ref"][B:], chosen_tokens=counts[:B], rejected_tokens=counts[B:],
                      weight=weight)


def value_and_grad(loss, leaf):
    grad, = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def assert_same(mine, theirs, leaf, rel=1e-9):
    (v1, g1), (v2, g2) = value_and_grad(mine, leaf), value_and_grad(theirs, leaf)
    assert v1.item() == pytest.approx(v2.item(), rel=rel, abs=1e-300)
    assert torch.allclose(g1, g2, rtol=rel, atol=rel * g2.abs().max().item())
    assert g2.abs().sum() > 0


# (mmpo name, mmpo params, TRL loss_type, TRL args): every TRL 1.16 loss type.
CASES = [
    ("dpo", {"beta": 0.3}, "sigmoid", {"beta": 0.3}),
    ("hinge", {"beta": 0.3}, "hinge", {"beta": 0.3}),
    ("ipo", {"beta": 0.3}, "ipo", {"beta": 0.3}),
    ("robust", {"beta": 0.3, "eps": 0.2}, "robust", {"beta": 0.3, "label_smoothing": 0.2}),
    ("exo_pair", {"beta": 0.3, "eps": 1e-3}, "exo_pair", {"beta": 0.3, "label_smoothing": 1e-3}),
    ("exo_pair", {"beta": 0.2, "eps": 0.3}, "exo_pair", {"beta": 0.2, "label_smoothing": 0.3}),
    ("nca_pair", {"beta": 0.3}, "nca_pair", {"beta": 0.3}),
    ("bco_pair", {"beta": 0.3}, "bco_pair", {"beta": 0.3}),
    ("sppo_hard", {"beta": 0.3}, "sppo_hard", {"beta": 0.3}),
    ("aot", {"beta": 0.3}, "aot", {"beta": 0.3}),
    ("aot", {"beta": 0.3, "eps": 0.2}, "aot", {"beta": 0.3, "label_smoothing": 0.2}),
    ("aot_unpaired", {"beta": 0.3, "eps": 0.1}, "aot_unpaired", {"beta": 0.3, "label_smoothing": 0.1}),
    ("apo_zero", {"beta": 0.3}, "apo_zero", {"beta": 0.3}),
    ("apo_down", {"beta": 0.3}, "apo_down", {"beta": 0.3}),
    ("discopop", {"beta": 0.3}, "discopop", {"beta": 0.3}),
    ("discopop", {"beta": 0.5, "tau": 0.7}, "discopop", {"beta": 0.5, "discopop_tau": 0.7}),
    ("sigmoid_norm", {"beta": 0.3}, "sigmoid_norm", {"beta": 0.3}),
    ("sft", {"average": "batch_tokens"}, "sft", {}),
]


@pytest.mark.parametrize("name, params, trl_type, trl_args", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_equals_trl_dpo_trainer_float64(name, params, trl_type, trl_args):
    """Value and gradient w.r.t. the per-token log-probs equal TRL's in float64 (rel 1e-9), on two batches."""
    for seed in (0, 1):
        batch = random_batch(seed)
        mine, _ = LOSSES[name](**params)(mmpo_inputs(batch))
        assert_same(mine, trl_loss(batch, {"loss_type": trl_type, **trl_args}), batch["token_logps"])


F_DIV_LOSSES = [("dpo", "sigmoid", {}), ("hinge", "hinge", {}), ("ipo", "ipo", {}),
                ("robust", "robust", {"eps": 0.1}), ("exo_pair", "exo_pair", {"eps": 0.01}),
                ("discopop", "discopop", {}), ("sigmoid_norm", "sigmoid_norm", {})]


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("name, trl_type, params", F_DIV_LOSSES, ids=[c[1] for c in F_DIV_LOSSES])
def test_f_divergences_equal_trl(name, trl_type, params, divergence):
    """TRL's f_divergence_type on every loss it allows. Alpha-divergence runs in float32: TRL's clamp table has no
    float64 entry (it raises KeyError there), so that case compares at float32 precision."""
    dtype, rel = (torch.float32, 1e-5) if divergence == "alpha_divergence" else (torch.float64, 1e-9)
    batch = random_batch(3, dtype)
    f_params = {"f_divergence_type": divergence, "f_alpha_divergence_coef": 0.3}
    trl_args = {"loss_type": trl_type, "beta": 0.3, "label_smoothing": params.get("eps", 0.0), **f_params}
    mine, _ = LOSSES[name](beta=0.3, **params, **f_params)(mmpo_inputs(batch))
    assert_same(mine, trl_loss(batch, trl_args), batch["token_logps"], rel)


def test_alpha_divergence_coefficient_one_is_reverse_kl_and_scores_by_hand():
    """a = 1 falls back to the log-ratio (TRL's limit case). u = log 2: forward_kl 1 - 1/2 = 0.5,
    js log 2 + log(2/3) = log(4/3), alpha a = 0.5: (2^-0.5 - 1) / -0.5 = 2 - sqrt 2."""
    u = torch.tensor([math.log(2)], dtype=torch.float64)
    score = {k: LOSSES["dpo"](f_divergence_type=k, f_alpha_divergence_coef=a).f_score(u).item()
             for k, a in [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5)]}
    assert score == pytest.approx({"reverse_kl": math.log(2), "forward_kl": 0.5, "js_divergence": math.log(4 / 3),
                                   "alpha_divergence": 2 - math.sqrt(2)})
    one = LOSSES["dpo"](f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0)
    assert one.f_score(u).item() == pytest.approx(math.log(2))


def test_weighted_sum_of_several_loss_types_equals_trl():
    """TRL's MPO-style list, loss_type [sigmoid, bco_pair, apo_zero] with weights [0.8, 0.2, 1.0], as mmpo terms."""
    batch = random_batch(4)
    terms = [LossTerm("dpo", 0.8, {"beta": 0.2}), LossTerm("bco_pair", 0.2, {"beta": 0.2}),
             LossTerm("apo_zero", 1.0, {"beta": 0.2})]
    x = mmpo_inputs(batch)
    mine = sum(t.weight * t.loss(x)[0] for t in terms)
    theirs = trl_loss(batch, {"loss_type": ["sigmoid", "bco_pair", "apo_zero"], "weights": [0.8, 0.2, 1.0],
                              "beta": 0.2})
    assert_same(mine, theirs, batch["token_logps"])


def test_rewards_metrics_are_trls():
    """rewards/chosen, /rejected, /margins, /accuracies as TRL logs them (beta * log-ratio, batch means)."""
    batch = random_batch(5)
    _, metrics = LOSSES["nca_pair"](beta=0.3)(mmpo_inputs(batch))
    trainer = _trl_self("nca_pair", beta=0.3)
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
              "completion_mask": batch["completion"], "ref_chosen_logps": batch["ref"][:B],
              "ref_rejected_logps": batch["ref"][B:]}
    trl_trainer.DPOTrainer._compute_loss(trainer, _FusedHead(batch["token_logps"]), inputs, False)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(trainer._metrics["train"][key][0], rel=1e-6)


# ----------------------------------------------------------------------------- hand-worked arithmetic

def one_pair(pc, pr, rc, rr, n_w=1.0, n_l=1.0):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return LossInputs(t(pc), t(pr), t(rc), t(rr), chosen_tokens=t(n_w), rejected_tokens=t(n_l))


def test_new_losses_by_hand():
    """One pair: pc = -1, pr = -3, rc = -2, rr = -2.5 -> rho_w = 1, rho_l = -0.5, h = 1.5; beta = 0.5.
    exo_pair eps = 0.1: z = 0.75, s(z) (log s(z) - log 0.9) + s(-z) (log s(-z) - log 0.1).
    nca_pair: r_w = 0.5, r_l = -0.25: ls(0.5) + 0.5 ls(-0.5) + 0.5 ls(0.25).
    bco_pair: ls(0.5) + ls(0.25).  sppo_hard: 1/(2 beta) = 1: (1 - 1)^2 + (-0.5 + 1)^2 = 0.25.
    apo_zero: 1 - s(0.5) + s(-0.25).  apo_down: s(0.5) + 1 - s(0.75).
    discopop tau = 0.5: m = s(1.5): (1 - m) ls(0.75) + m e^-0.75.
    sigmoid_norm, n_w = 2, n_l = 5: ls(0.5 (0.5 + 0.1)) = ls(0.3)."""
    x = one_pair(-1.0, -3.0, -2.0, -2.5)
    z = 0.75
    want = {
        ("exo_pair", 0.1): s(z) * (math.log(s(z)) - math.log(0.9)) + s(-z) * (math.log(s(-z)) - math.log(0.1)),
        ("nca_pair", None): ls(0.5) + 0.5 * ls(-0.5) + 0.5 * ls(0.25),
        ("bco_pair", None): ls(0.5) + ls(0.25),
        ("sppo_hard", None): 0.25,
        ("apo_zero", None): 1 - s(0.5) + s(-0.25),
        ("apo_down", None): s(0.5) + 1 - s(0.75),
        ("discopop", 0.5): (1 - s(1.5)) * ls(0.75) + s(1.5) * math.exp(-0.75),
    }
    for (name, extra), value in want.items():
        params = {"beta": 0.5}
        if extra is not None:
            params["eps" if name == "exo_pair" else "tau"] = extra
        assert LOSSES[name](**params)(x)[0].item() == pytest.approx(value, rel=1e-12), name
    norm = one_pair(-1.0, -3.0, -2.0, -2.5, n_w=2.0, n_l=5.0)
    assert LOSSES["sigmoid_norm"](beta=0.5)(norm)[0].item() == pytest.approx(ls(0.3), rel=1e-12)


def test_aot_sorts_across_the_batch_by_hand():
    """Two pairs, beta = 1, eps = 0. Policy gaps pc - pr = [2, -1], reference gaps rc - rr = [-3, 1]:
    sorted [-1, 2] - [-3, 1] = [2, 1] -> mean(ls(2), ls(1)) (paired DPO would see h = [5, -2]).
    Unpaired: rho_w = pc - rc = [1, -1.5], rho_l = pr - rr = [-4, 0.5]: sorted [-1.5, 1] - [-4, 0.5] = [2.5, 0.5].
    eps = 0.5 on the paired one: mean over z = [2, 1] of 0.5 ls(z) + 0.5 ls(-z)."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    x = LossInputs(t(1.0, -1.5), t(-1.0, -0.5), t(0.0, 0.0), t(3.0, -1.0))
    assert x.margin.tolist() == [5.0, -2.0]
    assert LOSSES["aot"](beta=1.0)(x)[0].item() == pytest.approx((ls(2) + ls(1)) / 2, rel=1e-12)
    assert LOSSES["aot_unpaired"](beta=1.0)(x)[0].item() == pytest.approx((ls(2.5) + ls(0.5)) / 2, rel=1e-12)
    smooth = sum(0.5 * ls(z) + 0.5 * ls(-z) for z in (2.0, 1.0)) / 2
    assert LOSSES["aot"](beta=1.0, eps=0.5)(x)[0].item() == pytest.approx(smooth, rel=1e-12)


def test_aot_refuses_per_pair_weights_but_takes_a_uniform_one():
    """Sorting breaks the pair -> term link: unequal weights are refused, equal ones just scale."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    x = LossInputs(t(1.0, -1.5), t(-1.0, -0.5), t(0.0, 0.0), t(3.0, -1.0), weight=t(1.0, 2.0))
    with pytest.raises(ValueError, match="sorts the batch"):
        LOSSES["aot"]()(x)
    base = LOSSES["aot"]()(LossInputs(t(1.0, -1.5), t(-1.0, -0.5), t(0.0, 0.0), t(3.0, -1.0)))[0]
    same = LOSSES["aot"]()(LossInputs(t(1.0, -1.5), t(-1.0, -0.5), t(0.0, 0.0), t(3.0, -1.0), weight=t(2.0, 2.0)))[0]
    assert same.item() == pytest.approx(2 * base.item())


@pytest.mark.parametrize("spec, message", [
    ({"name": "exo_pair", "params": {"eps": 0.0}}, "eps must be in \\(0, 1\\)"),
    ({"name": "aot", "params": {"eps": 0.7}}, "eps must be in"),
    ({"name": "discopop", "params": {"tau": 0.0}}, "tau must be > 0"),
    ({"name": "dpo", "params": {"f_divergence_type": "kl"}}, "f_divergence_type must be one of"),
    ({"name": "nca_pair", "params": {"f_divergence_type": "js_divergence"}}, "unknown key"),
    ({"name": "sppo_hard", "params": {"beta": 0.0}}, "beta must be > 0"),
])
def test_bad_parameters_are_refused(spec, message):
    from mmpo.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=message):
        from_dict(LossTerm, spec, "train.yaml: loss[0]")


def test_every_new_loss_needs_the_reference():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for name in ("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
                 "discopop", "sigmoid_norm"):
        assert LOSSES[name].requires == {"reference"}
        with pytest.raises(ValueError, match="ref_chosen"):
            LOSSES[name]()(LossInputs(t(-1.0), t(-2.0), chosen_tokens=t(1.0), rejected_tokens=t(1.0)))


# ----------------------------------------------------------------------------- WPO (TRL use_weighting)

V = 11  # vocabulary of the logits tests


def _logits_batch(seed=0):
    """Float64 logits [2B, T-1, V] predicting TRL-layout rows, their targets, and the completion mask."""
    batch = random_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    logits = (2 * torch.randn(2 * B, T - 1, V, generator=g, dtype=torch.float64)).requires_grad_(True)
    targets = torch.randint(0, V, (2 * B, T - 1), generator=g)
    return logits, targets, batch


def test_chunked_log_sum_sq_equals_the_plain_formula_and_trls_kernel():
    """log sum_v p_v^2 from the chunked log-softmax: equal to log((softmax^2).sum) in float64 for any chunk size,
    and to TRL's own chunked kernel (`ChunkedLogProbFunction`, fp32 statistics) in float32. The log-prob output and
    its gradient are unchanged by asking for it."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from mmpo.logprobs import ChunkedTokenLogps, token_logps

    logits, targets, _ = _logits_batch()
    plain = torch.log((torch.softmax(logits, -1) ** 2).sum(-1))
    for chunk in (1, 3, 128):
        logp, log_sum_sq = ChunkedTokenLogps.apply(logits, targets, chunk, True)
        assert torch.allclose(log_sum_sq, plain, rtol=1e-12, atol=1e-12) and not log_sum_sq.requires_grad
        assert torch.equal(logp, token_logps(logits, targets, chunk))
    grad_with, = torch.autograd.grad(ChunkedTokenLogps.apply(logits, targets, 2, True)[0].sum(), logits)
    grad_without, = torch.autograd.grad(token_logps(logits, targets, 2).sum(), logits)
    assert torch.equal(grad_with, grad_without)
    # TRL's kernel takes hidden states and the LM head: logits = hidden @ weight.T
    g = torch.Generator().manual_seed(7)
    hidden, weight = torch.randn(20, 8, generator=g), torch.randn(V, 8, generator=g)
    tgt = torch.randint(0, V, (20,), generator=g)
    trl_logp, _, trl_lss, _, _ = ChunkedLogProbFunction.apply(hidden, weight, None, tgt, 1.0, 4, None, 1.0,
                                                              ("log_sum_sq_probs",))
    logp, lss = ChunkedTokenLogps.apply((hidden @ weight.T)[None], tgt[None], 3, True)
    assert torch.allclose(lss[0], trl_lss, rtol=1e-5, atol=1e-5)
    assert torch.allclose(logp[0], trl_logp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, trl_type, params", [
    ("dpo", "sigmoid", {"beta": 0.3}), ("ipo", "ipo", {"beta": 0.3}), ("nca_pair", "nca_pair", {"beta": 0.3}),
    ("apo_down", "apo_down", {"beta": 0.3})])
def test_wpo_weighting_equals_trl_use_weighting(name, trl_type, params):
    """From the same float64 logits: TRL's loss with use_weighting (its head's log-probs and log sum p^2 computed
    plainly) equals mmpo's (chunked log-probs, `wpo_logps`, `wpo_weight` into LossInputs.weight), value and
    gradient w.r.t. the logits (rel 1e-9)."""
    from mmpo.logprobs import answer_logps, wpo_logps
    from mmpo.requirements import wpo_weight

    logits, targets, batch = _logits_batch(1)
    mask = batch["completion"][:, 1:]
    log_softmax = torch.log_softmax(logits, -1)
    batch = dict(batch, token_logps=log_softmax.gather(-1, targets[..., None])[..., 0],
                 log_sum_sq=torch.log((log_softmax.exp() ** 2).sum(-1)).detach())
    theirs = trl_loss(batch, {"loss_type": trl_type, "beta": 0.3, "use_weighting": True})
    sums, counts = answer_logps(logits, targets, mask)
    aligned = wpo_logps(logits, targets, mask)
    weight = wpo_weight(aligned[:B], aligned[B:])
    x = LossInputs(policy_chosen=sums[:B], policy_rejected=sums[B:], ref_chosen=batch["ref"][:B],
                   ref_rejected=batch["ref"][B:], chosen_tokens=counts[:B], rejected_tokens=counts[B:], weight=weight)
    mine, _ = LOSSES[name](**params)(x)
    assert_same(mine, theirs, logits)
    unweighted = trl_loss(batch, {"loss_type": trl_type, "beta": 0.3})
    assert abs(unweighted.item() - theirs.item()) > 1e-3 * abs(theirs.item())  # the weights did something


def test_trl_sft_with_use_weighting_fails_in_trl_and_is_mean_weight_times_the_value_here():
    """TRL 1.16 multiplies the WPO weights in place into sft's expanded batch value and raises; what its code
    means (the comment: only the mean is used) is mean(w) * value, which mmpo's batch-token sft gives."""
    from mmpo.logprobs import answer_logps, wpo_logps
    from mmpo.requirements import wpo_weight

    logits, targets, batch = _logits_batch(2)
    mask = batch["completion"][:, 1:]
    log_softmax = torch.log_softmax(logits, -1)
    batch = dict(batch, token_logps=log_softmax.gather(-1, targets[..., None])[..., 0],
                 log_sum_sq=torch.log((log_softmax.exp() ** 2).sum(-1)).detach())
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        trl_loss(batch, {"loss_type": "sft", "use_weighting": True})
    sums, counts = answer_logps(logits, targets, mask)
    aligned = wpo_logps(logits, targets, mask)
    weight = wpo_weight(aligned[:B], aligned[B:])
    x = LossInputs(sums[:B], sums[B:], chosen_tokens=counts[:B], weight=weight)
    mine, _ = LOSSES["sft"](average="batch_tokens")(x)
    unweighted = trl_loss(batch, {"loss_type": "sft"})
    assert mine.item() == pytest.approx(weight.mean().item() * unweighted.item(), rel=1e-9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import tiny_model, toy_pairs

    root = tmp_path_factory.mktemp("trl")
    return {"root": root, "model": tiny_model("llava", root), "pairs": toy_pairs(root / "data", n=8)}


def test_pair_logps_wpo_fields_on_a_real_model_packed_and_plain(tiny):
    """On a tiny LLaVA, `pair_logps` with "wpo" gives per-answer WPO terms equal to a plain computation from the
    answer logits (a separate pass), packed and unpacked alike; without "wpo" it adds nothing."""
    from mmpo.batches import PairCollator
    from mmpo.config import LoraConfig, ModelConfig
    from mmpo.logprobs import answer_logits
    from mmpo.models import load_model
    from mmpo.records import read_pairs
    from mmpo.requirements import pair_logps

    model, processor = load_model(ModelConfig(path=str(tiny["model"])), LoraConfig(r=4), trainable=True)
    batch = PairCollator(processor, str(tiny["pairs"].parent), requires=frozenset({"reference"}))(
        read_pairs(tiny["pairs"])[:3])
    assert "chosen_wpo" not in pair_logps(model, batch, {"reference"}, shared_prefix=True).extra
    with torch.no_grad():
        want = {}
        for key, answer in (("chosen_wpo", batch.chosen), ("rejected_wpo", batch.rejected)):
            logp = torch.log_softmax(answer_logits(model, batch.prompt, answer).double(), -1)
            mask = answer["attention_mask"]
            picked = logp.gather(-1, answer["input_ids"][..., None])[..., 0]
            aligned = (picked - torch.log((logp.exp() ** 2).sum(-1))) * mask
            want[key] = aligned.sum(-1) / mask.sum(-1)
    for shared in (True, False):
        got = pair_logps(model, batch, {"reference", "wpo"}, shared_prefix=shared)
        for key in want:
            assert torch.allclose(got.extra[key].double(), want[key], rtol=1e-4, atol=1e-4), (shared, key)
            assert not got.extra[key].requires_grad
        assert got.chosen.requires_grad


# ----------------------------------------------------------------------------- TRL's loss section in a config

TRL_SECTION = """\
loss_type: [sigmoid, sft]
loss_weights: [1.0, 0.5]
beta: 0.2
"""


def test_trl_loss_type_section_becomes_loss_terms_and_round_trips(tmp_path):
    """A TRL DPOConfig's loss section is read as `loss:` and then reset, so a saved config holds only `loss:` and
    loads back the same (a rerun into the run folder compares equal); its errors name loss_type."""
    from mmpo.config import TrainConfig, load, save, to_dict

    path = tmp_path / "trl.yaml"
    path.write_text(TRL_SECTION)
    cfg = load(TrainConfig, path)
    f_div = {"f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5}  # TRL's defaults, written out
    assert [to_dict(t) for t in cfg.loss] == [{"name": "dpo", "weight": 1.0, "params": {"beta": 0.2, **f_div}},
                                              {"name": "sft", "weight": 0.5, "params": {"average": "batch_tokens"}}]
    assert (cfg.loss_type, cfg.loss_weights, cfg.beta) == ([], [], 0.1)
    save(cfg, tmp_path / "saved.yaml")
    assert to_dict(load(TrainConfig, tmp_path / "saved.yaml")) == to_dict(cfg) == to_dict(load(TrainConfig, path))
    every = load(TrainConfig, None, ["loss_type=[exo_pair, aot, discopop, robust, cdpo]", "label_smoothing=0.01",
                                     "discopop_tau=0.2", "beta=0.3"])
    assert [(t.name, t.params) for t in every.loss] == [
        ("exo_pair", {"beta": 0.3, "eps": 0.01, "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5}),
        ("aot", {"beta": 0.3, "eps": 0.01}),
        ("discopop", {"beta": 0.3, "tau": 0.2, "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5}),
        ("robust", {"beta": 0.3, "eps": 0.01, "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5}),
        ("cdpo", {"beta": 0.3, "eps": 0.01})]
    assert [t.name for t in load(TrainConfig, None, ["loss_type=ipo"]).loss] == ["ipo"]  # one name, as TRL takes
    js = load(TrainConfig, None, ["loss_type=[sigmoid_norm, sft]", "f_divergence_type=js_divergence"])
    assert js.loss[0].params["f_divergence_type"] == "js_divergence" and js.loss[1].params == {"average": "batch_tokens"}


@pytest.mark.parametrize("overrides, message", [
    (["loss_type=[sigmoid]", "loss=[{name: ipo}]"], "set one of them"),
    (["loss_type=[sigmoid]", "loss=[{name: dpo}]"], "loss, loss_type: set one of them"),  # even the default's twin
    (["loss_type=[sigmoid, sft]", "loss_weights=[1.0]"], "1 weights for 2 loss types"),
    (["loss_type=[sigmod]"], "unknown loss type 'sigmod'"),
    (["beta=0.2"], "go with loss_type"),
    (["loss_weights=[1.0]"], "go with loss_type"),
    (["loss_type=[sigmoid, exo_pair]"], "loss_type\\[1\\].*exo_pair.*eps must be in \\(0, 1\\).*label_smoothing"),
    (["loss_type=[nca_pair]", "f_divergence_type=forward_kl"], "no valid form for loss type 'nca_pair'"),
    (["loss_type=[sigmoid]", "f_divergence_type=kl"], "f_divergence_type must be one of"),
    (["loss_type=[aot]", "use_weighting=true"], "use_weighting: aot and aot_unpaired sort"),
    (["loss=[{name: aot_unpaired}]", "use_weighting=true"], "use_weighting"),
    (["stage=sft", "use_weighting=true"], "use_weighting: WPO weights"),
    (["stage=distill", "distill.dpkd=true", "distill.preference_data=x.jsonl", "use_weighting=true"],
     "use_weighting: WPO weights"),
])
def test_trl_loss_section_mistakes_are_refused(overrides, message):
    from mmpo.config import ConfigError, TrainConfig, load

    with pytest.raises(ConfigError, match=message):
        load(TrainConfig, None, overrides)


def test_mmpo_train_with_a_trl_loss_section_equals_the_loss_section_and_weights_with_wpo(tiny, tmp_path):
    """`mmpo train` on a TRL-style config logs exactly what the same terms written as `loss:` log; with
    use_weighting the loss changes and the WPO weight is logged (positive; above 1 where the answer's tokens are
    likelier than the distribution's sum of squares, which the "aligned" form of WPO's Eq. 2 allows)."""
    from mmpo.app.cli import main
    from mmpo.metrics import read_metrics

    common = [f"model.path={tiny['model']}", f"data.train={tiny['pairs']}", "progress=false", "lora.r=4",
              "lr=5e-3", "warmup_ratio=0", "batch_size=4", "max_steps=3"]
    trl_yaml = tmp_path / "trl.yaml"
    trl_yaml.write_text(TRL_SECTION)
    runs = {"trl": ["--config", str(trl_yaml)],
            "loss": ["loss=[{name: dpo, params: {beta: 0.2}}, {name: sft, weight: 0.5, params: {average: batch_tokens}}]"],
            "wpo": ["--config", str(trl_yaml), "use_weighting=true"]}
    rows = {}
    for name, args in runs.items():
        assert main(["train", *args, f"output_dir={tmp_path / name}", *common]) in (0, None)
        rows[name] = read_metrics(tmp_path / name)
    assert [r["loss"] for r in rows["trl"]] == [r["loss"] for r in rows["loss"]]
    assert len(rows["wpo"]) == 3 and all(0 < r["wpo/weight"] < math.inf and r["wpo/weight"] != 1 for r in rows["wpo"])
    assert rows["wpo"][0]["loss"] != pytest.approx(rows["trl"][0]["loss"], rel=1e-3)


def test_sft_batch_token_average_by_hand():
    """pc = [-1, -6], n = [1, 3]: per pair mean(1, 2) = 1.5; TRL's batch-token mean 7 / 4 = 1.75. Weights [2, 0]
    scale the batch value by their mean (1): 1.75, as TRL's WPO weighting does."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    x = LossInputs(t(-1.0, -6.0), t(0.0, 0.0), chosen_tokens=t(1.0, 3.0))
    assert LOSSES["sft"]()(x)[0].item() == pytest.approx(1.5)
    assert LOSSES["sft"](average="batch_tokens")(x)[0].item() == pytest.approx(1.75)
    weighted = LossInputs(t(-1.0, -6.0), t(0.0, 0.0), chosen_tokens=t(1.0, 3.0), weight=t(2.0, 0.0))
    assert LOSSES["sft"](average="batch_tokens")(weighted)[0].item() == pytest.approx(1.75)


def test_every_new_loss_trains_in_one_run(tiny, tmp_path):
    """All ten new terms at once in a real `mmpo train` run on the tiny LLaVA: finite losses, TRL's reward
    metrics logged, and the summed loss falls over 6 steps on the toy preference."""
    from mmpo.app.cli import main
    from mmpo.metrics import read_metrics

    names = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
             "discopop", "sigmoid_norm"]
    loss = "[" + ", ".join(f"{{name: {n}, weight: 0.1}}" for n in names) + "]"
    assert main(["train", f"model.path={tiny['model']}", f"data.train={tiny['pairs']}", f"output_dir={tmp_path}",
                 "progress=false", "lora.r=4", "lr=5e-3", "warmup_ratio=0", "batch_size=4", "max_steps=6",
                 f"loss={loss}"]) in (0, None)
    rows = read_metrics(tmp_path)
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) and "rewards/margins" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
