"""Tests for mmpo.losses: hand-worked arithmetic per loss, reductions to DPO, and invariants.

Expected values are computed here with math.log / math.exp from the formulas in docs/METHODS.md,
never by calling the implementation under test.
"""

import math

import pytest
import torch

from mmpo.config import ConfigError, from_dict
from mmpo.losses import (
    LOSSES,
    BetaDPOLoss,
    LossInputs,
    LossTerm,
    requires_of,
)
from mmpo.pami import js_divergence, pami_tau


def ls(z: float) -> float:
    """-log sigmoid(z) = log(1 + e^-z)."""
    return math.log1p(math.exp(-z))


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def two_pairs(**extra) -> LossInputs:
    """Pair 1: pc=-1, pr=-3, rc=-2, rr=-2 -> h = (1) - (-1) = 2.
    Pair 2: pc=-2, pr=-1, rc=-1.5, rr=-1.5 -> h = (-0.5) - (0.5) = -1."""
    fields = dict(
        policy_chosen=t(-1.0, -2.0, grad=True), policy_rejected=t(-3.0, -1.0, grad=True),
        ref_chosen=t(-2.0, -1.5), ref_rejected=t(-2.0, -1.5),
        chosen_tokens=t(2.0, 4.0), rejected_tokens=t(2.0, 4.0),
    )
    fields.update(extra)
    return LossInputs(**fields)


def loss_of(name, x, **params):
    return LOSSES[name](**params)(x)


# ----------------------------------------------------------------------------- pairwise losses


def test_dpo_arithmetic_and_metrics():
    """beta = 0.5, h = [2, -1]: l = [-log s(1), -log s(-0.5)] = [log(1+e^-1), log(1+e^0.5)], mean.
    Rewards (unscaled beta): chosen 0.5*[1, -0.5] -> mean 0.125, rejected 0.5*[-1, 0.5] -> -0.125,
    margin 0.25, accuracy 1/2 (only pair 1 has chosen > rejected)."""
    loss, m = loss_of("dpo", two_pairs(), beta=0.5)
    assert loss.item() == pytest.approx((ls(1.0) + ls(-0.5)) / 2)
    assert m["rewards/chosen"] == pytest.approx(0.125)
    assert m["rewards/rejected"] == pytest.approx(-0.125)
    assert m["rewards/margins"] == pytest.approx(0.25)
    assert m["rewards/accuracies"] == pytest.approx(0.5)


def test_cdpo_arithmetic_and_eps0_is_dpo():
    """eps = 0.1, beta = 0.5, z = beta*h = [1, -0.5]: l = 0.9*ls(z) + 0.1*ls(-z)."""
    loss, _ = loss_of("cdpo", two_pairs(), beta=0.5, eps=0.1)
    want = sum(0.9 * ls(z) + 0.1 * ls(-z) for z in (1.0, -0.5)) / 2
    assert loss.item() == pytest.approx(want)
    assert loss_of("cdpo", two_pairs(), beta=0.5, eps=0.0)[0].item() == pytest.approx(
        loss_of("dpo", two_pairs(), beta=0.5)[0].item())


def test_robust_arithmetic_and_eps0_is_dpo():
    """eps = 0.2, z = [1, -0.5]: l = (0.8*ls(z) - 0.2*ls(-z)) / 0.6 (rDPO, unbiased for flips)."""
    loss, _ = loss_of("robust", two_pairs(), beta=0.5, eps=0.2)
    want = sum((0.8 * ls(z) - 0.2 * ls(-z)) / 0.6 for z in (1.0, -0.5)) / 2
    assert loss.item() == pytest.approx(want)
    assert loss_of("robust", two_pairs(), beta=0.5, eps=0.0)[0].item() == pytest.approx(
        loss_of("dpo", two_pairs(), beta=0.5)[0].item())


