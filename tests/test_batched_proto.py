"""The batched-runs prototype (benchmarks/batched_sweep.py, issue 30 item 1): R tiny Llamas in one
(R, P) buffer give each HF model's own logits; the batched AdamW (per-run lr, warmup + cosine, decay on
matrices only, per-run clipping) gives torch.optim.AdamW's weights per run; a batched DPO run equals the
same run trained alone, and the per-run DPO loss has its hand-worked values."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from batched_sweep import (  # noqa: E402
    BatchedAdamW, BatchedLlama, FlatParams, batched_trainer, dpo_losses, schedule_for, separate_trainer,
)
from prefopt.models.load import build_tiny  # noqa: E402
from prefopt.tasks.sort import build_sort_tokenizer  # noqa: E402
from prefopt.train.optim import warmup_cosine_schedule  # noqa: E402

# the gradient views carry the (R, P) buffer's row stride; autograd warns, then accumulates in place
pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")


def tiny_models(n: int, kv_heads: int | None = None):
    tok = build_sort_tokenizer()
    return [build_tiny(tok, hidden_size=32, intermediate_size=64, seed=s, num_key_value_heads=kv_heads)
            for s in range(n)]


def right_padded(rows: int = 4, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 15, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[3, 5:] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_batched_logits_equal_each_hf_model(kv_heads):
    models = tiny_models(3, kv_heads)
    batched = BatchedLlama(models[0].config, 3)
    batched.params.load([m.state_dict() for m in models])
    ids, mask = right_padded()
    logits = batched.logits(ids)
    for r, model in enumerate(models):
        expected = model(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()  # padding positions are never scored (right padding, causal attention)
        torch.testing.assert_close(logits[r][real], expected[real], atol=1e-5, rtol=0)
    assert not torch.allclose(logits[0], logits[1])  # the runs really are different models


def test_batched_adamw_equals_torch_adamw_per_run():
    torch.manual_seed(0)
    lrs, wd, steps = [1e-3, 3e-3, 1e-2], 0.1, 6
    params = FlatParams({"w": (4, 3), "b": (3,)}, runs=3)
    with torch.no_grad():
        params.data.normal_()
    singles = [[torch.nn.Parameter(params.views[n][r].detach().clone()) for n in ("w", "b")] for r in range(3)]
    opts = [torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95),
                              weight_decay=wd) for (w, b), lr in zip(singles, lrs)]
    scheds = [warmup_cosine_schedule(o, total_steps=10, warmup_ratio=0.2) for o in opts]
    batched = BatchedAdamW(params, torch.tensor(lrs), weight_decay=wd, schedule=schedule_for(10, 0.2))
    before = params.data.clone()
    for step in range(steps):
        grads = torch.randn_like(params.grad)
        params.grad.copy_(grads)
        batched.step()
        for r, ((w, b), opt, sched) in enumerate(zip(singles, opts, scheds)):
            w.grad, b.grad = params.views["w"].grad[r].clone(), params.views["b"].grad[r].clone()
            opt.step()
            sched.step()
        if step == 0:  # Adam's first step is lr·schedule(0)·sign(g) (+ decay): 1/2 of each run's lr here
            moved = (before - params.data)[:, 12:]  # the biases: no decay
            expected = 0.5 * torch.tensor(lrs)[:, None] * grads[:, 12:].sign()
            torch.testing.assert_close(moved, expected, atol=1e-6, rtol=1e-4)
    for r, (w, b) in enumerate(singles):
        torch.testing.assert_close(params.views["w"][r].detach(), w.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(params.views["b"][r].detach(), b.detach(), atol=1e-6, rtol=0)


def test_per_run_clipping_equals_clip_grad_norm():
    params = FlatParams({"w": (2, 2), "b": (2,)}, runs=2)
    params.grad.copy_(torch.tensor([[3.0, 0, 0, 4, 0, 0], [0.3, 0, 0, 0.4, 0, 0]]))
    norms = BatchedAdamW(params, torch.ones(2)).clip_(torch.tensor([1.0, 1.0]))
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    # run 0 (norm 5) scaled to norm 1; run 1 (norm 0.5) left as it is
    assert params.grad[0, :4].tolist() == pytest.approx([0.6, 0, 0, 0.8], abs=1e-6)
    assert params.grad[1, :4].tolist() == pytest.approx([0.3, 0, 0, 0.4])


def test_dpo_losses_per_run_beta_hand_worked():
    # pairs: row 0 chosen, row 1 rejected; margin h = (-1 - -2) - (-3 - -2) = 2
    logps, ref = torch.tensor([[-1.0, -3.0], [-1.0, -3.0]]), torch.tensor([-2.0, -2.0])
    losses = dpo_losses(logps, ref, torch.tensor([0.5, 0.0]))
    assert losses[0].item() == pytest.approx(math.log1p(math.exp(-1.0)))  # -log σ(0.5 · 2)
    assert losses[1].item() == pytest.approx(math.log(2))  # β 0: -log σ(0)


def test_batched_run_equals_the_same_run_alone():
    """Three runs (β, lr differ) batched for 3 DPO steps: each slice = that run trained by itself."""
    start = tiny_models(1)[0]
    ids, mask = right_padded(rows=4, length=10, seed=1)
    score = mask.clone()
    score[:, :4] = 0  # a 4-token prompt, the rest response
    batch = {"input_ids": ids, "attention_mask": mask, "score_mask": score}
    with torch.no_grad():
        ref = torch.randn(4) - 20.0
    betas, lrs = [0.1, 1.0, 3.0], [1e-3, 3e-3, 1e-2]
    model, step = batched_trainer(start.state_dict(), start.config, betas, lrs, total_steps=10, clip=0.5)
    alone = [separate_trainer(start, b, lr, total_steps=10, clip=0.5) for b, lr in zip(betas, lrs)]
    for _ in range(3):
        step(batch, ref)
        for _, step_k in alone:
            step_k(batch, ref)
    # Adam divides by sqrt(v): a gradient of ~0 turns float rounding into ~1e-6; the steps moved weights ~1e-2
    for k, (single, _) in enumerate(alone):
        for name, weights in single.state_dict().items():
            if name in model.params.views:
                torch.testing.assert_close(model.params.views[name][k].detach(), weights, atol=1e-5, rtol=0)
    assert not torch.allclose(model.params.views["model.norm.weight"][0], model.params.views["model.norm.weight"][2])
