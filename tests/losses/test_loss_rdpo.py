"""R-DPO against hand-computed numbers: the length term's size and sign, α = 0 is DPO, rewards, gradients,
the reference kept constant, bad values, its config, and a short run.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_rdpo.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from loss_math import softplus, sigmoid
from prefopt.losses import ConfigError, DPOLoss, PairLogps, RDPOLoss

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def make_pair(requires_grad=False):
    # pair 0: h = (-10 - -12) - (-11 - -10) = 3, n_w - n_l = 4 - 2 = 2
    # pair 1: h = (-5 - -4) - (-6 - -7) = -2, n_w - n_l = 5 - 8 = -3
    return PairLogps(chosen=torch.tensor([-10.0, -5.0], requires_grad=requires_grad),
                     rejected=torch.tensor([-11.0, -6.0], requires_grad=requires_grad),
                     chosen_tokens=torch.tensor([4, 5]), rejected_tokens=torch.tensor([2, 8]),
                     ref_chosen=torch.tensor([-12.0, -4.0], requires_grad=requires_grad),
                     ref_rejected=torch.tensor([-10.0, -7.0], requires_grad=requires_grad))


def test_rdpo_loss_rewards_and_length_term_by_hand():
    out = RDPOLoss(beta=0.1, alpha=0.2)(make_pair())
    # z = β·h + α·(n_w - n_l): 0.3 + 0.4 = 0.7 and -0.2 - 0.6 = -0.8
    assert out.losses.tolist() == pytest.approx([softplus(-0.7), softplus(0.8)], rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1])  # β(s - ref), as DPO
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])
    assert out.metrics["length/term"].item() == pytest.approx((0.4 - 0.6) / 2)


def test_a_longer_chosen_response_earns_less_gradient_than_in_dpo():
    # the sign of the paper: +α(|y_w| - |y_l|) in the logit; a longer winner already explains part of the
    # preference, so its pair pushes less (pair 0), and a shorter winner pushes more (pair 1)
    rdpo = RDPOLoss(beta=0.1, alpha=0.2)(make_pair()).losses
    dpo = DPOLoss(beta=0.1)(make_pair()).losses
    assert rdpo[0] < dpo[0] and rdpo[1] > dpo[1]


def test_alpha_zero_is_dpo():
    torch.testing.assert_close(RDPOLoss(beta=0.3, alpha=0.0)(make_pair()).losses, DPOLoss(beta=0.3)(make_pair()).losses)


def test_rdpo_gradient_is_analytic_and_never_reaches_the_reference():
    logps = make_pair(requires_grad=True)
    RDPOLoss(beta=0.1, alpha=0.2)(logps).losses.sum().backward()
    # d/ds_w = -β·σ(-z), d/ds_l = +β·σ(-z)
    expected = [-0.1 * sigmoid(-0.7), -0.1 * sigmoid(0.8)]
    assert logps.chosen.grad.tolist() == pytest.approx(expected, rel=1e-5)
    assert logps.rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-5)
    assert logps.ref_chosen.grad is None and logps.ref_rejected.grad is None


def test_rdpo_needs_the_reference_and_stalls_at_log_2_only_without_length_term():
    assert (RDPOLoss.needs_reference, RDPOLoss.needs_marginal) == (True, False)
    assert RDPOLoss.name == "rdpo" and RDPOLoss.beta_range == (0.01, 1.0)
    logps = make_pair()
    with pytest.raises(ValueError, match="ref_chosen"):
        RDPOLoss()(PairLogps(chosen=logps.chosen, rejected=logps.rejected, chosen_tokens=logps.chosen_tokens,
                             rejected_tokens=logps.rejected_tokens))
    assert RDPOLoss().stall_loss is None and RDPOLoss(alpha=0.0).stall_loss == math.log(2)


@pytest.mark.parametrize("kwargs, key, allowed", [
    ({"beta": -0.1}, "beta", "a number > 0"),
    ({"beta": 0}, "beta", "a number > 0"),
    ({"alpha": -0.2}, "alpha", "a number >= 0"),
    ({"alpha": float("nan")}, "alpha", "a number >= 0"),
])
def test_bad_values_are_one_line_naming_the_key(kwargs, key, allowed):
    with pytest.raises(ConfigError) as info:
        RDPOLoss(**kwargs)
    assert str(info.value) == f"RDPOLoss: {key}={kwargs[key]!r} is not allowed; {key} must be {allowed}"


def test_config_builds_with_its_defaults_and_comments_every_key():
    node = OmegaConf.load(CONF / "rdpo.yaml")
    loss = build_component(node, "loss")
    assert isinstance(loss, RDPOLoss) and loss.hparams() == {"beta": 0.1, "alpha": 0.2}
    assert sorted(k for k in node if k != "_target_") == sorted(RDPOLoss.valid_keys())
    lines = [ln for ln in (CONF / "rdpo.yaml").read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all("#" in ln for ln in lines if not ln.startswith("_target_")), lines