def test_ipo_uses_token_normalised_ratios():
    """One pair: pc=-4, rc=-6, n_w=4 -> 2/4 = 0.5; pr=-6, rr=-3, n_l=3 -> -3/3 = -1; h_bar = 1.5.
    beta = 0.25 -> target 1/(2*0.25) = 2; l = (1.5 - 2)^2 = 0.25. (Unnormalised h = 5 would give 9.)"""
    x = LossInputs(t(-4.0), t(-6.0), t(-6.0), t(-3.0), chosen_tokens=t(4.0), rejected_tokens=t(3.0))
    loss, m = loss_of("ipo", x, beta=0.25)
    assert loss.item() == pytest.approx(0.25)
    assert m["rewards/chosen"] == pytest.approx(0.25 * 0.5)


def test_hinge_arithmetic():
    """beta = 0.5, h = [2, -1]: relu(1 - 1) = 0, relu(1 + 0.5) = 1.5 -> mean 0.75."""
    assert loss_of("hinge", two_pairs(), beta=0.5)[0].item() == pytest.approx(0.75)


def test_dadpo_arithmetic_and_reduction():
    """beta = 0.1, alpha = 2, delta = [0.5, -1]: beta_i = 0.1*2*(1+|d|) = [0.3, 0.4];
    l = [ls(0.3*2), ls(0.4*-1)]. Rewards use the unscaled beta: chosen mean 0.1*(1-0.5)/2 = 0.025.
    With delta = 0 and alpha = 1, beta_i = beta: plain DPO."""
    x = two_pairs(score_delta=t(0.5, -1.0))
    loss, m = loss_of("dadpo", x, beta=0.1, alpha=2.0)
    assert loss.item() == pytest.approx((ls(0.6) + ls(-0.4)) / 2)
    assert m["rewards/chosen"] == pytest.approx(0.025)
    assert m["dadpo/beta_mean"] == pytest.approx(0.35)
    same = loss_of("dadpo", two_pairs(score_delta=t(0.0, 0.0)), beta=0.1, alpha=1.0)[0]
    assert same.item() == pytest.approx(loss_of("dpo", two_pairs(), beta=0.1)[0].item())


def test_clip_dpo_scale_margin_and_gamma0():
    """RECONSTRUCTION. delta = [0.5, 0]; beta = 0.5; h = [2, -1].
    scale, gamma=1: beta_i = 0.5*[1.5, 1] -> z = [1.5, -0.5].
    margin, gamma_m=2: z = 0.5*h - 2*delta = [1 - 1, -0.5 - 0] = [0, -0.5]."""
    x = two_pairs(score_delta=t(0.5, 0.0))
    assert loss_of("clip_dpo", x, beta=0.5, gamma=1.0)[0].item() == pytest.approx((ls(1.5) + ls(-0.5)) / 2)
    got = loss_of("clip_dpo", x, beta=0.5, form="margin", gamma_m=2.0)[0].item()
    assert got == pytest.approx((ls(0.0) + ls(-0.5)) / 2)
    assert loss_of("clip_dpo", x, beta=0.5, gamma=0.0)[0].item() == pytest.approx(
        loss_of("dpo", x, beta=0.5)[0].item())


def test_kto_pair_arithmetic():
    """beta = 1. rho_w = pc - rc = [1, -0.5] -> chosen_KL = max(mean, 0) = 0.25;
    rho_l = pr - rr = [-1, 0.5] -> mean -0.25 -> rejected_KL = 0.
    losses = [1 - s(1 - 0), 1 - s(-0.5 - 0), 1 - s(0.25 + 1), 1 - s(0.25 - 0.5)], mean of 4."""
    def s(z):
        return 1 / (1 + math.exp(-z))

    loss, m = loss_of("kto_pair", two_pairs(), beta=1.0)
    want = sum(1 - s(z) for z in (1.0, -0.5, 1.25, -0.25)) / 4
    assert loss.item() == pytest.approx(want)
    assert m["kto/chosen_kl"] == pytest.approx(0.25) and m["kto/rejected_kl"] == 0.0


# ----------------------------------------------------------------------------- beta-DPO


def test_beta_dpo_a0_rho0_is_dpo_over_several_calls():
    """a = 0 -> beta_b = beta; rho = 0 -> every pair kept: exactly DPO, whatever the EMA state."""
    loss = BetaDPOLoss(beta=0.5, a=0.0, rho=0.0)
    for _ in range(3):
        assert loss(two_pairs())[0].item() == pytest.approx(loss_of("dpo", two_pairs(), beta=0.5)[0].item())


