"""β-DPO against hand-computed numbers: the running margin statistics, β per batch, its clamp, the filter,
training vs evaluation mode, the state saved and restored (exact resume), bad values, its config, and a
short run.

Run: `.venv/bin/python -m pytest tests/losses/test_loss_betadpo.py -q`.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.components import build_component
from loss_math import softplus
from prefopt.losses import BetaDPOLoss, ConfigError, DPOLoss, PairLogps

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def make_pair(requires_grad=False):
    # M = h = (s_w - ref_w) - (s_l - ref_l) = [3, -2]: batch mean 0.5, unbiased std sqrt(12.5)
    return PairLogps(chosen=torch.tensor([-10.0, -5.0], requires_grad=requires_grad),
                     rejected=torch.tensor([-11.0, -6.0], requires_grad=requires_grad),
                     chosen_tokens=torch.tensor([4, 5]), rejected_tokens=torch.tensor([2, 3]),
                     ref_chosen=torch.tensor([-12.0, -4.0]), ref_rejected=torch.tensor([-10.0, -7.0]))


def margins(*values):
    """A batch whose pairs have margins M_i = `values` (reference 0, rejected 0)."""
    m = torch.tensor(values)
    zero = torch.zeros_like(m)
    return PairLogps(chosen=m, rejected=zero, chosen_tokens=torch.ones_like(m), rejected_tokens=torch.ones_like(m),
                     ref_chosen=zero, ref_rejected=zero)


def test_beta_follows_the_batch_margin_and_its_running_mean_by_hand():
    loss = BetaDPOLoss(beta=0.1, alpha=0.6)
    out = loss(make_pair())
    # M0 = 0.9·0 + 0.1·0.5 = 0.05, σ0 = 0.1·sqrt(12.5); β = 0.1·(1 + 0.6·(0.5 - 0.05)) = 0.127
    assert loss.margin_mean.item() == pytest.approx(0.05) and loss.margin_std.item() == pytest.approx(0.1 * 12.5**0.5)
    assert out.metrics["beta/used"].item() == pytest.approx(0.127)
    assert out.losses.tolist() == pytest.approx([softplus(-0.127 * 3), softplus(0.127 * 2)], rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1])  # β0(s - ref), as the authors log them
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])
    assert out.metrics["margin/batch"].item() == pytest.approx(0.5)
    assert out.metrics["margin/running_mean"].item() == pytest.approx(0.05)
    out = loss(make_pair())  # M0 = 0.9·0.05 + 0.05 = 0.095; β = 0.1·(1 + 0.6·0.405)
    assert loss.margin_mean.item() == pytest.approx(0.095)
    assert out.metrics["beta/used"].item() == pytest.approx(0.1 * (1 + 0.6 * 0.405))


def test_evaluation_mode_uses_the_running_mean_without_moving_it():
    loss = BetaDPOLoss(beta=0.1, alpha=0.6)
    loss(make_pair())
    loss.eval()  # what Lightning's validation does to the module and its children
    for _ in range(3):
        out = loss(make_pair())
    assert loss.margin_mean.item() == pytest.approx(0.05)
    assert out.metrics["beta/used"].item() == pytest.approx(0.127)
    loss.train()
    loss(make_pair())
    assert loss.margin_mean.item() == pytest.approx(0.095)


def test_alpha_zero_is_dpo_and_a_negative_beta_is_clamped_as_the_authors_do():
    torch.testing.assert_close(BetaDPOLoss(beta=0.3, alpha=0.0)(make_pair()).losses,
                               DPOLoss(beta=0.3)(make_pair()).losses)
    loss = BetaDPOLoss(beta=0.1, alpha=0.6).eval()
    loss.margin_mean.fill_(10.0)  # the batch's margin far below M0: 1 + 0.6·(0.5 - 10) < 0
    assert loss(make_pair()).metrics["beta/used"].item() == pytest.approx(1e-3)


def test_gradient_is_dpos_at_the_batch_beta_and_beta_carries_none():
    logps = make_pair(requires_grad=True)
    loss = BetaDPOLoss(beta=0.1, alpha=0.6)
    out = loss(logps)
    out.losses.sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [-0.127 * sig(-0.127 * 3), -0.127 * sig(0.127 * 2)]  # d/ds_w of -log σ(β·h), β a constant
    assert logps.chosen.grad.tolist() == pytest.approx(expected, rel=1e-5)
    assert not out.metrics["beta/used"].requires_grad


def test_the_filter_drops_the_outlier_and_averages_over_the_kept_pairs():
    torch.manual_seed(0)
    loss = BetaDPOLoss(beta=0.1, alpha=0.6, filter=True, filter_ratio=0.25)
    out = loss(margins(0.1, -0.1, 0.2, 50.0))
    # M0 = 0.1·12.55, σ0 = 0.1·std: the outlier's weight is exp(-190) (floored at 1e-30) against ~0.9
    assert out.metrics["filter/kept"].item() == pytest.approx(0.75)  # k = int(4·0.75) = 3
    assert out.losses[3].item() == 0.0
    kept = torch.tensor([0.1, -0.1, 0.2])
    assert out.metrics["margin/batch"].item() == pytest.approx(kept.mean().item())
    beta = 0.1 * (1 + 0.6 * (kept.mean().item() - 1.255))
    assert out.metrics["beta/used"].item() == pytest.approx(beta, rel=1e-5)
    expected = torch.nn.functional.softplus(-beta * kept).mean().item()  # the mean over the kept pairs
    assert out.losses.mean().item() == pytest.approx(expected, rel=1e-6)


def test_one_pair_and_equal_margins_never_break_the_filter():
    loss = BetaDPOLoss(filter=True)
    for batch in (margins(0.5), margins(0.0, 0.0, 0.0), margins(1.0, 1.0)):
        out = loss(batch)
        assert torch.isfinite(out.losses).all() and out.metrics["filter/kept"].item() > 0


@pytest.mark.parametrize("filter", [False, True])
def test_sits_at_log_2_while_the_policy_is_the_reference(filter):
    loss = BetaDPOLoss(beta=0.5, alpha=0.6, filter=filter)
    assert loss.stall_loss == math.log(2)
    out = loss(margins(0.0, 0.0, 0.0, 0.0, 0.0))
    assert out.losses.mean().item() == pytest.approx(math.log(2), abs=1e-7)


def test_its_state_is_saved_and_restored_so_a_resume_is_exact():
    batches = [margins(*torch.randn(6, generator=torch.Generator().manual_seed(i)).tolist()) for i in range(4)]
    first = BetaDPOLoss(filter=True)
    torch.manual_seed(0)
    for batch in batches[:3]:
        first(batch)
    state = first.state_dict()
    assert sorted(state) == ["margin_mean", "margin_std"]
    resumed = BetaDPOLoss(filter=True)
    resumed.load_state_dict(state)
    rng = torch.get_rng_state()
    a = first(batches[3])
    torch.set_rng_state(rng)
    b = resumed(batches[3])
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0)
    torch.testing.assert_close(resumed.state_dict(), first.state_dict(), rtol=0, atol=0)


def test_the_training_module_holds_its_state_in_its_own_state_dict():
    from helpers import tiny_model

    from prefopt.train.module import PreferenceModule

    module = PreferenceModule(tiny_model(), BetaDPOLoss())
    module.loss_fn.margin_mean.fill_(0.1)
    state = module.state_dict()
    assert state["loss_fn.margin_mean"].item() == pytest.approx(0.1) and "loss_fn.margin_std" in state
    fresh = PreferenceModule(tiny_model(), BetaDPOLoss())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.loss_fn.margin_mean, module.loss_fn.margin_mean)
    module.eval()
    assert module.loss_fn.training is False
    kept = module.loss_fn.margin_mean.clone()
    module.to(torch.bfloat16)  # a bf16 run: the running statistics stay float32, unrounded
    assert module.loss_fn.margin_mean.dtype == torch.float32 and torch.equal(module.loss_fn.margin_mean, kept)


def test_betadpo_declares_what_it_needs():
    assert (BetaDPOLoss.needs_reference, BetaDPOLoss.needs_marginal) == (True, False)
    assert BetaDPOLoss.name == "betadpo" and BetaDPOLoss.beta_range == (0.01, 1.0)
    with pytest.raises(ValueError, match="ref_chosen"):
        BetaDPOLoss()(PairLogps(chosen=torch.zeros(1), rejected=torch.zeros(1), chosen_tokens=torch.ones(1),
                                rejected_tokens=torch.ones(1)))


@pytest.mark.parametrize("kwargs, key, allowed", [
    ({"beta": -0.1}, "beta", "a number > 0"),
    ({"beta": 0.0}, "beta", "a number > 0"),
    ({"alpha": -0.6}, "alpha", "a number >= 0"),
    ({"momentum": 1.0}, "momentum", "in [0, 1)"),
    ({"filter_ratio": 1.0}, "filter_ratio", "in [0, 1)"),
    ({"filter": "yes"}, "filter", "true or false"),
])
def test_bad_values_are_one_line_naming_the_key(kwargs, key, allowed):
    with pytest.raises(ConfigError) as info:
        BetaDPOLoss(**kwargs)
    assert str(info.value) == f"BetaDPOLoss: {key}={kwargs[key]!r} is not allowed; {key} must be {allowed}"


def test_config_builds_with_the_authors_defaults_and_comments_every_key():
    node = OmegaConf.load(CONF / "betadpo.yaml")
    loss = build_component(node, "loss")
    assert isinstance(loss, BetaDPOLoss)
    assert loss.hparams() == {"beta": 0.1, "alpha": 0.6, "momentum": 0.9, "filter": False, "filter_ratio": 0.2}
    assert sorted(k for k in node if k != "_target_") == sorted(BetaDPOLoss.valid_keys())
    lines = [ln for ln in (CONF / "betadpo.yaml").read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all("#" in ln for ln in lines if not ln.startswith("_target_")), lines
