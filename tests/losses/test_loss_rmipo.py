"""RMiPO against hand-computed numbers: the PMI margin at δ<0, δ=0, mid and large δ; metrics;
no gradient through δ or the marginal log-probs; one- and zero-token responses.

Run: `.venv/bin/python -m pytest tests/losses -q`.
"""

import math

import pytest
import torch

from prefopt.losses import PairLogps, RMiPOLoss

torch.set_num_threads(1)

DELTAS = [-0.5, 0.0, 1.0, 50.0]


def softplus(x):  # log(1 + e^x); -log σ(z) = softplus(-z)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def hand_margin(delta, g_min=0.3, g_max=1.6):
    return g_min + (g_max - g_min) * math.exp(-max(0.0, delta))


def make_pairs(deltas=DELTAS, requires_grad=False):
    """Each pair: s̄_w = -4/2 = -2, m̄_w = -6/2 = -3 -> PMI_w = 1; s̄_l = -9/3 = -3 and
    m̄_l = -4 + δ -> PMI_l = 1 - δ, so PMI_w - PMI_l = δ and s̄_w - s̄_l = 1."""
    b = len(deltas)

    def full(value):
        return torch.full((b,), value, requires_grad=requires_grad)

    marginal_rejected = torch.tensor([3.0 * (-4.0 + d) for d in deltas], requires_grad=requires_grad)
    return PairLogps(
        chosen=full(-4.0), rejected=full(-9.0),
        chosen_tokens=torch.full((b,), 2), rejected_tokens=torch.full((b,), 3),
        marginal_chosen=full(-6.0), marginal_rejected=marginal_rejected,
        marginal_chosen_tokens=torch.full((b,), 2), marginal_rejected_tokens=torch.full((b,), 3),
    )


def test_margin_function_at_key_deltas():
    loss = RMiPOLoss()
    margins = loss.margin(torch.tensor(DELTAS)).tolist()
    assert margins[0] == pytest.approx(1.6)  # δ < 0: g_max
    assert margins[1] == pytest.approx(1.6)  # δ = 0: g_max
    assert margins[2] == pytest.approx(0.3 + 1.3 / math.e, rel=1e-6)  # mid
    assert margins[3] == pytest.approx(0.3, abs=1e-6)  # large δ -> g_min (float32)


def test_rmipo_loss_rewards_and_metrics_by_hand():
    out = RMiPOLoss(beta=2.0)(make_pairs())
    margins = [hand_margin(d) for d in DELTAS]
    expected = [softplus(-2.0 * (1.0 - g)) for g in margins]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx([-4.0] * 4)
    assert out.rejected_rewards.tolist() == pytest.approx([-6.0] * 4)
    m = out.metrics
    assert m["pmi/chosen"].item() == pytest.approx(1.0, rel=1e-5)
    assert m["pmi/rejected"].item() == pytest.approx(sum(1.0 - d for d in DELTAS) / 4, rel=1e-5)
    assert m["pmi/delta"].item() == pytest.approx(sum(DELTAS) / 4, rel=1e-5)
    assert m["margin/mean"].item() == pytest.approx(sum(margins) / 4, rel=1e-5)
    assert m["margin/at_max"].item() == pytest.approx(0.5)  # δ = -0.5 and δ = 0
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_rmipo_label_smoothing_and_gamma_bounds():
    out = RMiPOLoss(beta=1.0, gamma_min=0.0, gamma_max=2.0, label_smoothing=0.2)(make_pairs([1.0]))
    g = 2.0 / math.e  # 0 + 2·e^-1
    z = 1.0 * (1.0 - g)
    assert out.losses.item() == pytest.approx(0.8 * softplus(-z) + 0.2 * softplus(z), rel=1e-6)


def test_no_gradient_through_delta_or_marginals():
    logps = make_pairs([1.0], requires_grad=True)  # mid δ: the margin depends on δ here
    RMiPOLoss(beta=2.0)(logps).losses.sum().backward()
    z = 2.0 * (1.0 - hand_margin(1.0))
    # margin held constant: d/ds_w = -(β/n_w)(1 - σ(z)), d/ds_l = +(β/n_l)(1 - σ(z))
    assert logps.chosen.grad.item() == pytest.approx(-(2.0 / 2) * (1 - sigmoid(z)), rel=1e-5)
    assert logps.rejected.grad.item() == pytest.approx((2.0 / 3) * (1 - sigmoid(z)), rel=1e-5)
    assert logps.marginal_chosen.grad is None
    assert logps.marginal_rejected.grad is None