def test_beta_dpo_arithmetic_first_call():
    """h = [2, -1]; EMA from 0 with momentum 0.9: M0 = 0.1*0.5 = 0.05,
    sigma = 0.1*std([2, -1]) = 0.1*sqrt(4.5) (unbiased std). rho = 0 keeps both.
    beta_b = 0.1*(1 + 1*(0.5 - 0.05)) = 0.145; l = mean(ls(0.29), ls(-0.145))."""
    loss = BetaDPOLoss(beta=0.1, a=1.0, rho=0.0)
    value, m = loss(two_pairs())
    assert m["beta_dpo/gap_mean"] == pytest.approx(0.05)
    assert m["beta_dpo/gap_std"] == pytest.approx(0.1 * math.sqrt(4.5))
    assert m["beta_dpo/beta"] == pytest.approx(0.145)
    assert value.item() == pytest.approx((ls(0.29) + ls(-0.145)) / 2)


def test_beta_dpo_filter_drops_the_outlier():
    """h = [0, 0, 0, 100]: M0 = 0.1*25 = 2.5, sigma = 0.1*50 = 5. The outlier's weight is
    exp(-(97.5/5)^2/2) ~ e^-190 against ~e^-0.125 for the others, so keeping 3 of 4 (rho = 0.25)
    keeps the three h = 0 pairs, whose loss is log 2 for any beta."""
    x = LossInputs(t(0.0, 0.0, 0.0, 100.0), t(0.0, 0.0, 0.0, 0.0), t(0.0, 0.0, 0.0, 0.0), t(0.0, 0.0, 0.0, 0.0))
    for seed in range(5):
        value, m = BetaDPOLoss(rho=0.25, seed=seed)(x)
        assert m["beta_dpo/kept_fraction"] == 0.75
        assert value.item() == pytest.approx(math.log(2))


def test_beta_dpo_state_round_trip_and_determinism():
    """After two calls, a fresh loss loaded from state_dict gives the same third call (same EMA,
    same sampling seed); without the state it differs."""
    def batch(k):
        g = torch.Generator().manual_seed(k)
        return LossInputs(*(torch.randn(8, generator=g, dtype=torch.float64) for _ in range(4)))

    a = BetaDPOLoss(rho=0.5)
    a(batch(0)), a(batch(1))
    b = BetaDPOLoss(rho=0.5)
    b.load_state_dict(a.state_dict())
    resumed = b(batch(2))[0].item()
    assert resumed == a(batch(2))[0].item()
    assert a.state_dict() == b.state_dict() and a.state_dict()["calls"] == 3
    assert BetaDPOLoss(rho=0.5)(batch(2))[0].item() != pytest.approx(resumed)


# ----------------------------------------------------------------------------- SFT and mDPO


def test_sft_chosen_and_gt_targets():
    """chosen: pc = [-1, -2], n = [2, 4] -> NLL per token [0.5, 0.5] -> 0.5.
    gt: gt_logps = [-4, -9], gt_tokens = [2, 3] -> [2, 3] -> 2.5; requires {"gt"}."""
    assert loss_of("sft", two_pairs())[0].item() == pytest.approx(0.5)
    gt = LOSSES["sft"](target="gt")
    assert gt.requires == {"gt"} and LOSSES["sft"]().requires == frozenset()
    assert gt(two_pairs(gt_logps=t(-4.0, -9.0), gt_tokens=t(2.0, 3.0)))[0].item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="gt_logps"):
        gt(two_pairs())


def test_mdpo_conditional_arithmetic_and_identity():
    """beta = 0.5. Chosen ratio pc - rc = [1, -0.5]; corrupt ratio = [-1, -1.5] (p=[-3,-3], r=[-2,-1.5])
    -> h_img = [2, 1] -> l = mean(ls(1), ls(0.5)). When the corrupted log-probs equal the chosen ones,
    h_img = 0 and the loss is log 2."""
    x = two_pairs(policy_corrupt=t(-3.0, -3.0), ref_corrupt=t(-2.0, -1.5))
    assert loss_of("mdpo_conditional", x, beta=0.5)[0].item() == pytest.approx((ls(1.0) + ls(0.5)) / 2)
    same = two_pairs(policy_corrupt=t(-1.0, -2.0), ref_corrupt=t(-2.0, -1.5))
    assert loss_of("mdpo_conditional", same, beta=0.5)[0].item() == pytest.approx(math.log(2))


