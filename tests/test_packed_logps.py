"""Padding-free packing (`data.pack`): the collator's packed layout on a hand-made batch, its padded
share, and the packed pass (prefopt.scoring.packed.packed_logps) against padded rows on variable-length
pairs of tiny Llama, Mistral (a sliding window shorter than the sequences included), Qwen2, Gemma 2,
Phi-3 and GPT-2 models: equal summed log-probs, token counts, per-token order and gradients; models
that cannot pack fall back to padded rows with one warning; training with the packed layout runs on it."""

import lightning as L
import pytest
import torch
import transformers
from torch.utils.data import DataLoader

from helpers import BOS, EOS, FAMILIES, PAD, PAIRS, VARIABLE, VOCAB, assert_same_gradients, family_model, tiny_model, optim
from prefopt.data.collate import PairCollator
from prefopt.scoring.layout import LayoutChoice
from prefopt.scoring.marginal import MarginalRows
from prefopt.scoring.packed import packed_layout, row_length
from prefopt.scoring.layout import token_counts
from prefopt.scoring import packed as logps_file
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.packed import packing_problem

def collate(pairs, pack=True, tree=False):
    """The collated batch; with `pack`, its packed layout (the prompt-once tree rows only with `tree`:
    tests/test_tree_logps.py tests those)."""
    items = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]
    batch = PairCollator(pad_id=PAD, layout=LayoutChoice(pack=pack), marginal=MarginalRows([BOS]))(items)
    return batch if tree else {k: v for k, v in batch.items() if not k.startswith("tree_")}


def padded(batch):
    return {k: v for k, v in batch.items() if not k.startswith(("packed_", "tree_"))}


# ---------------------------------------------------------------- the layout


PACKABLE = [  # full rows of 3 (chosen 0), 6 (chosen 1), 5 (rejected 0) and 3 tokens (rejected 1)
    {"prompt_ids": [5], "chosen_ids": [7, 2], "rejected_ids": [9, 9, 9, 2], "index": 0},
    {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9, 2], "rejected_ids": [2], "index": 1},
]


