"""The training step reads nothing back from the device: the collator's index plans (prefopt.scoring.logps
.ScorePlan) replace boolean-mask indexing, `nonzero`, `bincount`, `.item()` and `int(t.max())` in every
layout (padded rows, shared prompt, packed, tree), forward and backward, policy and live reference, and
RMiPO's live marginal pass (its rows' plan `marginal_plan_*`, under both marginal contexts).

On the CPU a stand-in (`NoSync`, a TorchDispatchMode) raises at every operator that makes a CUDA device
wait for the host's read: `_local_scalar_dense` (`.item()`, `bool(t)`, `int(t)`), `nonzero`, `bincount`,
`masked_select`, `equal`, and indexing with a boolean tensor; `Tensor.tolist` is patched to raise too.
What transformers itself reads (its sdpa mask builder's `padding_mask.all()` on padded rows, its packed-
sequence detection on packed rows) is allowed only where the test says so and counted. A CUDA test (skipped
without a GPU) runs the same step under `torch.cuda.set_sync_debug_mode("error")`.
"""

import traceback
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import BOS, PAD, tiny_model
from prefopt.data.collate import PairCollator
from prefopt.losses import DPOLoss, RMiPOLoss
from prefopt.scoring.layout import LayoutChoice, batch_layout, pair_batch_logps, without_packing
from prefopt.scoring.logps import batch_plan, response_logps
from prefopt.scoring.marginal import MarginalRows
from prefopt.train.guards import FiniteGuard
from prefopt.train.module import PreferenceModule

SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::bincount", "aten::masked_select", "aten::equal",
           "aten::is_nonzero", "aten::item", "aten::unique_consecutive", "aten::_unique2"}
TRANSFORMERS_MASKS = "transformers/masking_utils.py"


class HostSync(AssertionError):
    pass


class NoSync(TorchDispatchMode):
    """Raises `HostSync` at an operator that synchronises a CUDA device with the host, unless the call
    comes from a file in `allowed` (then it is counted in `self.allowed`)."""

    def __init__(self, allowed: tuple[str, ...] = ()):
        super().__init__()
        self.allowed_files, self.allowed = allowed, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        indices = args[1] if name.startswith("aten::index") and len(args) > 1 else None
        boolean = isinstance(indices, (list, tuple)) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        if name in SYNCING or boolean:
            stack = "".join(traceback.format_stack(limit=25))
            if any(f in stack for f in self.allowed_files):
                self.allowed.append(name)
            else:
                raise HostSync(f"{name} syncs the host:\n{stack}")
        return func(*args, **(kwargs or {}))


def no_tolist(*args, **kwargs):
    raise HostSync("Tensor.tolist syncs the host")


def items(equal: bool):
    """Three pairs, prompts of 16+ tokens (shared-prompt scoring); `equal`: every prompt, chosen and
    rejected the same length (no padding in the padded layouts)."""
    if equal:
        pairs = [([BOS] + [5 + i] * 16, [8, 9, 10 + i], [11, 12, 13]) for i in range(3)]
    else:
        pairs = [([BOS] + [5] * (16 + i), [8, 9] * (i + 1), [11 + i]) for i in range(3)]
    return [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]


def batch_for(layout: str, equal: bool = True):
    """A collated batch that `pair_batch_logps` scores on `layout` with the tiny model."""
    pack = layout in ("tree", "packed")
    batch = PairCollator(PAD, LayoutChoice(pack=pack, share_prompt=layout == "shared" or pack))(items(equal))
    if layout == "packed":
        batch = {k: v for k, v in batch.items() if not k.startswith("tree_")}
    elif layout == "rows":
        batch = without_packing(batch)
    return batch


def step(module, batch):
    """One training step's work: the policy and live reference passes, the loss, its backward."""
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss


@pytest.mark.parametrize("layout", ["rows", "shared", "tree", "packed"])
def test_a_training_step_never_syncs(layout):
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), DPOLoss(beta=0.1))
    module._logs_this_step = lambda: False  # a step that does not log (logging reads metrics back)
    batch = batch_for(layout)
    share = "auto" if layout == "shared" else False
    module.frozen._share = share
    assert batch_layout(batch, module.policy, share) == layout
    step(module, batch)  # the first step: each model's probes and the share_prompt=auto check, once a run
    # transformers reads one flag back a pass on padded rows (is the mask all ones) and packed rows (are
    # there several sequences in a row); the shared prompt (no mask without padding) and tree rows (a 4D
    # mask) read nothing
    allowed = (TRANSFORMERS_MASKS,) if layout in ("rows", "packed") else ()
    with NoSync(allowed) as guard, mock.patch.object(torch.Tensor, "tolist", no_tolist):
        loss = step(module, batch)
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.policy.parameters())
    assert guard.allowed == (["aten::_local_scalar_dense"] * 2 if allowed else [])  # policy and reference