def test_mdpo_anchor_arithmetic():
    """beta = 0.5, pc - rc = [1, -0.5]: delta = 0 -> mean(ls(0.5), ls(-0.25)); delta = 0.5 -> z - 0.5."""
    assert loss_of("mdpo_anchor", two_pairs(), beta=0.5)[0].item() == pytest.approx((ls(0.5) + ls(-0.25)) / 2)
    got = loss_of("mdpo_anchor", two_pairs(), beta=0.5, delta=0.5)[0].item()
    assert got == pytest.approx((ls(0.0) + ls(-0.75)) / 2)


# ----------------------------------------------------------------------------- PaMi


def bag(policy, ref, dist, mask=None, progress=0.0):
    return two_pairs(bag_policy=t(*policy).reshape(2, -1), bag_ref=t(*ref).reshape(2, -1),
                     bag_distance=t(*dist).reshape(2, -1),
                     bag_mask=None if mask is None else torch.tensor(mask).reshape(2, -1), progress=progress)


def test_pami_tau_schedule():
    """log tau linear from log 10 to log 0.01 over [0, 0.5]: 10, sqrt(10*0.01) = 0.316.., 0.01,
    then 0.0 (= hard argmax)."""
    assert pami_tau(0.0) == pytest.approx(10.0)
    assert pami_tau(0.25) == pytest.approx(math.sqrt(0.1))
    assert pami_tau(0.5) == pytest.approx(0.01)
    assert pami_tau(0.6) == 0.0


def test_pami_k1_equals_mdpo_conditional():
    """K = 1: the softmax weight is 1, so PaMi is single-clip VDPO = mDPO's conditional term."""
    x = bag([-3.0, -3.0], [-2.0, -1.5], [0.2, 0.3])
    y = two_pairs(policy_corrupt=t(-3.0, -3.0), ref_corrupt=t(-2.0, -1.5))
    for reduce in ("weighted_loss", "weighted_logit"):
        assert loss_of("pami", x, beta=0.5, mil_reduce=reduce)[0].item() == pytest.approx(
            loss_of("mdpo_conditional", y, beta=0.5)[0].item())


def test_pami_two_instances_by_hand():
    """Sample 1 only (sample 2's bag is below delta_min, so it is left out of the mean).
    pc - rc = 1; bag ratios (bp - br) = [0, 2] -> h = [1, -1]; d = [0.2, 0.4]; progress 0 -> tau 10:
    w = softmax([0.02, 0.04]) -> w2 = 1/(1+e^-0.02). beta = 1:
    weighted_loss = w1*ls(1) + w2*ls(-1); weighted_logit = ls(w1*1 + w2*(-1))."""
    x = bag([-1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0], [0.2, 0.4, 1e-4, 1e-4])
    w2 = 1 / (1 + math.exp(-0.02))
    w1 = 1 - w2
    loss, m = loss_of("pami", x, beta=1.0)
    assert loss.item() == pytest.approx(w1 * ls(1.0) + w2 * ls(-1.0))
    assert m["pami/empty_fraction"] == 0.5 and m["pami/kept_fraction"] == 0.5
    assert loss_of("pami", x, beta=1.0, mil_reduce="weighted_logit")[0].item() == pytest.approx(ls(w1 - w2))


def test_pami_tiny_tau_and_late_progress_pick_the_argmax():
    """With tau -> tiny (progress 0.5 -> tau 0.01, or past anneal_until -> hard argmax) the weight goes
    to the farthest instance: sample 1 picks h = -1 (d = 0.4), sample 2 picks h = 0.5 (d = 0.9)
    from pc - rc = -0.5 and bag ratios [-1, 3] -> h = [0.5, -3.5]. Loss = mean(ls(-1), ls(0.5))."""
    x = bag([-1.0, 1.0, -2.0, 3.0], [-1.0, -1.0, -1.0, 0.0], [0.2, 0.4, 0.9, 0.5], progress=0.9)
    want = (ls(-1.0) + ls(0.5)) / 2
    assert loss_of("pami", x, beta=1.0)[0].item() == pytest.approx(want)
    x_soft = bag([-1.0, 1.0, -2.0, 3.0], [-1.0, -1.0, -1.0, 0.0], [0.2, 0.4, 0.9, 0.5], progress=0.5)
    assert loss_of("pami", x_soft, beta=1.0)[0].item() == pytest.approx(want, abs=1e-6)


