"""`python src/run.py data=imdb loss=dpo` end to end at small sizes: the build, DPO training and the gold-reward
evaluation, which must show the reward rising over the starting policy's."""

import json

import pytest

pytestmark = pytest.mark.slow  # starts a run (`pytest -m "not slow"` skips it)

from test_run import run_cli  # noqa: E402

SMALL_IMDB = [
    "data=imdb",
    "model.vocab_size=1024",
    "data.source.n_classifier=1500",
    "data.source.n_classifier_test=300",
    "data.source.classifier_windows=4",
    "data.source.n_sft_reviews=600",
    "data.source.sft_steps=150",
    "data.source.sft_seq_len=32",
    "data.source.architecture.hidden_size=64",
    "data.source.architecture.num_hidden_layers=2",
    "data.source.architecture.intermediate_size=128",
    "data.source.n_pair_prompts=400",
    "data.source.max_new_tokens=16",
    "data.source.n_eval_prompts=256",
    "data.max_length=40",
]


def test_dpo_raises_the_gold_reward(cache_root, tmp_path):
    proc = run_cli([*SMALL_IMDB, "loss=dpo", "trainer.max_steps=80", "optim.lr=4e-3", "logger=none",
                    "checkpoint.enabled=false", f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy" in proc.stdout and "P(positive | prompt + response)" in proc.stdout
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    m = results["metrics"]
    assert results["status"] == "completed"
    assert 0.35 < m["eval/oracle_reward_start"] < 0.65  # the starting policy: near the 0.5 base rate
    assert m["eval/oracle_reward"] > m["eval/oracle_reward_start"] + 0.08, m
    assert m["eval/win_rate"] > 0.55 and m["eval/kl"] > 0
    assert results["info"]["imdb/classifier_accuracy_full"] > 0.75
    assert results["samples"] and {"prompt", "response", "reference_response", "reward"} <= set(results["samples"][0])
