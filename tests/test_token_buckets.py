"""data.token_buckets (prefopt/scoring/buckets.py): the collator pads every token dimension (padded rows,
shared prompt, packed, tree, marginal rows) up to a bucket, so CUDA graphs see few shapes, and a training
step on the bucketed batch has the loss and gradients of the unbucketed one (fp32, 1e-6)."""

import pytest
import torch

from helpers import BOS, PAD, tiny_model
from prefopt.data.collate import PairCollator
from prefopt.errors import ConfigError
from prefopt.losses import DPOLoss, RMiPOLoss
from prefopt.scoring.buckets import TokenBuckets, token_buckets
from prefopt.scoring.layout import LayoutChoice, batch_layout, without_packing
from prefopt.scoring.marginal import MarginalRows
from prefopt.train.module import PreferenceModule

POWERS = {64 * 2**k for k in range(8)}


def items():
    """Three pairs of unequal lengths: prompts of 17-19 tokens (shared-prompt scoring), responses 1-6."""
    pairs = [([BOS] + [5 + i] * (16 + i), [8, 9] * (i + 1), [11 + i]) for i in range(3)]
    return [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]


def collate(layout: str, buckets: TokenBuckets | None, context: str = "none"):
    """A batch that the tiny model scores on `layout`, with RMiPO's marginal rows under `context`."""
    pack = layout in ("tree", "packed")
    choice = LayoutChoice(pack=pack, share_prompt=layout == "shared" or pack, buckets=buckets)
    batch = PairCollator(PAD, choice, MarginalRows([BOS], context))(items())
    if layout == "packed":
        return {k: v for k, v in batch.items() if not k.startswith("tree_")}
    return without_packing(batch) if layout == "rows" else batch


def token_widths(batch) -> dict[str, int]:
    """The token dimension of every row tensor of `batch` (2-D tensors; plans and counts are 1-D)."""
    return {k: v.shape[1] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 2}


def test_bucket_widths():
    powers = TokenBuckets()
    assert [powers(n) for n in (0, 1, 64, 65, 128, 129, 300)] == [64, 64, 64, 128, 128, 256, 512]
    capped = TokenBuckets(cap=200)
    assert [capped(n) for n in (10, 129, 200, 201)] == [64, 200, 200, 256]  # the cap when the row fits under it
    eights = TokenBuckets(multiple=8)
    assert [eights(n) for n in (0, 1, 8, 9, 17)] == [8, 8, 8, 16, 24]


@pytest.mark.parametrize("setting, compile_setting, expected", [
    ("auto", False, None), ("auto", True, None), ("auto", "reduce-overhead", TokenBuckets(cap=512)),
    (False, "reduce-overhead", None), (True, False, TokenBuckets(cap=512)), (16, False, TokenBuckets(16, 512)),
])
def test_the_setting_and_its_auto(setting, compile_setting, expected):
    assert token_buckets(setting, compile_setting, 512) == expected


@pytest.mark.parametrize("bad", ["yes", 0, -8, 1.5, None])
def test_a_bad_setting_is_one_line_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^data.token_buckets=.* is not allowed; it must be auto, true") as err:
        token_buckets(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("buckets, allowed", [(TokenBuckets(), POWERS), (TokenBuckets(multiple=24), None)])
def test_every_row_tensor_falls_in_the_bucket_set(buckets, allowed):
    plain = PairCollator(PAD, LayoutChoice(pack=True), MarginalRows([BOS], "start_token"))(items())
    batch = PairCollator(PAD, LayoutChoice(pack=True, buckets=buckets), MarginalRows([BOS], "start_token"))(items())
    widths, before = token_widths(batch), token_widths(plain)
    assert widths.keys() == before.keys() and {"input_ids", "prompt_ids", "response_ids", "packed_input_ids",
                                                "tree_input_ids", "marginal_input_ids"} <= widths.keys()
    for key, width in widths.items():
        assert width == buckets(before[key]) and (width in allowed if allowed else width % 24 == 0), key
    assert len(set(widths.values())) < len(set(before.values()))  # fewer shapes


def train_step(loss, batch, share):
    """Loss and policy gradients of one training step of the tiny model (fp32)."""
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(layers=2), loss)
    module._logs_this_step = lambda: False
    module.frozen._share = share
    value = module.training_step(batch, 0)
    value.backward()
    return value.detach(), [p.grad.clone() for p in module.policy.parameters()], module


@pytest.mark.parametrize("buckets", [TokenBuckets(cap=64), TokenBuckets(multiple=24)])
@pytest.mark.parametrize("layout", ["rows", "shared", "tree", "packed"])
@pytest.mark.parametrize("loss", ["dpo", "rmipo-none", "rmipo-start_token"])
def test_buckets_change_no_loss_or_gradient(layout, loss, buckets):
    """DPO (policy and live reference on `layout`) and RMiPO (its live marginal on the marginal rows, both
    contexts): the same loss and gradients to 1e-6 with and without buckets, on the same layout."""
    context = loss.split("-")[1] if "-" in loss else "none"
    make = (lambda: DPOLoss(beta=0.1)) if loss == "dpo" else (lambda: RMiPOLoss(marginal_context=context))
    share = "auto" if layout == "shared" else False
    plain, bucketed = collate(layout, None, context), collate(layout, buckets, context)
    assert token_widths(plain) != token_widths(bucketed)
    (a_loss, a_grads, module), (b_loss, b_grads, _) = train_step(make(), plain, share), train_step(make(), bucketed, share)
    assert batch_layout(bucketed, module.policy, share) == batch_layout(plain, module.policy, share) == layout
    torch.testing.assert_close(b_loss, a_loss, rtol=0, atol=1e-6)
    for a, b in zip(a_grads, b_grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_the_run_plan_reads_the_key():
    from hydra import compose, initialize_config_dir
    from pathlib import Path

    from prefopt.config import plan
    from prefopt.config.validate import validate_config

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        default = compose(config_name="train", overrides=["data=sort", "loss=dpo"])
        on = compose(config_name="train", overrides=["data=sort", "loss=dpo", "data.token_buckets=16"])
        bad = compose(config_name="train", overrides=["data=sort", "loss=dpo", "data.token_buckets=-2"])
    assert default.data.token_buckets == "auto" and plan(default).layout.buckets is None  # model.compile=false
    assert plan(on).layout.buckets == TokenBuckets(multiple=16, cap=on.data.max_length)
    with pytest.raises(ConfigError, match="data.token_buckets"):
        validate_config(bad)
