"""Tests of the loss interface: config keys, validation errors, required inputs, shared helpers.

Run: `.venv/bin/python -m pytest tests/losses -q`.
"""

import math

import pytest
import torch

from prefopt.losses import DPOLoss, IPOLoss, PairLogps, PreferenceLoss, RMiPOLoss, SimPOLoss
from prefopt.losses.base import length_average, smoothed_sigmoid_loss

torch.set_num_threads(1)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_valid_keys_are_the_constructor_arguments():
    assert DPOLoss.valid_keys() == ["beta", "label_smoothing"]
    assert IPOLoss.valid_keys() == ["beta"]
    assert SimPOLoss.valid_keys() == ["beta", "gamma_beta_ratio", "label_smoothing", "sft_weight"]
    assert RMiPOLoss.valid_keys() == ["beta", "gamma_min", "gamma_max", "label_smoothing", "marginal",
                                      "marginal_context"]


def test_hparams_fill_defaults_and_repr_shows_them():
    loss = RMiPOLoss(beta=1.5, marginal="reference")
    assert loss.hparams() == {
        "beta": 1.5, "gamma_min": 0.3, "gamma_max": 1.6, "label_smoothing": 0.0, "marginal": "reference",
        "marginal_context": "none",
    }
    assert SimPOLoss(2.5).hparams()["beta"] == 2.5  # positional arguments are recorded too
    assert repr(DPOLoss(beta=0.2)) == "DPOLoss(beta=0.2, label_smoothing=0.0)"


def test_declared_needs_and_marginal_source():
    assert (DPOLoss.needs_reference, DPOLoss.needs_marginal) == (True, False)
    assert (IPOLoss.needs_reference, IPOLoss.needs_marginal) == (True, False)
    assert (SimPOLoss.needs_reference, SimPOLoss.needs_marginal) == (False, False)
    assert (RMiPOLoss.needs_reference, RMiPOLoss.needs_marginal) == (False, True)
    assert RMiPOLoss().marginal_source == "policy"
    assert RMiPOLoss(marginal="reference").marginal_source == "reference"
    names = {DPOLoss.name, IPOLoss.name, SimPOLoss.name, RMiPOLoss.name}
    assert names == {"dpo", "ipo", "simpo", "rmipo"}


@pytest.mark.parametrize(
    "cls, kwargs, key, allowed",
    [
        (DPOLoss, {"beta": 0.0}, "beta", "> 0"),
        (DPOLoss, {"beta": -1.0}, "beta", "> 0"),
        (DPOLoss, {"beta": float("nan")}, "beta", "> 0"),
        (DPOLoss, {"label_smoothing": 0.5}, "label_smoothing", "[0, 0.5)"),
        (DPOLoss, {"label_smoothing": -0.1}, "label_smoothing", "[0, 0.5)"),
        (IPOLoss, {"beta": 0}, "beta", "> 0"),
        (IPOLoss, {"beta": "0.1"}, "beta", "> 0"),
        (SimPOLoss, {"beta": -2.0}, "beta", "> 0"),
        (SimPOLoss, {"gamma_beta_ratio": -0.5}, "gamma_beta_ratio", ">= 0"),
        (SimPOLoss, {"label_smoothing": 0.7}, "label_smoothing", "[0, 0.5)"),
        (SimPOLoss, {"sft_weight": -1.0}, "sft_weight", ">= 0"),
        (RMiPOLoss, {"beta": 0.0}, "beta", "> 0"),
        (RMiPOLoss, {"gamma_min": 2.0, "gamma_max": 1.0}, "gamma_max", ">= gamma_min"),
        (RMiPOLoss, {"label_smoothing": 0.5}, "label_smoothing", "[0, 0.5)"),
        (RMiPOLoss, {"marginal": "ref"}, "marginal", "['policy', 'reference']"),
    ],
)
def test_bad_values_raise_value_error_naming_key_value_and_allowed(cls, kwargs, key, allowed):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert f"{key}=" in message
    assert repr(kwargs[key]) in message
    assert allowed in message


def test_unknown_key_is_an_error_naming_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key.*gamma_beta_ratio.*valid keys.*gamma_min"):
        RMiPOLoss(gamma_beta_ratio=0.5)
    with pytest.raises(TypeError):  # also a TypeError, like Python's own unknown-keyword error
        DPOLoss(tau=0.1)


def test_missing_reference_or_marginal_inputs_raise():
    logps = PairLogps(chosen=t(-1.0), rejected=t(-2.0), chosen_tokens=t(1), rejected_tokens=t(1))
    with pytest.raises(ValueError, match="ref_chosen"):
        DPOLoss()(logps)
    with pytest.raises(ValueError, match="marginal_chosen"):
        RMiPOLoss()(logps)
    SimPOLoss()(logps)  # needs neither


def test_length_average_never_divides_by_zero():
    avg = length_average(t(-6.0, 0.0, -2.5), torch.tensor([3, 0, 1]))
    assert avg.tolist() == [-2.0, 0.0, -2.5]


def test_smoothed_sigmoid_loss_matches_hand_values_and_is_stable():
    z = t(0.0, 2.0, -1000.0, 1000.0)
    plain = smoothed_sigmoid_loss(z, 0.0)
    assert plain[0].item() == pytest.approx(math.log(2.0))
    assert plain[1].item() == pytest.approx(math.log(1 + math.exp(-2.0)))
    assert plain[2].item() == pytest.approx(1000.0)
    assert plain[3].item() == pytest.approx(0.0, abs=1e-6)
    smooth = smoothed_sigmoid_loss(t(2.0), 0.25)
    expected = 0.75 * math.log(1 + math.exp(-2.0)) + 0.25 * math.log(1 + math.exp(2.0))
    assert smooth.item() == pytest.approx(expected, rel=1e-6)


def test_a_new_loss_needs_only_a_subclass():
    class HingeLoss(PreferenceLoss):
        name = "hinge"

        def __init__(self, beta: float = 1.0) -> None:
            self.beta = beta

        def compute(self, logps):
            raise NotImplementedError

    assert HingeLoss.valid_keys() == ["beta"]
    assert HingeLoss(beta=3.0).hparams() == {"beta": 3.0}
    with pytest.raises(ValueError, match="valid keys are \\['beta'\\]"):
        HingeLoss(margin=1.0)