@pytest.mark.parametrize("layout", ["rows", "shared"])
def test_padded_rows_sync_only_in_transformers_mask_builder(layout):
    """With padding, transformers' sdpa mask builder reads the padding mask (`padding_mask.all()`); our
    code reads nothing. Without padding (above) the collator says so and no mask is passed at all."""
    module = PreferenceModule(tiny_model(), DPOLoss(beta=0.1))
    module._logs_this_step = lambda: False
    module.frozen._share = "auto" if layout == "shared" else False
    batch = batch_for(layout, equal=False)
    assert batch_layout(batch, module.policy, module.frozen._share) == layout
    step(module, batch)  # probes and checks, once a run
    with NoSync((TRANSFORMERS_MASKS,)) as guard:
        step(module, batch)
    assert guard.allowed and set(guard.allowed) == {"aten::_local_scalar_dense"}


def test_the_stand_in_catches_the_old_paths():
    """A batch built without plans (by hand, other callers) falls back to boolean masks: the stand-in
    sees them, so the tests above prove the plans are what the step uses."""
    batch = {k: v for k, v in batch_for("rows").items() if not k.startswith("plan_")}
    with pytest.raises(HostSync, match="nonzero|index"), NoSync((TRANSFORMERS_MASKS,)):
        pair_batch_logps(tiny_model(), batch, False)


@pytest.mark.parametrize("layout", ["rows", "shared", "tree", "packed"])
def test_plans_give_the_same_numbers_bit_for_bit(layout):
    """Planned and mask paths: equal sums, counts and per-token log-probs (same order), and gradients."""
    model = tiny_model(layers=2)
    batch = batch_for(layout, equal=False)
    share = "auto" if layout == "shared" else False
    prefix = {"rows": "plan_", "shared": "response_plan_", "tree": "tree_plan_", "packed": "packed_plan_"}[layout]
    plain = {k: v for k, v in batch.items() if not k.startswith(prefix)}
    assert batch_layout(plain, model, share) == batch_layout(batch, model, share) == layout
    grads = []
    for b in (batch, plain):
        model.zero_grad()
        logps, counts = pair_batch_logps(model, b, share)
        logps.sum().backward()
        tokens, rows = pair_batch_logps(model, b, share, per_token=True)
        grads.append((logps, counts, tokens, rows, [p.grad.clone() for p in model.parameters()]))
    (a_l, a_c, a_t, a_r, a_g), (b_l, b_c, b_t, b_r, b_g) = grads
    assert torch.equal(a_l, b_l) and torch.equal(a_c, b_c) and a_c.dtype == b_c.dtype
    assert torch.equal(a_t, b_t) and torch.equal(a_r, b_r)
    assert all(torch.equal(x, y) for x, y in zip(a_g, b_g))


def test_no_mask_for_unpadded_rows_gives_the_same_numbers():
    """The collator's "no padding" lets the step pass no attention mask: the numbers of the all-ones mask."""
    model = tiny_model(layers=2)
    batch = batch_for("shared")
    assert batch["shared_padded"].value == (False, False)
    masked = {**batch, "shared_padded": type(batch["shared_padded"])((True, True))}
    assert torch.equal(pair_batch_logps(model, batch, "auto")[0], pair_batch_logps(model, masked, "auto")[0])


def rmipo_module(source: str, context: str):
    """A module training RMiPO with its marginal live: `source` "policy" (the policy in eval mode) or
    "reference" (the frozen copy, no cached table), on shared-prompt batches with the marginal rows."""
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), RMiPOLoss(marginal=source, marginal_context=context))
    module._logs_this_step = lambda: False
    module.frozen._share = "auto"
    batch = PairCollator(PAD, LayoutChoice(share_prompt="auto"), MarginalRows([BOS], context))(items(True))
    assert module.frozen.source("marginal") == ("policy" if source == "policy" else "copy")
    assert batch_layout(batch, module.policy, "auto") == "shared"
    return module, batch


@pytest.mark.parametrize("context", ["none", "start_token"])
@pytest.mark.parametrize("source", ["policy", "reference"])
def test_rmipo_live_marginal_step_never_syncs(source, context):
    """The live marginal pass scores its rows with the collator's plan: only transformers' mask builder
    reads one flag back (the marginal rows keep their attention mask, as the padded rows do)."""
    module, batch = rmipo_module(source, context)
    step(module, batch)  # probes and checks, once a run
    with NoSync((TRANSFORMERS_MASKS,)) as guard, mock.patch.object(torch.Tensor, "tolist", no_tolist):
        loss = step(module, batch)
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.policy.parameters())
    assert guard.allowed == ["aten::_local_scalar_dense"]  # the marginal pass's mask, read by transformers


