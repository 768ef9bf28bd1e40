"""The 7-8B path at toy scale: `experiment=mistral7b` (LoRA-free, bf16 weights, gradient checkpointing,
effective batch, epochs) on a folder holding a tiny random MistralForCausalLM with the real Mistral-7B
v0.1 tokenizer and the Zephyr template, trained under `trainer=cpu trainer.precision=bf16-mixed` on chat
pairs in the UltraFeedback-binarized layout: every loss completes and writes model/ (weights, tokenizer,
template) and generations.json; data smaller than one effective batch is a one-line error."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

from mistral_assets import mistral_tokenizer_dir
from prefopt.models.load import load_tokenizer
from test_run import run_cli

LOSSES = ["dpo", "ipo", "simpo", "rmipo", "orpo", "cpo", "rdpo", "simper", "betadpo"]  # every loss config


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    """A model folder as a user downloads one: config, weights, tokenizer.model and its config with the
    Zephyr chat template (dropout configured, as the real checkpoints' LoRA configs have it)."""
    root = tmp_path_factory.mktemp("tiny-mistral")
    tokenizer_dir = mistral_tokenizer_dir(root)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           attention_dropout=0.1)
    torch.manual_seed(0)
    folder = root / "model"
    MistralForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


def ultrafeedback_rows(n: int) -> list[dict]:
    """Rows as HuggingFaceH4/ultrafeedback_binarized has them: a prompt string, chosen/rejected
    conversations starting with that user turn, messages, scores and a prompt id."""
    asks = ["Write a haiku about rain.", "What is 12 times 7?", "Name three French cheeses.",
            "Explain recursion in one line.", "¿Qué hora es en Tokio?", "Sort the digits 3 1 2.",
            "def f(x):\n    return x  # what does f do?", "Give a synonym for happy."]
    rows = []
    for i in range(n):
        prompt = f"{asks[i % len(asks)]} (case {i})"

        def talk(answer: str) -> list[dict]:
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

        good, bad = f"A careful answer to case {i}.\nIt has two lines.", f" no {i}"
        rows.append({"prompt": prompt, "prompt_id": f"{i:08x}", "chosen": talk(good), "rejected": talk(bad),
                     "messages": talk(good), "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


def toy_args(model, pairs, *extra):
    return ["experiment=mistral7b", f"model.path={model}", "trainer=cpu", "trainer.precision=bf16-mixed",
            "data=jsonl", f"data.path={pairs}", "data.max_length=96", "data.max_prompt_length=48",
            "logger=none", "checkpoint.enabled=false", *extra]


@pytest.mark.slow
def test_mistral7b_experiment_trains_every_loss_at_toy_scale(tiny_mistral, cache_root, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ultrafeedback_rows(24)))
    proc = run_cli(["-m", f"loss={','.join(LOSSES)}", *toy_args(tiny_mistral, pairs), "trainer.max_steps=2",
                    "data.effective_batch_size=4", "eval.generate_max_prompts=2", "eval.generate_max_new_tokens=4",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}"],
                   cache_root, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == len(LOSSES)
    for job in jobs:
        results = json.loads(job.read_text())
        assert results["status"] == "completed", results.get("error")
        assert results["config"]["trainer"]["precision"] == "bf16-mixed"
        assert results["config"]["model"]["dtype"] == "bfloat16" and results["config"]["model"]["disable_dropout"]
        assert math.isfinite(results["metrics"]["train/loss"])  # SimPER's loss lies in (-1, 1): no sign to check
        assert math.isfinite(results["metrics"]["train/rewards/margins"])
        run = job.parent
        saved = load_tokenizer(str(run / "model"))
        assert saved("Hello there")["input_ids"] == [1, 22557, 736]  # the real Mistral vocabulary: <s> ▁Hello ▁there
        assert "<|assistant|>" in saved.chat_template and (run / "model" / "model.safetensors").is_file()
        generations = json.loads((run / "generations.json").read_text())
        assert len(generations) == 1 and generations[0]["instruction"].startswith(("Write", "What", "Name", "Explain",
                                                                                   "¿Qué", "Sort", "def", "Give"))
        assert generations[0]["generator"].startswith("mistral7b-")  # its own name, unique within a study


@pytest.mark.slow
def test_data_smaller_than_one_effective_batch_is_one_line(tiny_mistral, cache_root, tmp_path):
    """24 rows (23 train) at the experiment's effective batch 128: 12 batches of 2, 64 accumulated."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ultrafeedback_rows(24)))
    proc = run_cli([*toy_args(tiny_mistral, pairs), "loss=simpo", "trainer.max_steps=2",
                    f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path, timeout=300)
    assert proc.returncode == 1
    assert ("error: 23 train pairs make 12 batch(es) per device, fewer than the 64 accumulated for one optimizer "
            "step (1 device(s)): lower data.effective_batch_size") in proc.stderr
    assert "Traceback" not in proc.stderr