def test_one_and_zero_token_responses_stay_finite():
    logps = PairLogps(
        chosen=torch.tensor([-0.4, 0.0], requires_grad=True),
        rejected=torch.tensor([-1.5, 0.0], requires_grad=True),
        chosen_tokens=torch.tensor([1, 0]), rejected_tokens=torch.tensor([1, 0]),
        marginal_chosen=torch.tensor([-2.4, 0.0]), marginal_rejected=torch.tensor([-1.5, 0.0]),
        marginal_chosen_tokens=torch.tensor([1, 0]), marginal_rejected_tokens=torch.tensor([1, 0]),
    )
    out = RMiPOLoss(beta=2.0)(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()
    # one-token pair: PMI_w = -0.4 + 2.4 = 2, PMI_l = 0 -> δ = 2; s̄_w - s̄_l = 1.1
    g = hand_margin(2.0)
    assert out.losses[0].item() == pytest.approx(softplus(-2.0 * (1.1 - g)), rel=1e-5)
    # zero-token pair: everything 0 -> δ = 0, margin g_max, z = -2·1.6
    assert out.losses[1].item() == pytest.approx(softplus(3.2), rel=1e-5)


def test_marginal_token_counts_default_to_the_response_counts():
    full = make_pairs([1.0])
    short = PairLogps(**full.__dict__)
    short.marginal_chosen_tokens = short.marginal_rejected_tokens = None
    loss = RMiPOLoss()
    assert loss(short).losses.item() == pytest.approx(loss(full).losses.item())


def test_marginal_context_defaults_to_the_reference_codes_and_is_checked():
    from prefopt.errors import ConfigError

    assert RMiPOLoss().marginal_context == "none"
    assert RMiPOLoss(marginal_context="start_token").marginal_context == "start_token"
    with pytest.raises(ConfigError, match=r"marginal_context='bos' is not allowed; .*\['none', 'start_token'\]"):
        RMiPOLoss(marginal_context="bos")


def test_a_one_token_response_under_marginal_context_none_has_pmi_zero():
    """marginal_context=none scores n-1 marginal tokens: a one-token response scores none. Its m̄ is its
    conditional average, so PMI = 0 (no evidence), never 0/0.
    Pair 0: chosen one token (s̄_w = -0.4, 0 marginal tokens -> PMI_w = 0); rejected s̄_l = -3/2 = -1.5,
    m̄_l = -2.5/1 -> PMI_l = 1.0; δ = -1 -> margin g_max = 1.6; z = 2·(-0.4 + 1.5 - 1.6) = -1.
    Pair 1: both sides one token -> δ = 0, g_max; z = 2·(-1.0 + 2.0 - 1.6) = -1.2."""
    logps = PairLogps(
        chosen=torch.tensor([-0.4, -1.0], requires_grad=True),
        rejected=torch.tensor([-3.0, -2.0], requires_grad=True),
        chosen_tokens=torch.tensor([1, 1]), rejected_tokens=torch.tensor([2, 1]),
        marginal_chosen=torch.tensor([0.0, 0.0]), marginal_rejected=torch.tensor([-2.5, 0.0]),
        marginal_chosen_tokens=torch.tensor([0, 0]), marginal_rejected_tokens=torch.tensor([1, 0]),
    )
    out = RMiPOLoss(beta=2.0)(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and all(torch.isfinite(v) for v in out.metrics.values())
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()
    assert out.losses.tolist() == pytest.approx([softplus(1.0), softplus(1.2)], rel=1e-5)
    assert out.metrics["pmi/chosen"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.metrics["pmi/rejected"].item() == pytest.approx(0.5, rel=1e-6)  # (1.0 + 0) / 2
    assert out.metrics["pmi/delta"].item() == pytest.approx(-0.5, rel=1e-6)
    # the guard carries no gradient into the margin: d/ds_w = -(β/n_w)(1 - σ(z)) as for any pair
    assert logps.chosen.grad[0].item() == pytest.approx(-2.0 * (1 - sigmoid(-1.0)), rel=1e-5)
