"""SimPER against hand-computed numbers: inverse perplexities, rewards, gradients, short responses, no
hyperparameter (any key is unknown), its config, and a short run.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_simper.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from prefopt.losses import ConfigError, PairLogps, SimPERLoss

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def make_pair(requires_grad=False):
    # s̄_w = -3/3 = -1, s̄_l = -4/2 = -2
    return PairLogps(chosen=torch.tensor([-3.0], requires_grad=requires_grad),
                     rejected=torch.tensor([-4.0], requires_grad=requires_grad),
                     chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([2]))


def test_simper_loss_rewards_and_metrics_by_hand():
    out = SimPERLoss()(make_pair())
    assert out.losses.item() == pytest.approx(-math.exp(-1.0) + math.exp(-2.0), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-2.0)
    assert out.metrics["probs/chosen"].item() == pytest.approx(math.exp(-1.0), rel=1e-6)
    assert out.metrics["probs/rejected"].item() == pytest.approx(math.exp(-2.0), rel=1e-6)


def test_simper_gradient_is_analytic_and_bounded():
    logps = make_pair(requires_grad=True)
    SimPERLoss()(logps).losses.sum().backward()
    # d/ds_w = -exp(s̄_w)/n_w, d/ds_l = +exp(s̄_l)/n_l
    assert logps.chosen.grad.item() == pytest.approx(-math.exp(-1.0) / 3, rel=1e-5)
    assert logps.rejected.grad.item() == pytest.approx(math.exp(-2.0) / 2, rel=1e-5)


def test_zero_token_responses_stay_finite_and_the_loss_stays_in_minus_one_one():
    logps = PairLogps(chosen=torch.tensor([0.0, -50.0]), rejected=torch.tensor([-50.0, 0.0]),
                      chosen_tokens=torch.tensor([0, 1]), rejected_tokens=torch.tensor([1, 0]))
    assert SimPERLoss()(logps).losses.tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_simper_has_no_hyperparameter_no_reference_and_no_stall_value():
    assert SimPERLoss.valid_keys() == [] and SimPERLoss().hparams() == {}
    assert (SimPERLoss.needs_reference, SimPERLoss.needs_marginal) == (False, False)  # never builds a reference
    assert SimPERLoss.name == "simper" and SimPERLoss.beta_range is None and SimPERLoss.stall_loss is None
    with pytest.raises(ConfigError, match=r"SimPERLoss: unknown key\(s\) \['beta'\]; valid keys are \[\]"):
        SimPERLoss(beta=1.0)


def test_config_builds_and_has_no_keys():
    node = OmegaConf.load(CONF / "simper.yaml")
    assert list(node) == ["_target_"]
    assert isinstance(build_component(node, "loss"), SimPERLoss)
