"""Checks that need a CUDA GPU, skipped without one (CI has none; `bash scripts/gpu_device_check.sh` runs
them on a GPU machine, with the GPU benchmark and `scripts/gpu_check.sh`).

On the GPU, in CUDA's own kernels (sdpa's memory-efficient and math paths, fused AdamW, bf16 autocast):
the prompt-once packed rows (`data.pack`) and the per-sequence packed rows score the same log-probs,
token counts and gradients as padded rows for Llama, Mistral, Qwen2, Phi-3 and GPT-2; under bf16
autocast the packed rows are no further from float32 than the padded rows are; and
conf/trainer/gpu.yaml as a user gets it (bf16-mixed, clipping 1.0, fused AdamW) trains three steps on
padded and on packed rows, clipping where the norm exceeds 1.0.
"""

import pytest
import torch

from helpers import PAIRS, VARIABLE, assert_same_gradients, collated, family_model
from prefopt.scoring.packed import packing_problem
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.tree import tree_problem, trees_batch
from test_gpu_configs import check_trained, composed, train_three_steps
from test_tree_logps import collate, packed_only, padded

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAMILIES_ON_GPU = ["llama", "mistral", "qwen2", "phi3", "gpt2"]


def on_gpu(batch):
    return {k: v.cuda() for k, v in batch.items()}


@pytest.mark.parametrize("name", FAMILIES_ON_GPU)
def test_packed_layouts_equal_padded_rows_on_the_gpu(name):
    model = family_model(name).cuda()
    assert tree_problem(model) is None and packing_problem(model) is None
    b = on_gpu(collate(VARIABLE))
    assert trees_batch(b, model)
    rows, n_rows = pair_batch_logps(model, padded(b), share_prompt=False)
    packed, n_packed = pair_batch_logps(model, packed_only(b), share_prompt=False)
    tree, n_tree = pair_batch_logps(model, b, share_prompt=False)
    assert n_tree.tolist() == n_packed.tolist() == n_rows.tolist() == [3, 5, 1, 7, 2, 3, 4, 2]
    torch.testing.assert_close(packed, rows, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tree, rows, rtol=1e-4, atol=1e-4)
    assert_same_gradients(model, rows, tree, rtol=1e-3, atol=1e-4)


def test_under_bf16_autocast_packed_rows_are_as_close_to_float32_as_padded_rows():
    model = family_model("llama").cuda()
    b = on_gpu(collate(VARIABLE))
    with torch.no_grad():
        exact, _ = pair_batch_logps(model, padded(b), share_prompt=False)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        rows, _ = pair_batch_logps(model, padded(b), share_prompt=False)
        tree, _ = pair_batch_logps(model, b, share_prompt=False)
    rows_error = float((rows.float() - exact).abs().max())
    tree_error = float((tree.float() - exact).abs().max())
    print(f"bf16 autocast, max |error| against float32: padded rows {rows_error:.4f}, tree rows {tree_error:.4f}")
    assert 0 < rows_error and tree_error <= 3 * rows_error + 1e-3


@pytest.mark.parametrize("pack", [False, True])
def test_the_gpu_trainer_config_trains_on_the_gpu(pack, tmp_path):
    cfg = composed("gpu", "trainer.devices=1", "trainer.max_steps=3", f"data.pack={str(pack).lower()}")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    batch = collate(PAIRS) if pack else collated(PAIRS)
    trainer, module, before, after, moved = train_three_steps(cfg, tmp_path, batch=batch)
    assert trainer.strategy.root_device.type == "cuda"  # (Lightning moves the module back to the CPU after fit)
    check_trained(trainer, module, before, after, moved, precision="bf16-mixed", fused=True,
                  clip=cfg.trainer.gradient_clip_val)
