"""Prompt-once attention through FlexAttention and a block mask (prefopt.scoring.flex).

Fast: the mask_mod worked by hand for a 2-pair batch (which (query, key) pairs may attend, shared-prompt
rows and tree rows), the per-token tensors derived from the shared-prompt rows, and the
`model.attn_implementation` setting (flex, a bad value). Slow (FlexAttention compiles on first use, about
25 s on a CPU): the flex pass through transformers' attention interface against the padded rows, the
sdpa shared-prompt pass and the sdpa tree pass, fp32 to 1e-5, on the tiny Llama and tiny Mistrals (sliding
window off and on). FlexAttention has no backward on the CPU (torch 2.13), so the gradient test swaps the
compiled kernel for FlexAttention's own unfused reference (same mask_mod, same BlockMask, dense scores,
with autograd); the fused kernel's gradients are measured on CUDA only (scripts/gpu_device_check.sh).
"""

import pytest
import torch

from helpers import BOS, EOS, PAD, VARIABLE, assert_same_gradients, family_model
from prefopt.data.collate import PairCollator
from prefopt.scoring.flex import (FLEX, flex_problem, prompt_once_block_mask, prompt_once_mask_mod, shared_rows,
                                  uses_flex)
from prefopt.scoring.layout import LayoutChoice, batch_layout, pair_batch_logps
from prefopt.scoring.marginal import MarginalRows
from prefopt.scoring.shared import shared_prompt_logps
from prefopt.scoring.tree import tree_layout, tree_logps


def collate(pairs, pack=False):
    items = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]
    return PairCollator(pad_id=PAD, layout=LayoutChoice(pack=pack), marginal=MarginalRows([BOS]))(items)


def allowed(rows, window=None):
    """The (C, C) 0/1 matrices of the mask_mod, one per row, evaluated at every (query, key)."""
    from torch.nn.attention.flex_attention import create_mask

    mod = prompt_once_mask_mod(rows["pair"], rows["branch"], rows["position_ids"], window)
    n, width = rows["pair"].shape
    return create_mask(mod, n, 1, width, width, device="cpu")[:, 0].int().tolist()


# pair 0: prompt a (1 token), chosen c1 c2, rejected r1; pair 1: prompt a b, chosen c1, rejected r1 r2
TWO_PAIRS = [([BOS], [7, EOS], [8]), ([BOS, 5], [EOS], [9, EOS])]


def test_shared_rows_by_hand():
    """P = 2, R = 2: each pair's row is [prompt (2), chosen (2), rejected (2)]."""
    rows = shared_rows(collate(TWO_PAIRS))
    assert rows["input_ids"].tolist() == [[BOS, PAD, 7, EOS, 8, PAD], [BOS, 5, EOS, PAD, 9, EOS]]
    assert rows["pair"].tolist() == [[0, -1, 0, 0, 0, -1], [1, 1, 1, -1, 1, 1]]
    assert rows["branch"].tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]]
    # both responses continue the prompt's real length (pair 0: 1, pair 1: 2)
    assert rows["position_ids"].tolist() == [[0, 1, 1, 2, 1, 2], [0, 1, 2, 3, 2, 3]]
    # the predicting column of each response token, rows: chosen 0, chosen 1, rejected 0, rejected 1
    assert rows["source"].tolist() == [[0, 2], [1, 2], [0, 4], [1, 4]]


def test_mask_mod_by_hand_shared_rows():
    rows = shared_rows(collate(TWO_PAIRS))
    assert allowed(rows) == [
        [  # keys: a  pad c1 c2 r1 pad      (pair 0)
            [1, 0, 0, 0, 0, 0],  # a
            [0, 0, 0, 0, 0, 0],  # padding sees nothing
            [1, 0, 1, 0, 0, 0],  # c1: the prompt and itself
            [1, 0, 1, 1, 0, 0],  # c2
            [1, 0, 0, 0, 1, 0],  # r1: the prompt and itself, not the chosen response
            [0, 0, 0, 0, 0, 0],
        ],
        [  # keys: a  b  c1 pad r1 r2       (pair 1)
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 1, 1],
        ],
    ]
    # a 2-position window: c2 of pair 0 (position 2) no longer sees the prompt (position 0)
    assert allowed(rows, window=2)[0][3] == [0, 0, 1, 1, 0, 0]


