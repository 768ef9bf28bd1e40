"""SimPO against hand-computed numbers: γ = β·ratio, label smoothing, SFT term, gradients, and
short responses.

Run: `.venv/bin/python -m pytest tests/losses -q`.
"""

import math

import pytest
import torch

from prefopt.losses import PairLogps, SimPOLoss

torch.set_num_threads(1)


def softplus(x):  # log(1 + e^x); -log σ(z) = softplus(-z)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def make_pair(requires_grad=False):
    # s̄_w = -6/3 = -2, s̄_l = -12/4 = -3: gap 1
    return PairLogps(
        chosen=torch.tensor([-6.0], requires_grad=requires_grad),
        rejected=torch.tensor([-12.0], requires_grad=requires_grad),
        chosen_tokens=torch.tensor([3]),
        rejected_tokens=torch.tensor([4]),
    )


def test_simpo_loss_and_rewards_by_hand():
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5)(make_pair())  # γ = 1, z = 2·1 - 1 = 1
    assert out.losses.item() == pytest.approx(softplus(-1.0), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-4.0)
    assert out.rejected_rewards.item() == pytest.approx(-6.0)
    assert out.metrics == {}


def test_simpo_gamma_is_beta_times_ratio():
    loss = SimPOLoss(beta=4.0, gamma_beta_ratio=0.25)
    assert loss.gamma == pytest.approx(1.0)
    assert loss(make_pair()).losses.item() == pytest.approx(softplus(-3.0), rel=1e-6)  # z = 4·1 - 1
    assert SimPOLoss(beta=4.0, gamma_beta_ratio=0.0)(make_pair()).losses.item() == pytest.approx(
        softplus(-4.0), rel=1e-6
    )


def test_simpo_label_smoothing_by_hand():
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)(make_pair())
    assert out.losses.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0), rel=1e-6)


def test_simpo_sft_term_adds_weighted_chosen_nll():
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, sft_weight=0.5)(make_pair())
    assert out.losses.item() == pytest.approx(softplus(-1.0) + 0.5 * 2.0, rel=1e-6)
    assert out.metrics["sft_loss"].item() == pytest.approx(2.0)
    assert not out.metrics["sft_loss"].requires_grad


def test_simpo_gradient_is_analytic():
    logps = make_pair(requires_grad=True)
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5)(logps)
    out.losses.sum().backward()
    # d/ds_w = -(β/n_w)(1 - σ(z)), d/ds_l = +(β/n_l)(1 - σ(z)), z = 1
    assert logps.chosen.grad.item() == pytest.approx(-(2.0 / 3) * (1 - sigmoid(1.0)), rel=1e-5)
    assert logps.rejected.grad.item() == pytest.approx((2.0 / 4) * (1 - sigmoid(1.0)), rel=1e-5)
    assert not out.chosen_rewards.requires_grad


def test_zero_and_one_token_responses_stay_finite():
    logps = PairLogps(
        chosen=torch.tensor([0.0, -0.3], requires_grad=True),
        rejected=torch.tensor([-2.0, 0.0], requires_grad=True),
        chosen_tokens=torch.tensor([0, 1]),
        rejected_tokens=torch.tensor([1, 0]),
    )
    out = SimPOLoss(sft_weight=1.0)(logps)
    out.losses.sum().backward()
    # pair 0: s̄_w = 0 (0 tokens), s̄_l = -2 -> z = 2·2 - 1 = 3
    assert out.losses[0].item() == pytest.approx(softplus(-3.0), rel=1e-6)
    assert torch.isfinite(out.losses).all() and torch.isfinite(logps.chosen.grad).all()
