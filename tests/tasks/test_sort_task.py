"""Tests of the sort task build (tokenizer, SFT loop, cached artifacts): prefopt.tasks.sort, prefopt.tasks.sft."""

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

import prefopt.tasks.sort as sort_module
from prefopt.models.load import build_tiny
from prefopt.tasks.sft import lr_factor, train_causal_lm
from prefopt.models.choose import Start, choose_start
from prefopt.tasks.sort import SortTask, build_sort_tokenizer, sft_sequences
from prefopt.tasks.sort_oracle import is_eval_prompt, prompt_digits

torch.set_num_threads(1)

TINY = {"name": "tiny", "tiny": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 32, "max_position_embeddings": 64}}


def build_for(task, model_cfg, cache_root):
    """`task.build` with the start a run would choose for `model_cfg` (prefopt.config.plan chooses it once)."""
    return task.build(choose_start(model_cfg, task), model_cfg, cache_root)


def test_tokenizer_round_trip(tmp_path):
    tok = build_sort_tokenizer()
    assert len(tok) == 15
    assert tok("31415>")["input_ids"] == [1, 7, 5, 8, 5, 9, 14]  # BOS, digits (4 + d), '>'
    assert tok("123", add_special_tokens=False)["input_ids"] == [5, 6, 7]
    assert tok.decode([1, 7, 5, 14, 5, 7, 2], skip_special_tokens=True) == "31>13"
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("31415>")["input_ids"] == [1, 7, 5, 8, 5, 9, 14]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
    assert loaded.decode(loaded("2718>", add_special_tokens=False)["input_ids"]) == "2718>"


def test_sft_sequences_with_and_without_prompt():
    tok = build_sort_tokenizer()
    seqs = sft_sequences(tok, ["31", "31"], ["13", "13"], [False, True])
    assert seqs == [[1, 7, 5, 14, 5, 7, 2], [1, 14, 5, 7, 2]]


def test_lr_schedule_by_hand():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_sft_trains_eos_even_when_pad_is_eos():
    tok = build_sort_tokenizer()
    model = build_tiny(tok, **TINY["tiny"])
    sequences = [[1, 4, 4, 4, 2], [1, 5, 2]]  # padded with pad_id=2 (= EOS) in a batch
    losses = train_causal_lm(model, sequences, steps=60, lr=1e-2, batch_size=2, seed=0, pad_id=2)
    assert losses[-1] < losses[0] / 3
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([[1, 5]])).logits[0, -1], dim=-1)
    assert probs[2] > 0.9


def test_model_config_must_be_tiny():
    task = SortTask()
    assert choose_start(OmegaConf.create(TINY), task) == Start("task", TINY["tiny"])
    assert choose_start(None, task) == Start("task", {})  # from Python, no model config: build_tiny's defaults
    with pytest.raises(ValueError, match="needs a model config with a `tiny` architecture block.*smollm2_135m"):
        choose_start({"name": "smollm2_135m"}, task)
    with pytest.raises(ValueError, match="samples_per_prompt must be at least 2"):
        SortTask(samples_per_prompt=1)


def test_build_small_then_cache_hit(tmp_path, monkeypatch):
    task = SortTask(n_sft=300, sft_steps=30, sft_batch_size=32, n_pair_prompts=40, samples_per_prompt=3,
                    n_eval_prompts=8, eval_fraction=0.25, max_new_tokens=14, seed=1)
    art = build_for(task, TINY, tmp_path)
    rows = art.train_rows + art.eval_rows
    assert rows and art.eval_rows and art.train_rows
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"].endswith(">") and prompt_digits(row["prompt"]).isdigit()
        assert isinstance(row["chosen"], str) and row["chosen"] != row["rejected"]
    assert not {r["prompt"] for r in art.train_rows} & {r["prompt"] for r in art.eval_rows}
    assert len(art.eval_prompts) == 8 and all(is_eval_prompt(prompt_digits(p)) for p in art.eval_prompts)
    assert not set(art.eval_prompts) & {r["prompt"] for r in rows}
    assert art.oracle(["312>"], ["123"]) == [1.0]
    assert art.generation == {"max_new_tokens": 14, "temperature": 1.0}
    assert art.info["sort/n_pairs"] == len(rows) <= 40 * 3
    model = AutoModelForCausalLM.from_pretrained(art.policy)
    assert model.config.hidden_size == 16 and len(AutoTokenizer.from_pretrained(art.policy)) == 15

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached artifact")

    monkeypatch.setattr(sort_module, "train_causal_lm", fail)
    monkeypatch.setattr(sort_module, "sample", fail)
    again = build_for(SortTask(n_sft=300, sft_steps=30, sft_batch_size=32, n_pair_prompts=40, samples_per_prompt=3,
                     n_eval_prompts=8, eval_fraction=0.25, max_new_tokens=14, seed=1), TINY, tmp_path)
    assert again.train_rows == art.train_rows and again.policy == art.policy