def test_mask_mod_by_hand_tree_rows():
    """Both pairs in one tree row: no query sees the other pair."""
    b = tree_layout(*map(list, zip(*TWO_PAIRS)), PAD, capacity=12)
    rows = {"pair": b["tree_pair"], "branch": b["tree_branch"], "position_ids": b["tree_position_ids"]}
    assert allowed(rows)[0] == [
        # a  c1 c2 r1 | a  b  c1 r1 r2 | pad pad pad
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0],
        [0] * 12, [0] * 12, [0] * 12,
    ]


def test_block_mask_skips_the_blocks_no_query_sees():
    """Four pairs in one tree row of 4 · 16 tokens, blocks of 16: only the diagonal blocks are visited."""
    pairs = [[BOS] + [5] * 7 for _ in range(4)], [[6] * 4] * 4, [[7] * 4] * 4
    b = tree_layout(*pairs, PAD, capacity=64)
    mask = prompt_once_block_mask(b["tree_pair"], b["tree_branch"], b["tree_position_ids"], block_size=16)
    visited = mask.to_dense()[0, 0].int().tolist()
    assert visited == [[int(q == k) for k in range(4)] for q in range(4)]


def test_the_layout_is_taken_only_on_flex_attention():
    b = collate(VARIABLE)
    model = family_model("llama")
    assert not uses_flex(model) and not FLEX.scores(b, model)
    assert batch_layout(b, model, share_prompt=True) == "shared"  # today's path unchanged on sdpa


def test_attn_implementation_setting():
    from prefopt.errors import ConfigError
    from prefopt.models.load import attention_implementation

    assert attention_implementation(None) is None and attention_implementation("sdpa") == "sdpa"
    assert attention_implementation("flex") == "flex_attention"
    with pytest.raises(ConfigError, match=r"^model.attn_implementation=sdap: one of .*flex") as err:
        attention_implementation("sdap")
    assert "\n" not in str(err.value)
    from prefopt.config.schema import ModelSchema, accepts, spec_of

    spec = spec_of(ModelSchema, "attn_implementation")
    assert [accepts(spec, v) for v in (None, "auto", "sdpa", "flex", "flex_attention", "kernels-community/x")] == [True] * 6
    assert not accepts(spec, "sdap") and not accepts(spec, 3)


def flex_model(name):
    model = family_model(name)
    model.set_attn_implementation("flex_attention")
    return model


FLEX_CASES = ["llama", "mistral", "mistral-window3"]


@pytest.fixture
def static_shapes():
    """Each new row width compiled for its own shape: torch 2.13's CPU FlexAttention kernel fails to
    build with dynamic shapes (the C++ it generates does not compile), the CPU only."""
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", FLEX_CASES)
@torch.no_grad()
def test_flex_equals_padded_rows_and_the_sdpa_prompt_once_passes(name, static_shapes):
    """Through transformers' flex attention (compiled FlexAttention on the CPU): per-token and summed
    log-probs equal to the padded rows, the sdpa shared-prompt pass and the sdpa tree pass."""
    b = collate(VARIABLE, pack=True)
    shared_only = {k: v for k, v in b.items() if not k.startswith(("packed_", "tree_"))}
    sdpa = family_model(name)
    rows, n_rows = pair_batch_logps(sdpa, shared_only, share_prompt=False)
    token_rows, row_of = pair_batch_logps(sdpa, shared_only, share_prompt=False, per_token=True)
    model = flex_model(name)
    assert flex_problem(model) is None
    assert batch_layout(b, model) == batch_layout(shared_only, model) == "flex"
    for batch in (shared_only, b):  # from the shared-prompt rows, then from the tree rows
        flex, n_flex = pair_batch_logps(model, batch)
        torch.testing.assert_close(flex, rows, rtol=1e-5, atol=1e-5)
        assert n_flex.tolist() == n_rows.tolist()
        token_flex, flex_of = pair_batch_logps(model, batch, per_token=True)
        torch.testing.assert_close(token_flex, token_rows, rtol=1e-5, atol=1e-5)
        assert flex_of.tolist() == row_of.tolist()
    if name != "mistral-window3":  # the sdpa prompt-once passes place no window shorter than a branch
        shared, _ = shared_prompt_logps(sdpa, *(b[k] for k in (
            "prompt_ids", "prompt_attention_mask", "response_ids", "response_attention_mask")))
        torch.testing.assert_close(shared, flex, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tree_logps(sdpa, b, n_rows=8)[0], flex, rtol=1e-5, atol=1e-5)


