"""ORPO against hand-computed numbers: the odds ratio, the NLL term, rewards, gradients, p -> 1, bad values,
its config, and a short run.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_orpo.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from loss_math import softplus, sigmoid
from prefopt.losses import ConfigError, ORPOLoss, PairLogps

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def log_odds(avg):  # log(p / (1 - p)), p = exp(avg)
    return avg - math.log(1.0 - math.exp(avg))


def make_pair(requires_grad=False):
    # s̄_w = -3/3 = -1, s̄_l = -4/2 = -2
    return PairLogps(chosen=torch.tensor([-3.0], requires_grad=requires_grad),
                     rejected=torch.tensor([-4.0], requires_grad=requires_grad),
                     chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([2]))


def test_orpo_loss_rewards_and_metrics_by_hand():
    out = ORPOLoss(beta=0.1)(make_pair())
    ratio = log_odds(-1.0) - log_odds(-2.0)  # 1.3133: the chosen answer's odds are e^1.31 times the rejected's
    assert ratio == pytest.approx(1.31327, abs=1e-5)
    assert out.losses.item() == pytest.approx(1.0 + 0.1 * softplus(-ratio), rel=1e-6)  # NLL 1 + λ·(-logσ)
    assert out.chosen_rewards.item() == pytest.approx(-0.1) and out.rejected_rewards.item() == pytest.approx(-0.2)
    assert out.metrics["nll_loss"].item() == pytest.approx(1.0)
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(ratio, rel=1e-6)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-softplus(-ratio), rel=1e-6)
    assert ORPOLoss(beta=1.0)(make_pair()).losses.item() == pytest.approx(1.0 + softplus(-ratio), rel=1e-6)


def test_orpo_gradient_is_analytic():
    logps = make_pair(requires_grad=True)
    ORPOLoss(beta=0.5)(logps).losses.sum().backward()
    ratio = log_odds(-1.0) - log_odds(-2.0)
    # d log odds / d s̄ = 1 / (1 - p); d loss / d s̄_w = -1 - λ·σ(-r)/(1 - p_w), and / n_w
    d_w = (-1.0 - 0.5 * sigmoid(-ratio) / (1.0 - math.exp(-1.0))) / 3
    d_l = (0.5 * sigmoid(-ratio) / (1.0 - math.exp(-2.0))) / 2
    assert logps.chosen.grad.item() == pytest.approx(d_w, rel=1e-5)
    assert logps.rejected.grad.item() == pytest.approx(d_l, rel=1e-5)


def test_certain_and_empty_responses_stay_finite():
    # p = 1 (s̄ = 0: an empty response, or a certain one) would give infinite odds
    logps = PairLogps(chosen=torch.tensor([0.0, -1e-9, -2.0], requires_grad=True),
                      rejected=torch.tensor([-2.0, -3.0, 0.0], requires_grad=True),
                      chosen_tokens=torch.tensor([0, 1, 2]), rejected_tokens=torch.tensor([1, 3, 0]))
    out = ORPOLoss()(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()


def test_orpo_declares_no_reference_no_marginal_and_no_stall_value():
    assert (ORPOLoss.needs_reference, ORPOLoss.needs_marginal) == (False, False)  # never builds a reference
    assert ORPOLoss.name == "orpo" and ORPOLoss.stall_loss is None
    assert ORPOLoss.beta_range == (0.05, 1.0)
    ORPOLoss()(make_pair())  # no ref_* fields needed


@pytest.mark.parametrize("value", [-0.1, 0.0, float("inf"), "0.1"])
def test_bad_lambda_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as info:
        ORPOLoss(beta=value)
    assert str(info.value) == f"ORPOLoss: beta={value!r} is not allowed; beta must be a number > 0"


def test_config_builds_with_the_papers_default_and_comments_every_key():
    node = OmegaConf.load(CONF / "orpo.yaml")
    loss = build_component(node, "loss")
    assert isinstance(loss, ORPOLoss) and loss.hparams() == {"beta": 0.1}
    assert sorted(k for k in node if k != "_target_") == sorted(ORPOLoss.valid_keys())
    lines = [ln for ln in (CONF / "orpo.yaml").read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all("#" in ln for ln in lines if not ln.startswith("_target_")), lines