def test_pami_guard_and_mask_drop_instances_and_empty_bags():
    """Instance 2 of sample 1 is farthest but masked out (padding with garbage log-probs), and sample 2
    has only d < delta_min: both are ignored, so the loss is sample 1's instance 1 alone: ls(1*h)
    with h = 1 - 0 = 1. An all-empty batch gives 0 with a graph attached (no NaN)."""
    x = bag([-1.0, float("nan"), 0.0, 0.0], [-1.0, 5.0, 0.0, 0.0], [0.2, 0.9, 5e-4, 0.0],
            mask=[True, False, True, True])
    loss, _ = loss_of("pami", x, beta=1.0)
    assert loss.item() == pytest.approx(ls(1.0))
    loss.backward()
    assert torch.isfinite(x.policy_chosen.grad).all()
    empty = bag([0.0] * 4, [0.0] * 4, [0.0] * 4)
    loss, m = loss_of("pami", empty)
    assert loss.item() == 0.0 and loss.requires_grad and m["pami/empty_fraction"] == 1.0


def test_pami_floor_warm_up_keeps_every_instance_until_floor_from():
    """Before progress `floor_from` no instance is below the floor (an order-blind policy's temporal clips,
    d ~ 0, still train); from `floor_from` on the guard drops them as usual. Masked padding stays out."""
    x = bag([-1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0], [0.2, 0.4, 1e-4, 1e-4], progress=0.2)
    early, m = loss_of("pami", x, beta=1.0, floor_from=0.5)
    assert m["pami/kept_fraction"] == 1.0 and m["pami/empty_fraction"] == 0.0
    tau = pami_tau(0.2)
    w2 = 1 / (1 + math.exp(-(0.4 - 0.2) / tau))
    sample1 = (1 - w2) * ls(1.0) + w2 * ls(-1.0)
    assert early.item() == pytest.approx((sample1 + ls(-0.5)) / 2)  # sample 2: h = -0.5 - 0 on both instances
    late = bag([-1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0], [0.2, 0.4, 1e-4, 1e-4], progress=0.6)
    assert loss_of("pami", late, beta=1.0, floor_from=0.5)[1]["pami/kept_fraction"] == 0.5
    masked = bag([-1.0, float("nan"), 0.0, 0.0], [-1.0, 5.0, 0.0, 0.0], [0.2, 0.9, 0.0, 0.0],
                 mask=[True, False, True, True], progress=0.0)
    assert math.isfinite(loss_of("pami", masked, beta=1.0, floor_from=1.0)[0].item())


# ----------------------------------------------------------------------------- JS distance


def test_js_divergence_hand_value_identity_symmetry_bound():
    """V = 2: p = softmax(0, 0) = [.5, .5], q = softmax(log 3, 0) = [.75, .25], m = [.625, .375];
    JS = 0.5*(.5 ln(.5/.625) + .5 ln(.5/.375)) + 0.5*(.75 ln(.75/.625) + .25 ln(.25/.375)).
    Position 2 is padding (mask False) and must not count. Disjoint distributions approach log 2."""
    p = torch.tensor([[[0.0, 0.0], [50.0, 0.0]]])
    q = torch.tensor([[[math.log(3), 0.0], [0.0, 50.0]]])
    mask = torch.tensor([[True, False]])
    want = 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)) \
        + 0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375))
    assert js_divergence(p, q, mask).item() == pytest.approx(want, rel=1e-5)
    assert js_divergence(q, p, mask).item() == pytest.approx(want, rel=1e-5)
    assert js_divergence(p, p, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-7)
    disjoint = js_divergence(p[:, 1:], q[:, 1:], torch.ones(1, 1, dtype=torch.bool)).item()
    assert disjoint <= math.log(2) + 1e-6 and disjoint == pytest.approx(math.log(2), abs=1e-4)