@pytest.fixture
def reference_flex(monkeypatch):
    """transformers' flex attention through FlexAttention's unfused reference (dense scores, autograd),
    the CPU stand-in for the fused kernel's backward, which torch 2.13 runs on CUDA only."""
    import torch.nn.attention.flex_attention as flex_module
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_module.flex_attention(q, k, v, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("name", FLEX_CASES)
def test_flex_gradients_equal_the_padded_rows(name, reference_flex):
    b = collate(VARIABLE, pack=True)
    shared_only = {k: v for k, v in b.items() if not k.startswith(("packed_", "tree_"))}
    model = family_model(name)
    for batch in (shared_only, b):  # from the shared-prompt rows, then from the tree rows
        model.set_attn_implementation("sdpa")
        rows, _ = pair_batch_logps(model, shared_only, share_prompt=False)  # the padded rows
        model.set_attn_implementation("flex_attention")  # the same weights; the graph of `rows` stays sdpa's
        flex, _ = FLEX.logps(model, batch)
        torch.testing.assert_close(flex, rows, rtol=1e-5, atol=1e-5)
        assert_same_gradients(model, rows, flex)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's fused backward: CUDA only")


def cuda_copy(model, dtype):
    import copy

    return copy.deepcopy(model).to(device="cuda", dtype=dtype)


@CUDA
@pytest.mark.parametrize("name", FLEX_CASES)
def test_cuda_flex_kernel_values_and_gradients(name):
    """The fused kernel, forward and backward: fp32 equal to the padded rows (sdpa), gradients too; in
    bf16, as close to the fp32 padded rows as the bf16 padded rows are (per token, within 2x + 1 ulp)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    b = {k: v.cuda() for k, v in collate(VARIABLE, pack=True).items()}
    shared_only = {k: v for k, v in b.items() if not k.startswith(("packed_", "tree_"))}
    model = cuda_copy(family_model(name), torch.float32)
    for batch in (shared_only, b):
        model.set_attn_implementation("sdpa")
        rows, _ = pair_batch_logps(model, shared_only, share_prompt=False)
        model.set_attn_implementation("flex_attention")
        flex, _ = FLEX.logps(model, batch)
        torch.testing.assert_close(flex, rows, rtol=1e-5, atol=1e-5)
        assert_same_gradients(model, rows, flex)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        exact, _ = pair_batch_logps(model, shared_only, share_prompt=False, per_token=True)
        half = cuda_copy(model, torch.bfloat16)
        rows16, _ = pair_batch_logps(half, shared_only, share_prompt=False, per_token=True)
        half.set_attn_implementation("flex_attention")
        flex16, _ = FLEX.logps(half, b, per_token=True)
    gap_rows, gap_flex = (rows16.float() - exact).abs().max(), (flex16.float() - exact).abs().max()
    assert gap_flex <= 2 * gap_rows + torch.finfo(torch.bfloat16).eps * (1 + exact.abs().max()), (gap_flex, gap_rows)
