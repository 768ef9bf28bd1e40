"""The RMiPO controls against hand-computed numbers: SimPO with the margin annealed over training and
RMiPO with δ shuffled within the batch (prefopt.losses.controls), and their configs.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_controls.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from prefopt.losses import ConfigError, PairLogps, RMiPOLoss, RMiPOShuffledLoss, SimPOAnnealedLoss, SimPOLoss

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def softplus(x):  # -log σ(z) = softplus(-z)
    return math.log1p(math.exp(x))


def simpo_pair():
    # s̄_w = -6/3 = -2, s̄_l = -12/4 = -3: gap 1
    return PairLogps(chosen=torch.tensor([-6.0]), rejected=torch.tensor([-12.0]),
                     chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([4]))


@pytest.mark.parametrize("progress, ratio", [(0.0, 1.6), (0.5, 0.95), (1.0, 0.3), (1.7, 0.3), (-1.0, 1.6)])
def test_annealed_margin_moves_linearly_from_start_to_end(progress, ratio):
    loss = SimPOAnnealedLoss(beta=2.0, gamma_beta_ratio=1.6, gamma_beta_ratio_end=0.3)
    out = loss(simpo_pair(), progress=progress)
    # z = β·gap - β·ratio = 2·1 - 2·ratio; progress outside [0, 1] is clamped
    assert out.losses.item() == pytest.approx(softplus(-(2.0 - 2.0 * ratio)), rel=1e-6)
    assert out.metrics["margin/mean"].item() == pytest.approx(ratio)
    assert loss.gamma_at(progress) == pytest.approx(2.0 * ratio)


def test_annealing_with_equal_ends_is_simpo():
    fixed = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)(simpo_pair())
    annealed = SimPOAnnealedLoss(beta=2.0, gamma_beta_ratio=0.5, gamma_beta_ratio_end=0.5,
                                 label_smoothing=0.1)(simpo_pair(), progress=0.37)
    assert annealed.losses.item() == pytest.approx(fixed.losses.item(), rel=1e-7)
    assert annealed.chosen_rewards.item() == pytest.approx(-4.0)


def test_annealed_keys_are_checked():
    assert SimPOAnnealedLoss.valid_keys() == ["beta", "gamma_beta_ratio", "gamma_beta_ratio_end",
                                              "label_smoothing", "sft_weight"]
    with pytest.raises(ConfigError, match="gamma_beta_ratio_end=-0.1 is not allowed"):
        SimPOAnnealedLoss(gamma_beta_ratio_end=-0.1)
    with pytest.raises(ConfigError, match="unknown key.*gamma_min.*valid keys"):
        SimPOAnnealedLoss(gamma_min=0.3)


def rmipo_pairs(deltas):
    """s̄_w - s̄_l = 1 for every pair; PMI_w - PMI_l = δ (as in test_loss_rmipo.py)."""
    b = len(deltas)
    return PairLogps(
        chosen=torch.full((b,), -4.0), rejected=torch.full((b,), -9.0),
        chosen_tokens=torch.full((b,), 2), rejected_tokens=torch.full((b,), 3),
        marginal_chosen=torch.full((b,), -6.0),
        marginal_rejected=torch.tensor([3.0 * (-4.0 + d) for d in deltas]),
        marginal_chosen_tokens=torch.full((b,), 2), marginal_rejected_tokens=torch.full((b,), 3),
    )


def hand_margin(delta, g_min=0.3, g_max=1.6):
    return g_min + (g_max - g_min) * math.exp(-max(0.0, delta))


def test_shuffled_delta_keeps_the_margins_but_not_their_pairs():
    deltas = [-0.5, 0.0, 0.5, 1.0, 2.0, 4.0]
    plain = RMiPOLoss()(rmipo_pairs(deltas))
    torch.manual_seed(0)
    perm = torch.randperm(len(deltas)).tolist()  # the permutation the loss will draw
    torch.manual_seed(0)
    shuffled = RMiPOShuffledLoss()(rmipo_pairs(deltas))
    assert perm != list(range(len(deltas)))
    # pair i gets the margin of pair perm[i]: loss_i = softplus(-β·(1 - g(δ_perm[i]))), β = 2
    expected = [softplus(-2.0 * (1.0 - hand_margin(deltas[j]))) for j in perm]
    assert shuffled.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert sorted(shuffled.losses.tolist()) == pytest.approx(sorted(plain.losses.tolist()), rel=1e-6)
    assert shuffled.losses.tolist() != pytest.approx(plain.losses.tolist(), rel=1e-3)
    for key in ("margin/mean", "pmi/delta", "pmi/chosen", "pmi/rejected", "margin/at_max"):
        assert shuffled.metrics[key].item() == pytest.approx(plain.metrics[key].item(), rel=1e-6), key


def test_shuffled_delta_is_rmipo_when_all_deltas_are_equal():
    plain = RMiPOLoss(beta=5.0)(rmipo_pairs([0.7] * 4))
    shuffled = RMiPOShuffledLoss(beta=5.0)(rmipo_pairs([0.7] * 4))
    assert shuffled.losses.tolist() == pytest.approx(plain.losses.tolist(), rel=1e-7)
    assert RMiPOShuffledLoss.valid_keys() == RMiPOLoss.valid_keys()
    assert RMiPOShuffledLoss.name == "rmipo_shuffled" and RMiPOShuffledLoss.needs_marginal


@pytest.mark.parametrize("name, cls, settings", [
    ("simpo_margin_low", SimPOLoss, {"gamma_beta_ratio": 0.3}),
    ("simpo_margin_high", SimPOLoss, {"gamma_beta_ratio": 1.6}),
    ("simpo_margin_anneal", SimPOAnnealedLoss, {"gamma_beta_ratio": 1.6, "gamma_beta_ratio_end": 0.3}),
    ("rmipo_shuffled", RMiPOShuffledLoss, {"gamma_min": 0.3, "gamma_max": 1.6}),
])
def test_control_configs_build_the_control(name, cls, settings):
    loss = build_component(OmegaConf.load(CONF / f"{name}.yaml"), "loss")
    assert type(loss) is cls and loss.beta == 2.0
    for key, value in settings.items():
        assert getattr(loss, key) == pytest.approx(value), key


def test_the_shuffled_control_takes_rmipos_marginal_context():
    """The control builds the same marginal rows as RMiPO (the data side reads `marginal_context`)."""
    assert RMiPOShuffledLoss().marginal_context == "none"
    assert RMiPOShuffledLoss(marginal_context="start_token").marginal_context == "start_token"