@pytest.mark.parametrize("context", ["none", "start_token"])
def test_rmipo_marginal_without_its_plan_syncs(context):
    """Without `marginal_plan_*` the marginal rows are scored through boolean masks: the stand-in sees it."""
    module, batch = rmipo_module("policy", context)
    step(module, batch)
    plain = {k: v for k, v in batch.items() if not k.startswith("marginal_plan_")}
    with pytest.raises(HostSync, match="nonzero|index"), NoSync((TRANSFORMERS_MASKS,)):
        step(module, plain)


@pytest.mark.parametrize("context", ["none", "start_token"])
def test_marginal_plan_gives_the_same_numbers_bit_for_bit(context):
    """Marginal rows through their plan and through the mask path: equal sums, counts, per-token log-probs
    and gradients (one-token rejected responses: none scored under "none"), and the same RMiPO loss."""
    model = tiny_model(layers=2)
    batch = PairCollator(PAD, LayoutChoice(share_prompt=False), MarginalRows([BOS], context))(items(False))
    rows = (batch["marginal_input_ids"], batch["marginal_attention_mask"], batch["marginal_score_mask"])
    plan = batch_plan(batch, "marginal_")
    assert plan is not None and plan.count.tolist() == (
        [1, 3, 5, 0, 0, 0] if context == "none" else [2, 4, 6, 1, 1, 1])
    got = []
    for p in (plan, None):
        model.zero_grad()
        logps, counts = response_logps(model, *rows, plan=p)
        logps.sum().backward()
        tokens, at = response_logps(model, *rows, per_token=True, plan=p)
        got.append((logps, counts, tokens, at, [q.grad.clone() for q in model.parameters()]))
    (a_l, a_c, a_t, a_r, a_g), (b_l, b_c, b_t, b_r, b_g) = got
    assert torch.equal(a_l, b_l) and torch.equal(a_c, b_c) and a_c.dtype == b_c.dtype
    assert torch.equal(a_t, b_t) and torch.equal(a_r, b_r)
    assert all(torch.equal(x, y) for x, y in zip(a_g, b_g))
    losses = []
    for b in (batch, {k: v for k, v in batch.items() if not k.startswith("marginal_plan_")}):
        torch.manual_seed(0)
        module = PreferenceModule(tiny_model(), RMiPOLoss(marginal_context=context))
        module._logs_this_step = lambda: False
        losses.append(module.training_step(b, 0).detach())
    assert torch.equal(losses[0], losses[1])


def test_deferred_finite_check_reads_the_device_every_n_steps():
    """check_finite_every_n_steps=N: the loss and gradient checks only AND a device flag, read on every
    N-th optimizer step; a NaN in between is named by its step range."""
    from prefopt.errors import TrainingDiverged

    guard = FiniteGuard(every_n_steps=3)
    module = torch.nn.Linear(2, 1)
    module.weight.grad, module.bias.grad = torch.ones(1, 2), torch.ones(1)
    trainer = type("T", (), {"global_step": 0})()
    with NoSync():  # steps 1 and 2: nothing read back
        for trainer.global_step in (0, 1):
            guard.on_before_backward(trainer, module, torch.tensor(1.0))
            guard.on_before_optimizer_step(trainer, module, None)
    trainer.global_step = 2
    guard.on_before_backward(trainer, module, torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"steps 1-3 .*check_finite_every_n_steps=3"):
        guard.on_before_optimizer_step(trainer, module, None)
    with pytest.raises(ValueError, match="check_finite_every_n_steps"):
        FiniteGuard(every_n_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["shared", "tree"])
def test_cuda_step_has_no_sync(layout):
    """On a GPU: forward, backward and a fused AdamW step with `set_sync_debug_mode("error")`. The layouts
    that transformers reads nothing of (padded and packed rows: its mask builder reads one flag a pass)."""
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), DPOLoss(beta=0.1)).cuda()
    module._logs_this_step = lambda: False
    share = "auto" if layout == "shared" else False
    module.frozen._share = share
    batch = {k: v.to("cuda") for k, v in batch_for(layout).items()}
    assert batch_layout(batch, module.policy, share) == layout
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=1e-3, fused=True, capturable=True)
    step(module, batch)  # first step: probes and lazy initialisation may read the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(module, batch)
        optimizer.step()
        optimizer.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode("default")