def test_js_divergence_random_topk_and_chunking():
    """Random peaked logits (B=2, T=5, V=64): symmetric, within [0, log 2], chunk size does not
    matter, and the union-of-top-16 estimate is within 5% of the full value."""
    g = torch.Generator().manual_seed(0)
    p = 4 * torch.randn(2, 5, 64, generator=g)
    q = p + 2 * torch.randn(2, 5, 64, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    full = js_divergence(p, q, mask)
    assert torch.allclose(full, js_divergence(q, p, mask), atol=1e-6)
    assert torch.allclose(full, js_divergence(p, q, mask, chunk=2), atol=1e-6)
    assert ((full > 0) & (full <= math.log(2))).all()
    assert torch.allclose(js_divergence(p, q, mask, top_k=16), full, rtol=0.05)


# ----------------------------------------------------------------------------- invariants


def test_weights_scale_pairs():
    """weight = [2, 0]: mean(w*l) = (2*l1 + 0)/2 = l1 = ls(beta*h1) = ls(1) for beta = 0.5."""
    loss, _ = loss_of("dpo", two_pairs(weight=t(2.0, 0.0)), beta=0.5)
    assert loss.item() == pytest.approx(ls(1.0))


@pytest.mark.parametrize("name", ["dpo", "ipo", "robust", "hinge", "kto_pair", "mdpo_anchor"])
def test_gradients_reach_policy_only(name):
    """Gradients flow into the policy tensors; the reference tensors carry no graph."""
    x = two_pairs()
    loss_of(name, x, beta=0.5)[0].backward()
    assert x.policy_chosen.grad is not None and x.policy_chosen.grad.abs().sum() > 0
    assert x.ref_chosen.grad is None and not x.ref_chosen.requires_grad


def test_dpo_gradient_by_hand():
    """d/dpc of mean(-log s(beta h)) = -beta * s(-beta h) / B. Pair 1: -0.5*s(-1)/2."""
    x = two_pairs()
    loss_of("dpo", x, beta=0.5)[0].backward()
    assert x.policy_chosen.grad[0].item() == pytest.approx(-0.5 / (1 + math.exp(1.0)) / 2)


def test_grad_accumulation_halves_equal_full_batch():
    """DPO on 4 pairs == mean of the losses (and gradients) of its two 2-pair halves (1x4 == 2x2)."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr, w = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(5))
    pc.requires_grad_(True)
    dpo = LOSSES["dpo"]()
    full = dpo(LossInputs(pc, pr, rc, rr, weight=w.abs()))[0]
    full_grad, = torch.autograd.grad(full, pc)
    halves = [dpo(LossInputs(pc[s], pr[s], rc[s], rr[s], weight=w.abs()[s]))[0] for s in (slice(0, 2), slice(2, 4))]
    acc = sum(h / 2 for h in halves)
    acc_grad, = torch.autograd.grad(acc, pc)
    assert acc.item() == pytest.approx(full.item())
    assert torch.allclose(acc_grad, full_grad)


def test_margin_properties_and_reference_free_view():
    """h = (pc - rc) - (pr - rr) = (-1 + 2) - (-3 + 2) = 2; without a reference the ratios are the raw
    log-probs (reference-free view): h = -1 - (-3) = 2 as well here, but chosen_logratios = -1."""
    x = two_pairs()
    assert x.margin.tolist() == [2.0, -1.0]
    free = LossInputs(t(-1.0), t(-3.0))
    assert free.chosen_logratios.item() == -1.0 and free.margin.item() == 2.0


def test_missing_reference_is_a_clear_error():
    with pytest.raises(ValueError, match=r"DPOLoss needs .*ref_chosen"):
        LOSSES["dpo"]()(LossInputs(t(-1.0), t(-2.0)))


# ----------------------------------------------------------------------------- registry and config


def test_loss_terms_hold_their_built_losses_and_requires():
    """A gdpo config (dpo + 0.1 * sft on gt) and an mDPO config; requirements are unions."""
    terms = [from_dict(LossTerm, spec) for spec in ({"name": "dpo", "params": {"beta": 0.2}},
                                                    {"name": "sft", "weight": 0.1, "params": {"target": "gt"}})]
    assert [t.weight for t in terms] == [1.0, 0.1] and isinstance(terms[0].loss, LOSSES["dpo"])
    assert terms[0].loss.beta == 0.2 and terms[1].loss.target == "gt"
    assert requires_of(terms) == {"reference", "gt"}
    mdpo = [LossTerm(n) for n in ("dpo", "mdpo_conditional", "mdpo_anchor")]
    assert requires_of(mdpo) == {"reference", "corrupt"}
    assert requires_of([LossTerm("pami")]) == {"reference", "bag"}
    assert requires_of([]) == set()


@pytest.mark.parametrize("spec, message", [
    ({"name": "dpoo"}, "unknown loss 'dpoo'"),
    ({"name": "dpo", "params": {"betta": 0.1}}, "unknown key"),
    ({"name": "dpo", "params": {"beta": "high"}}, "expected a number"),
    ({"name": "robust", "params": {"eps": 0.5}}, "eps must be"),
    ({"name": "dpo", "weight": "x"}, "weight"),
    ({"name": "dpo", "wieght": 1}, "unknown key"),
    ({"name": "ipo", "params": {"beta": 0.0}}, "beta must be > 0"),
    ({"name": "pami", "params": {"mil_reduce": "max"}}, "mil_reduce"),
])
def test_loss_term_errors_name_the_entry(spec, message):
    with pytest.raises(ConfigError, match=r"train.yaml: loss\[0\].*" + message):
        from_dict(LossTerm, spec, "train.yaml: loss[0]")


# -- distillation maths -----------------------------------------------------------------------------------

def test_chunked_forward_kl_equals_the_plain_formula_and_its_gradient():
    from mmpo.logprobs import token_forward_kl

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randn(2, 5, 7, dtype=torch.float64, generator=gen)
    log_s, log_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    plain = (log_t.exp() * (log_t - log_s)).sum(-1)
    assert torch.allclose(token_forward_kl(s, t, chunk=2), plain)
    assert torch.autograd.gradcheck(lambda x: token_forward_kl(x, t, chunk=2), (s,))
    assert torch.allclose(token_forward_kl(t.clone(), t), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12)


def test_mimic_kl_works_a_two_token_example_and_ignores_padding():
    from mmpo.losses import mimic_kl

    # teacher p_T = (0.5, 0.5), student p_S = (0.8, 0.2) on the one real token: KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
    s = torch.tensor([[[math.log(0.8), math.log(0.2)], [9.0, -9.0]]])
    t = torch.tensor([[[0.0, 0.0], [-9.0, 9.0]]])
    want = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert mimic_kl(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(want, rel=1e-6)
    # a longer student vocabulary (padded embedding rows) is cut to the teacher's
    padded = torch.cat([s, torch.full((1, 2, 3), -1e4)], -1)
    assert mimic_kl(padded, t, torch.tensor([[1, 0]])).item() == pytest.approx(want, rel=1e-6)


def test_dpkd_works_its_equation_on_one_token():
    from mmpo.losses import dpkd

    # one answer token, vocabulary of 3. Teacher prefers token 0, student token 1.
    s = torch.log(torch.tensor([[[0.2, 0.7, 0.1]]]))
    t = torch.log(torch.tensor([[[0.6, 0.3, 0.1]]]))
    gold, mask, beta, k = torch.tensor([[2]]), torch.tensor([[1]]), 0.5, 0.25
    h = (math.log(0.2) - math.log(0.7)) - (math.log(0.6) - math.log(0.3))  # y_t = 0, y_s = 1
    l_dpkd = -math.log(1 / (1 + math.exp(-beta * h)))
    ce = -math.log(0.1)
    total, metrics = dpkd(s, t, gold, mask, beta, k)
    assert metrics["dpkd/margin"] == pytest.approx(h, rel=1e-5)
    assert metrics["dpkd/loss"] == pytest.approx(l_dpkd, rel=1e-5)
    assert total.item() == pytest.approx((1 - k) * ce + k * l_dpkd, rel=1e-5)
