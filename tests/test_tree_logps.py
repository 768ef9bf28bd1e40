"""Prompt-once packed rows (`data.pack`, prefopt.scoring.tree): the collator's tree layout by hand, its
attention mask by hand, and the tree pass against padded rows on variable-length pairs of tiny Llama,
Mistral, Qwen2, Gemma 2, Phi-3 and GPT-2 models (equal summed log-probs, token counts, per-token order
and gradients); a sliding window shorter than a branch, and attention that takes no custom mask, fall
back to the packed rows; the gpu trainer config trains on the tree rows (training on them: tests/test_packed_logps.py)."""

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import BOS, EOS, FAMILIES, PAD, VARIABLE, assert_same_gradients, family_model, tiny_model, optim
from prefopt.data.collate import PairCollator
from prefopt.scoring.layout import LayoutChoice
from prefopt.scoring.marginal import MarginalRows
from prefopt.scoring.layout import token_counts
from prefopt.scoring.tree import tree_layout
from prefopt.scoring import tree as tree_file
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.tree import model_mask, tree_mask, tree_problem, trees_batch


def collate(pairs):
    items = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]
    return PairCollator(pad_id=PAD, layout=LayoutChoice(pack=True), marginal=MarginalRows([BOS]))(items)


def padded(batch):
    return {k: v for k, v in batch.items() if not k.startswith(("packed_", "tree_"))}


def packed_only(batch):
    return {k: v for k, v in batch.items() if not k.startswith("tree_")}


def test_tree_layout_by_hand():
    """Pair 0: prompt [5], chosen [7, 2], rejected [8, 9, 2]; pair 1: prompt [5, 6], chosen [2],
    rejected [3, 2]; rows of 9 hold one pair each (6 + 5 tokens do not fit one)."""
    b = tree_layout([[5], [5, 6]], [[7, 2], [2]], [[8, 9, 2], [3, 2]], PAD, capacity=9)
    assert b["tree_input_ids"].tolist() == [[5, 7, 2, 8, 9, 2, PAD, PAD, PAD], [5, 6, 2, 3, 2, PAD, PAD, PAD, PAD]]
    # both responses continue the prompt's positions; padding counts from 0
    assert b["tree_position_ids"].tolist() == [[0, 1, 2, 1, 2, 3, 0, 1, 2], [0, 1, 2, 2, 3, 0, 1, 2, 3]]
    assert b["tree_pair"].tolist() == [[0, 0, 0, 0, 0, 0, -1, -1, -1], [1, 1, 1, 1, 1, -1, -1, -1, -1]]
    assert b["tree_branch"].tolist() == [[0, 1, 1, 2, 2, 2, -1, -1, -1], [0, 0, 1, 2, 2, -1, -1, -1, -1]]
    # padded rows: 0, 1 chosen of pairs 0, 1; 2, 3 their rejected
    assert b["tree_row"].tolist() == [[-1, 0, 0, 2, 2, 2, -1, -1, -1], [-1, -1, 1, 3, 3, -1, -1, -1, -1]]
    # the state that predicts each response token: the prompt's last for a first token (both responses)
    assert b["tree_source"].tolist() == [[-1, 0, 1, 0, 3, 4, -1, -1, -1], [-1, -1, 1, 1, 3, -1, -1, -1, -1]]
    one = tree_layout([[5], [5, 6]], [[7, 2], [2]], [[8, 9, 2], [3, 2]], PAD, capacity=11)
    assert one["tree_input_ids"].tolist() == [[5, 7, 2, 8, 9, 2, 5, 6, 2, 3, 2]]
    assert one["tree_source"].tolist() == [[-1, 0, 1, 0, 3, 4, -1, -1, 7, 7, 9]]  # pair 1 from column 6


def test_tree_mask_by_hand():
    """One row: pair 0 = prompt a, chosen c1 c2, rejected r1; then one padding token."""
    b = tree_layout([[5]], [[7, 2]], [[8]], PAD, capacity=5)
    mask = tree_mask(b["tree_pair"], b["tree_branch"], b["tree_position_ids"])
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool
    allowed = mask[0, 0].int().tolist()
    assert allowed == [  # keys: a  c1 c2 r1 pad
        [1, 0, 0, 0, 0],  # a
        [1, 1, 0, 0, 0],  # c1
        [1, 1, 1, 0, 0],  # c2
        [1, 0, 0, 1, 0],  # r1: the prompt and itself, not the chosen response
        [0, 0, 0, 0, 1],  # padding: itself only
    ]
    eager = family_model("llama", "eager")
    additive = model_mask(mask, eager)[0, 0]
    assert additive.dtype == torch.float32 and additive[3, 0] == 0 and additive[3, 1] == torch.finfo(torch.float32).min
    assert model_mask(mask, family_model("llama")) is mask  # sdpa takes the boolean mask


def test_padded_share_of_the_tree_layout():
    b = collate(VARIABLE)
    real, processed = token_counts(b, shared=False, tree=True)
    prompts = sum(len(p) for p, _, _ in VARIABLE)
    responses = sum(len(c) + len(r) for _, c, r in VARIABLE)
    assert real == prompts + responses  # each prompt once
    assert processed == b["tree_input_ids"].numel() and processed - real <= 0.1 * processed


