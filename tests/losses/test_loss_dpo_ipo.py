"""DPO and IPO against hand-computed numbers, label smoothing, gradients, reference kept constant.

Run: `.venv/bin/python -m pytest tests/losses -q`.
"""

import math

import pytest
import torch

from prefopt.losses import DPOLoss, IPOLoss, PairLogps

torch.set_num_threads(1)


def softplus(x):  # log(1 + e^x); -log σ(z) = softplus(-z)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def make_pair(requires_grad=False):
    # pair 0: policy gains 2 nats on chosen, loses 1 on rejected -> h = 3
    # pair 1: h = (-5 - -4) - (-6 - -7) = -1 - 1 = -2
    values = dict(
        chosen=[-10.0, -5.0], rejected=[-11.0, -6.0],
        chosen_tokens=[4.0, 5.0], rejected_tokens=[2.0, 3.0],
        ref_chosen=[-12.0, -4.0], ref_rejected=[-10.0, -7.0],
    )
    tensors = {
        k: torch.tensor(v, requires_grad=requires_grad and "tokens" not in k) for k, v in values.items()
    }
    return PairLogps(**tensors)


def test_dpo_loss_and_rewards_by_hand():
    out = DPOLoss(beta=0.1)(make_pair())
    assert out.losses.tolist() == pytest.approx([softplus(-0.3), softplus(0.2)], rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1], rel=1e-5)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1], rel=1e-5)


def test_dpo_label_smoothing_by_hand():
    out = DPOLoss(beta=0.1, label_smoothing=0.2)(make_pair())
    expected0 = 0.8 * softplus(-0.3) + 0.2 * softplus(0.3)
    expected1 = 0.8 * softplus(0.2) + 0.2 * softplus(-0.2)
    assert out.losses.tolist() == pytest.approx([expected0, expected1], rel=1e-6)


def test_dpo_gradient_is_analytic_and_reference_gets_none():
    logps = make_pair(requires_grad=True)
    out = DPOLoss(beta=0.1)(logps)
    out.losses.sum().backward()
    # d/ds_w [-log σ(βh)] = -β(1 - σ(βh)); d/ds_l = +β(1 - σ(βh))
    expected = [-0.1 * (1 - sigmoid(0.3)), -0.1 * (1 - sigmoid(-0.2))]
    assert logps.chosen.grad.tolist() == pytest.approx(expected, rel=1e-5)
    assert logps.rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-5)
    assert logps.ref_chosen.grad is None and logps.ref_rejected.grad is None
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_ipo_uses_the_per_token_form():
    # pair 0: (s_w - ref_w)/n_w = 2/4 = 0.5, (s_l - ref_l)/n_l = -1/2 = -0.5 -> h̄ = 1; 1/(2β) = 5
    # pair 1: -1/5 - 1/3 = -8/15
    out = IPOLoss(beta=0.1)(make_pair())
    assert out.losses.tolist() == pytest.approx([(1.0 - 5.0) ** 2, (-8 / 15 - 5.0) ** 2], rel=1e-6)
    assert out.losses[0].item() != pytest.approx((3.0 - 5.0) ** 2)  # not the summed form
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1], rel=1e-5)


def test_ipo_gradient_and_reference_gets_none():
    logps = make_pair(requires_grad=True)
    IPOLoss(beta=0.1)(logps).losses.sum().backward()
    # d/ds_w (h̄ - 5)² = 2(h̄ - 5)/n_w
    assert logps.chosen.grad.tolist() == pytest.approx([2 * -4.0 / 4, 2 * (-8 / 15 - 5.0) / 5], rel=1e-5)
    expected_rejected = [-2 * -4.0 / 2, -2 * (-8 / 15 - 5.0) / 3]
    assert logps.rejected.grad.tolist() == pytest.approx(expected_rejected, rel=1e-5)
    assert logps.ref_chosen.grad is None and logps.ref_rejected.grad is None


@pytest.mark.parametrize("loss", [DPOLoss(), IPOLoss()])
def test_zero_and_one_token_responses_stay_finite(loss):
    logps = PairLogps(
        chosen=torch.tensor([0.0, -0.7], requires_grad=True),
        rejected=torch.tensor([-1.2, 0.0], requires_grad=True),
        chosen_tokens=torch.tensor([0, 1]),
        rejected_tokens=torch.tensor([1, 0]),
        ref_chosen=torch.tensor([0.0, -0.5]),
        ref_rejected=torch.tensor([-1.0, 0.0]),
    )
    out = loss(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()
