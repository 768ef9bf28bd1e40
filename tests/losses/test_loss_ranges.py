"""What each loss declares for the run's checks: `beta_range` (the usual β, prefopt.config.validate warns
outside it) and `stall_loss` (the loss at a zero logit, prefopt.train.stall warns when training sits there).

Run: `.venv/bin/python -m pytest tests/losses -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.losses import DPOLoss, IPOLoss, PairLogps, RMiPOLoss, SimPOLoss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
LOGPS = PairLogps(chosen=torch.tensor([-3.0, -7.5]), rejected=torch.tensor([-6.0, -2.0]),
                  chosen_tokens=torch.tensor([3, 5]), rejected_tokens=torch.tensor([4, 2]),
                  ref_chosen=torch.tensor([-3.0, -7.5]), ref_rejected=torch.tensor([-6.0, -2.0]),  # policy == reference
                  marginal_chosen=torch.tensor([-4.0, -9.0]), marginal_rejected=torch.tensor([-5.0, -3.0]))


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_beta_is_inside_its_losss_usual_range(path):
    from hydra.utils import get_class

    node = OmegaConf.load(path)
    declared = get_class(node._target_).beta_range
    if declared is None:  # a loss without β (SimPER): its config has none either
        assert "beta" not in node
        return
    low, high = declared
    assert 0 < low < high and low <= node.beta <= high


def test_declared_ranges():
    assert DPOLoss.beta_range == IPOLoss.beta_range == (0.01, 1.0)
    assert SimPOLoss.beta_range == (0.01, 10.0) and RMiPOLoss.beta_range == (0.2, 20.0)


@pytest.mark.parametrize("loss", [DPOLoss(beta=0.1), DPOLoss(beta=3.0, label_smoothing=0.2)])
def test_dpo_sits_at_its_stall_loss_while_the_policy_is_the_reference(loss):
    assert loss.stall_loss == math.log(2)  # -(1-ε)·log σ(0) - ε·log σ(0) = log 2 for any ε and β
    assert loss(LOGPS).losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-7)


@pytest.mark.parametrize("loss", [SimPOLoss(beta=1e-9), RMiPOLoss(beta=1e-9)])
def test_reference_free_losses_reach_their_stall_loss_as_beta_vanishes(loss):
    assert loss.stall_loss == math.log(2)
    assert loss(LOGPS).losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-7)


def test_ipo_declares_no_stall_loss():
    assert IPOLoss.stall_loss is None
    assert IPOLoss(beta=0.1)(LOGPS).losses.tolist() == pytest.approx([25.0, 25.0])  # (0 - 1/(2·0.1))², β-dependent
