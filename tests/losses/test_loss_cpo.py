"""CPO against hand-computed numbers: the sigmoid term on summed log-probs, the chosen NLL, label
smoothing, rewards, gradients, its stall value, bad values, its config, and a short run.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_cpo.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from loss_math import softplus, sigmoid
from prefopt.losses import ConfigError, CPOLoss, PairLogps

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def make_pair(requires_grad=False):
    # s_w - s_l = -6 - -12 = 6; s̄_w = -2
    return PairLogps(chosen=torch.tensor([-6.0], requires_grad=requires_grad),
                     rejected=torch.tensor([-12.0], requires_grad=requires_grad),
                     chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([4]))


def test_cpo_loss_and_rewards_by_hand():
    out = CPOLoss()(make_pair())  # β 0.1, cpo_alpha 1: softplus(-0.6) + 1·2
    assert out.losses.item() == pytest.approx(softplus(-0.6) + 2.0, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-0.6) and out.rejected_rewards.item() == pytest.approx(-1.2)
    assert out.metrics["nll_loss"].item() == pytest.approx(2.0)
    assert not out.metrics["nll_loss"].requires_grad


def test_cpo_alpha_weights_the_nll_and_zero_turns_it_off():
    assert CPOLoss(cpo_alpha=0.5)(make_pair()).losses.item() == pytest.approx(softplus(-0.6) + 1.0, rel=1e-6)
    out = CPOLoss(beta=0.2, cpo_alpha=0.0)(make_pair())
    assert out.losses.item() == pytest.approx(softplus(-1.2), rel=1e-6) and out.metrics == {}


def test_cpo_label_smoothing_by_hand():
    out = CPOLoss(cpo_alpha=0.0, label_smoothing=0.1)(make_pair())
    assert out.losses.item() == pytest.approx(0.9 * softplus(-0.6) + 0.1 * softplus(0.6), rel=1e-6)


def test_cpo_gradient_is_analytic():
    logps = make_pair(requires_grad=True)
    CPOLoss()(logps).losses.sum().backward()
    # d/ds_w = -β(1 - σ(z)) - cpo_alpha/n_w, d/ds_l = +β(1 - σ(z)), z = 0.6
    assert logps.chosen.grad.item() == pytest.approx(-0.1 * (1 - sigmoid(0.6)) - 1 / 3, rel=1e-5)
    assert logps.rejected.grad.item() == pytest.approx(0.1 * (1 - sigmoid(0.6)), rel=1e-5)


def test_cpo_declares_no_reference_and_stalls_at_log_2_only_without_nll():
    assert (CPOLoss.needs_reference, CPOLoss.needs_marginal) == (False, False)  # never builds a reference
    assert CPOLoss.name == "cpo" and CPOLoss.beta_range == (0.01, 1.0)
    assert CPOLoss().stall_loss is None  # the NLL term moves the start
    plain = CPOLoss(beta=1e-9, cpo_alpha=0.0)
    assert plain.stall_loss == math.log(2)
    assert plain(make_pair()).losses.item() == pytest.approx(math.log(2), abs=1e-7)


@pytest.mark.parametrize("kwargs, key, allowed", [
    ({"beta": -0.1}, "beta", "a number > 0"),
    ({"beta": 0.0}, "beta", "a number > 0"),
    ({"cpo_alpha": -1.0}, "cpo_alpha", "a number >= 0"),
    ({"label_smoothing": 0.5}, "label_smoothing", "in [0, 0.5)"),
])
def test_bad_values_are_one_line_naming_the_key(kwargs, key, allowed):
    with pytest.raises(ConfigError) as info:
        CPOLoss(**kwargs)
    assert str(info.value) == f"CPOLoss: {key}={kwargs[key]!r} is not allowed; {key} must be {allowed}"


def test_config_builds_with_trls_defaults_and_comments_every_key():
    node = OmegaConf.load(CONF / "cpo.yaml")
    loss = build_component(node, "loss")
    assert isinstance(loss, CPOLoss)
    assert loss.hparams() == {"beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0}
    assert sorted(k for k in node if k != "_target_") == sorted(CPOLoss.valid_keys())
    lines = [ln for ln in (CONF / "cpo.yaml").read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all("#" in ln for ln in lines if not ln.startswith("_target_")), lines