CASES = [(name, "sdpa") for name in FAMILIES if name not in ("gemma2", "mistral-window3")] + [
    (name, "eager") for name in ("llama", "gemma2", "gpt2")]  # Gemma 2: eager only


@pytest.mark.parametrize(("name", "attention"), CASES)
def test_tree_equals_padded_rows_values_counts_order_and_gradients(name, attention, monkeypatch):
    model = family_model(name, attention)
    assert tree_problem(model) is None
    b = collate(VARIABLE)
    assert trees_batch(b, model)
    calls = []
    real = tree_file.tree_logps
    monkeypatch.setattr(tree_file, "tree_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows, n_rows = pair_batch_logps(model, padded(b), share_prompt=False)
    tree, n_tree = pair_batch_logps(model, b, share_prompt=False)
    assert calls == [1]
    torch.testing.assert_close(tree, rows, rtol=1e-5, atol=1e-5)
    assert n_tree.tolist() == n_rows.tolist() == [3, 5, 1, 7, 2, 3, 4, 2]
    token_rows, row_of = pair_batch_logps(model, padded(b), share_prompt=False, per_token=True)
    token_tree, tree_of = pair_batch_logps(model, b, share_prompt=False, per_token=True)
    torch.testing.assert_close(token_tree, token_rows, rtol=1e-5, atol=1e-5)
    assert tree_of.tolist() == row_of.tolist()
    assert_same_gradients(model, rows, tree)


def test_a_window_shorter_than_a_branch_scores_the_packed_rows():
    """Mistral with a 3-token sliding window: the tree mask places no window, so batches whose branches
    are longer go to the packed rows (which place it per sequence); same numbers as padded rows."""
    model = family_model("mistral-window3")
    b = collate(VARIABLE)
    assert tree_problem(model) is None or "window" not in tree_problem(model)
    assert not trees_batch(b, model)
    rows, _ = pair_batch_logps(model, padded(b), share_prompt=False)
    torch.testing.assert_close(pair_batch_logps(model, b, share_prompt=False)[0], rows, rtol=1e-5, atol=1e-5)


def test_attention_without_custom_masks_falls_back_to_the_packed_rows(capsys):
    model = family_model("llama")
    model.config._attn_implementation = "flash_attention_2"  # takes no 4D mask (not run: refused by name)
    assert tree_problem(model) == ("attention 'flash_attention_2' takes no custom mask (tree rows need sdpa or eager)")
    assert not trees_batch(collate(VARIABLE), model)
    assert "cannot score prompt-once packed rows" in capsys.readouterr().err


def test_a_mask_that_lets_responses_see_each_other_is_refused(monkeypatch, capsys):
    """The probe compares with padded rows: a mask that lets the rejected response see the chosen one
    changes the rejected log-probs, so the model scores the packed rows instead."""
    real = tree_file.tree_mask

    def leaky(pair, branch, positions):
        return real(pair, torch.where(branch > 0, 1, branch), positions)  # both responses one branch

    monkeypatch.setattr(tree_file, "tree_mask", leaky)
    model = family_model("llama")
    problem = tree_problem(model)
    assert problem.startswith("per-token log-probs differ from the padded rows by up to")
    b = collate(VARIABLE)
    rows, _ = pair_batch_logps(model, padded(b), share_prompt=False)
    torch.testing.assert_close(pair_batch_logps(model, b, share_prompt=False)[0], rows, rtol=1e-5, atol=1e-5)
    assert capsys.readouterr().err.count("cannot score prompt-once packed rows") == 1


def test_an_empty_prompt_leaves_the_tree_layout_out():
    b = collate([([], [8, 9, EOS], [10, EOS]), ([BOS, 7], [11, EOS], [12, EOS])])
    assert "tree_input_ids" not in b and "packed_input_ids" in b


def test_the_gpu_trainer_config_trains_on_the_tree_rows(tmp_path, monkeypatch):
    """conf/trainer/gpu.yaml as a user gets it (bf16-mixed, clipping 1.0, fused AdamW), on the CPU: three
    steps on the tree rows, the boolean mask under autocast included."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from prefopt.losses import SimPOLoss
    from prefopt.train.module import PreferenceModule
    from prefopt.train.trainer_factory import build_trainer

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=gpu", "checkpoint.enabled=false", "trainer.accelerator=cpu",
                                          "trainer.devices=1", "trainer.max_steps=3", "data.pack=true"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.pack
    calls = []
    real = tree_file.tree_logps
    monkeypatch.setattr(tree_file, "tree_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), SimPOLoss(beta=10.0), **optim(lr=1e-3, warmup_ratio=0.0))
    start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    trainer = build_trainer(cfg, tmp_path, [], "test", model=module.policy)
    trainer.fit(module, train_dataloaders=DataLoader([collate(VARIABLE)] * 3, batch_size=None))
    assert trainer.global_step == 3 and str(trainer.precision) == "bf16-mixed"
    assert len(calls) == 1 + 3  # the probe (once per model), then each step
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert max((module.policy.state_dict()[k] - v).abs().max().item() for k, v in start.items()) > 1e-4
