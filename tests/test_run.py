"""`python src/run.py` end to end in subprocesses: results.json, the saved policy, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts a run (`pytest -m "not slow"` skips them)

ROOT = Path(__file__).resolve().parents[1]
SMALL_SORT = [
    "data=sort",
    "~tuned",  # the losses' own defaults, not conf/tuned/<loss>_sort.yaml (tests/test_tuned.py covers those)
    "data.source.n_sft=3000",
    "data.source.sft_steps=150",
    "data.source.n_pair_prompts=300",
    "data.source.n_eval_prompts=48",
    "trainer.max_steps=12",
]


def run_cli(args, cache_root, tmp_path, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(cache_root)}
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "run.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def default_run(cache_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default-run")
    proc = run_cli([*SMALL_SORT, f"hydra.run.dir={tmp / 'run'}"], cache_root, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


def test_default_run_writes_results_and_policy(default_run):
    run_dir, proc = default_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["loss"]["_target_"] == "prefopt.losses.RMiPOLoss"
    assert results["seed"] == 0 and results["wall_time_s"] > 0
    assert {"torch", "transformers", "lightning"} <= set(results["versions"])
    m = results["metrics"]
    for key in ("eval/oracle_reward", "eval/oracle_reward_start", "eval/win_rate", "eval/kl", "eval/length",
                "train/loss", "val/loss", "val/pmi/delta", "val/margin/mean"):
        assert key in m, key
    assert 0.0 <= m["eval/win_rate"] <= 1.0
    assert m["perf/pairs_per_s"] > 0 and m["perf/tokens_per_s"] > m["perf/pairs_per_s"] and m["perf/peak_mem_mb"] > 0
    assert "eval/oracle_reward" in proc.stdout  # the closing summary
    assert (run_dir / "csv" / "metrics.csv").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_saved_policy_loads_with_transformers(default_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = default_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tokenizer("31415>", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_unknown_loss_key_fails_fast_without_traceback(cache_root, tmp_path):
    proc = run_cli(["loss=rmipo", "loss.gamma_beta_ratio=0.5"], cache_root, tmp_path)
    assert proc.returncode == 1
    assert "loss.gamma_beta_ratio" in proc.stderr and "gamma_min" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(["loss=dpo", "+loss.bogus=1"], cache_root, tmp_path)
    assert proc.returncode == 1 and "loss.bogus" in proc.stderr and "label_smoothing" in proc.stderr


@pytest.mark.parametrize("model", ["mistral7b", "llama3_8b"])
def test_unreachable_hub_model_says_how_to_set_path(model, cache_root, tmp_path, default_run):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "31>", "chosen": "13", "rejected": "133"}) + "\n")
    proc = run_cli([f"model={model}", "data=jsonl", f"data.path={pairs}", f"hydra.run.dir={tmp_path / 'r'}"],
                   cache_root, tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "model.path=" in proc.stderr and "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "failed" and "model.path" in results["error"]


def test_local_model_path_trains_on_jsonl(default_run, cache_root, tmp_path):
    """Any HF causal-LM folder given as model.path trains (here the policy the default run saved)."""
    run_dir, _ = default_run
    rows = [{"prompt": f"{a}{b}{c}>", "chosen": "".join(sorted(f"{a}{b}{c}")), "rejected": f"{c}{b}{a}9"}
            for a, b, c in [(3, 1, 2), (5, 4, 9), (8, 2, 7), (6, 6, 1), (9, 0, 3), (4, 7, 2)]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli(["model=mistral7b", f"model.path={run_dir / 'model'}", "model.dtype=float32", "data=jsonl",
                    f"data.path={pairs}", "loss=dpo", "trainer.max_steps=3", "data.batch_size=2",
                    "logger=none", f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "completed" and results["metrics"]["train/loss"] > 0


def test_multirun_with_wandb_offline(cache_root, tmp_path, default_run):
    proc = run_cli(["-m", "loss=dpo,simpo", "logger=wandb", *SMALL_SORT, "trainer.max_steps=4",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 2
    for job in jobs:
        results = json.loads(job.read_text())
        assert results["status"] == "completed"
        runs = list((job.parent / "wandb").glob("offline-run-*"))
        assert len(runs) == 1


def test_finished_run_is_never_overwritten(default_run, cache_root, tmp_path):
    run_dir, _ = default_run
    before = (run_dir / "results.json").read_bytes()
    proc = run_cli([*SMALL_SORT, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)  # the same config: skipped
    assert proc.returncode == 0 and "already completed with this config: skipping" in proc.stdout
    proc = run_cli([*SMALL_SORT, "loss=dpo", f"hydra.run.dir={run_dir}"], cache_root, tmp_path)  # another: refused
    assert proc.returncode == 1 and "holds a completed run of another config" in proc.stderr
    assert (run_dir / "results.json").read_bytes() == before


def test_dropped_rows_are_counted_and_strict_makes_them_errors(cache_root, tmp_path, default_run):
    run_dir, _ = default_run
    rows = [{"prompt": "31>", "chosen": "13", "rejected": "133"}] * 6 + [{"prompt": "2>", "chosen": "2", "rejected": "2"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["model=mistral7b", f"model.path={run_dir / 'model'}", "model.dtype=float32", "data=jsonl",
              f"data.path={pairs}", "trainer.max_steps=2", "logger=none", "checkpoint.enabled=false"]
    proc = run_cli([*common, f"hydra.run.dir={tmp_path / 'a'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped: identical responses 1" in proc.stdout
    info = json.loads((tmp_path / "a" / "results.json").read_text())["info"]
    assert info["drops"]["train"]["identical_responses"] == 1
    proc = run_cli([*common, "data.strict=true", f"hydra.run.dir={tmp_path / 'b'}"], cache_root, tmp_path)
    assert proc.returncode == 1 and "line 7: identical responses" in proc.stderr and "Traceback" not in proc.stderr