def test_packed_layout_by_hand():
    b = PairCollator(pad_id=PAD, layout=LayoutChoice(pack=True), marginal=MarginalRows([BOS]))(PACKABLE)
    # rows of 6 (the longest sequence: 1/18 padding is within 10%), longest first, each sequence into
    # the first row it fits: [chosen 1], [rejected 0 + 1 padding], [chosen 0, rejected 1]
    assert b["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9, 2], [5, 9, 9, 9, 2, PAD], [5, 7, 2, 5, 6, 2]]
    assert b["packed_position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]
    assert b["packed_segment"].tolist() == [[1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, -1], [0, 0, 0, 3, 3, 3]]
    assert b["packed_score_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 1]]
    # the padded layouts are unchanged, and absent the option there is no packed layout
    plain = PairCollator(pad_id=PAD, marginal=MarginalRows([BOS]))(PACKABLE)
    assert plain.keys() == padded(b).keys()
    assert all(torch.equal(plain[k], b[k]) if isinstance(b[k], torch.Tensor) else plain[k] == b[k] for k in plain)
    assert not any(k.startswith("packed_") for k in plain)


def test_row_length_grows_until_the_padding_is_small_enough():
    assert row_length([3, 6, 5, 3]) == 6  # 3 rows, 18 tokens for 17: 5.6%
    # at most 5%: no row length from 6 to 16 packs the 17 tokens with one padding token or none
    assert row_length([3, 6, 5, 3], max_padding=0.05) == 17
    # 9 tokens: rows of 3 -> [3] [2] [2] [2], 3/12; of 4 -> [3] [2 2] [2], 3/12; of 5 -> [3 2] [2 2], 1/10
    assert row_length([3, 2, 2, 2]) == 5
def test_one_row_when_the_capacity_holds_every_sequence():
    b = packed_layout([[5], [5, 6]], [[7, 2], [2]], PAD, capacity=8)
    assert b["packed_input_ids"].tolist() == [[5, 7, 2, 5, 6, 2, PAD, PAD]]
    assert b["packed_position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert b["packed_segment"].tolist() == [[0, 0, 0, 1, 1, 1, -1, -1]]


def test_padded_share_of_the_packed_layout_by_hand():
    b = PairCollator(pad_id=PAD, layout=LayoutChoice(pack=True), marginal=MarginalRows([BOS]))(PACKABLE)
    # full rows: 4 x 6 = 24 processed for 3 + 6 + 5 + 3 = 17 real, 7/24 = 29% padding
    assert token_counts(b, shared=False) == (17, 24)
    # shared prompt: prompts 2 x 2 + responses 4 x 4 = 20 processed for 3 + 11 real, 30%
    assert token_counts(b, shared=True) == (14, 20)
    # packed: 3 rows x 6 = 18 processed for the same 17 real tokens, 1/18 = 5.6%
    assert token_counts(b, shared=False, packed=True) == (17, 18)


# ---------------------------------------------------------------- packed against padded rows


CASES = [(name, "sdpa") for name in FAMILIES if name != "gemma2"] + [
    (name, "eager") for name in ("llama", "mistral-window3", "gemma2", "gpt2")]  # Gemma 2: eager only


@pytest.mark.parametrize(("name", "attention"), CASES)
def test_packed_equals_padded_rows_values_counts_order_and_gradients(name, attention):
    model = family_model(name, attention)
    b = collate(VARIABLE)
    assert packing_problem(model) is None
    rows, n_rows = pair_batch_logps(model, padded(b), share_prompt=False)
    packed, n_packed = pair_batch_logps(model, b, share_prompt=False)
    torch.testing.assert_close(packed, rows, rtol=1e-5, atol=1e-5)
    assert n_packed.tolist() == n_rows.tolist() == [3, 5, 1, 7, 2, 3, 4, 2]
    assert n_packed.dtype == n_rows.dtype
    token_rows, row_of = pair_batch_logps(model, padded(b), share_prompt=False, per_token=True)
    token_packed, seg_of = pair_batch_logps(model, b, share_prompt=False, per_token=True)
    torch.testing.assert_close(token_packed, token_rows, rtol=1e-5, atol=1e-5)
    assert seg_of.tolist() == row_of.tolist()
    assert_same_gradients(model, rows, packed)


@pytest.mark.parametrize("name", ["llama", "mistral-window3"])
def test_one_packed_row_of_every_sequence_scores_the_same(name):
    model = family_model(name)
    b = collate(VARIABLE)
    prompts = [p for p, _, _ in VARIABLE] * 2
    responses = [c for _, c, _ in VARIABLE] + [r for _, _, r in VARIABLE]
    total = int(b["attention_mask"].sum())
    one_row = {**b, **packed_layout(prompts, responses, PAD, capacity=total)}
    assert one_row["packed_input_ids"].shape == (1, total)
    rows, _ = pair_batch_logps(model, padded(b), share_prompt=False, per_token=True)
    packed, _ = pair_batch_logps(model, one_row, share_prompt=False, per_token=True)
    torch.testing.assert_close(packed, rows, rtol=1e-5, atol=1e-5)


def test_packed_wins_over_the_shared_prompt_layout():
    """A batch with both layouts runs packed whatever `share_prompt` says (same numbers)."""
    model = family_model("llama")
    b = collate([([BOS] + [5] * 20, [8, 9, EOS], [10, EOS]), ([BOS, 7], [11, EOS], [12, 13, 14, EOS])])
    calls = []
    real = logps_file.packed_logps
    logps_file.packed_logps = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        packed, _ = pair_batch_logps(model, b, share_prompt=True)
    finally:
        logps_file.packed_logps = real
    shared, _ = pair_batch_logps(model, padded(b), share_prompt=True)
    assert calls == [1]
    torch.testing.assert_close(packed, shared, rtol=1e-5, atol=1e-5)


def test_an_empty_prompt_scores_the_same_tokens_as_padded_rows():
    """A sequence's first token has nothing before it: never scored, in a padded row (column 0) or packed
    (the state before it is the previous sequence's last)."""
    model = family_model("llama")
    b = collate([([], [8, 9, EOS], [10, EOS]), ([BOS, 7], [11, EOS], [12, EOS])])
    rows, n_rows = pair_batch_logps(model, padded(b), share_prompt=False)
    packed, n_packed = pair_batch_logps(model, b, share_prompt=False)
    assert n_packed.tolist() == n_rows.tolist() == [2, 2, 1, 2]
    torch.testing.assert_close(packed, rows, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- models that cannot pack


def test_attention_that_ignores_the_boundaries_falls_back_to_padded_rows(monkeypatch, capsys):
    """Masks that ignore the position restarts (here: transformers' packed-sequence detection switched
    off) would let each sequence see the ones before it: the probe says so once, and rows are scored."""
    import transformers.masking_utils as masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    model = family_model("llama")
    b = collate(VARIABLE)
    problem = packing_problem(model)
    assert problem.startswith("a packed sequence's state depends on the one before it (max difference")
    assert problem.endswith("attention sdpa)")
    rows, _ = pair_batch_logps(model, padded(b), share_prompt=False)
    for _ in range(2):
        fallback, _ = pair_batch_logps(model, b, share_prompt=False)
        assert torch.equal(fallback, rows)
    err = capsys.readouterr().err
    assert err.count("data.pack: LlamaForCausalLM cannot score packed sequences") == 1
    assert "scoring padded rows" in err


def test_a_body_without_position_ids_cannot_pack():
    """ALiBi models (Bloom) place tokens by index alone: a packed row would misplace every sequence."""
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=4)
    model = transformers.BloomForCausalLM(config).eval()
    assert packing_problem(model) == "BloomModel.forward takes no position_ids"
    b = collate(PAIRS)
    torch.testing.assert_close(pair_batch_logps(model, b, share_prompt=False)[0],
                               pair_batch_logps(model, padded(b), share_prompt=False)[0], rtol=0, atol=0)


# ---------------------------------------------------------------- training on the packed layout


@pytest.mark.parametrize("layout", ["packed", "tree"])
def test_training_steps_on_the_packed_layouts_change_the_policy(layout, monkeypatch):
    """Three DPO steps on each packed layout: sequences apart (packed_logps) and prompt-once (tree_logps)."""
    from prefopt.losses import DPOLoss
    from prefopt.scoring import tree as tree_file
    from prefopt.train.module import PreferenceModule

    owner, name = (logps_file, "packed_logps") if layout == "packed" else (tree_file, "tree_logps")
    calls = []
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), DPOLoss(beta=0.1), **optim(lr=1e-2, warmup_ratio=0.0))
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    batches = [collate(VARIABLE, tree=layout == "tree")] * 3
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(not torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())
    assert any(m is module.policy for m in calls)  # the policy's pass ran on that layout (the reference's too)


def test_the_data_module_wires_the_option():
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    tok = build_bpe_tokenizer(["one two three four"] * 20, vocab_size=300)
    rows = [{"prompt": "one two" * (1 + i % 3), "chosen": " three" * (1 + i % 4), "rejected": " four"} for i in range(8)]
    args = dict(max_length=32, max_prompt_length=16, batch_size=4, eval_batch_size=4, seed=0)
    packed = next(iter(PreferenceDataModule(rows, [], tok, layout=LayoutChoice(pack=True), **args).train_dataloader()))
    plain = next(iter(PreferenceDataModule(rows, [], tok, **args).train_dataloader()))
    assert not any(k.startswith("packed_") for k in plain)
    real, processed = token_counts(packed, shared=False, packed=True)
    assert real == int(plain["attention_mask"].sum()) and real <= processed <= plain["input_ids"].numel()
