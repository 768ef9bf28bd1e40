"""benchmarks/throughput.py's `trl-best` row: TRL 1.16's best configuration, built from the config
classes' real fields (DPOConfig, CPOConfig) and said which settings this machine refused and why; and
scripts/gpu_device_check.sh, the lent GPU machine's one script (parses; its --dry-run, slow)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SCRIPT = ROOT / "scripts" / "gpu_device_check.sh"


def _config(loss: str):
    if loss == "simpo":
        from trl.experimental.cpo import CPOConfig

        return CPOConfig
    from trl import DPOConfig

    return DPOConfig


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_trl_best_settings_are_real_config_fields_and_construct(loss, tmp_path):
    import throughput

    best = throughput.trl_best_settings(loss, "cpu")
    config_cls = _config(loss)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    assert set(best["config"]) <= fields  # never a guessed name
    assert set(best["settings"]) | set(best["refused"]) == set(throughput.TRL_BEST)  # each one accounted for
    config = config_cls(output_dir=str(tmp_path), use_cpu=True, report_to=[], **best["config"])
    for name, value in best["config"].items():
        assert getattr(config, name) == value
    assert config.train_sampling_strategy == "group_by_length"
    assert best["attn"] is None  # no flash attention on a CPU


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_on_a_cpu_the_gpu_only_settings_are_refused_with_a_reason(loss):
    import throughput

    best = throughput.trl_best_settings(loss, "cpu")
    refused = best["refused"]
    assert "CUDA only" in refused["attn_implementation"]
    assert "CUDA only" in refused["use_liger_kernel"]
    assert "completion_only_logps" in refused
    if loss == "dpo":
        assert "CUDA/XPU with Triton" in refused["completion_only_logps"]
        assert "disables it" in refused["padding_free"]  # TRL 1.16 turns padding_free off for DPO
        assert best["settings"]["precompute_ref_log_probs"] is True
    else:
        assert "not a field of CPOConfig" in refused["padding_free"]
        assert "not a field of CPOConfig" in refused["precompute_ref_log_probs"]
        assert "no such branch" in refused["completion_only_logps"]
    assert "train_sampling_strategy" in best["settings"]
    text = throughput.describe_best(loss, best)
    assert text.startswith(f"trl-best {loss}: on: ") and "refused: attn_implementation" in text


def test_trl_best_compares_against_the_cached_reference_for_dpo():
    import throughput

    assert throughput.TRL_IMPLS["trl-best"] == ["dpo", "ipo", "simpo"]
    assert throughput.VS_OURS[("trl-best", "dpo")] == "dpo+cache"
    assert ("trl-best", "simpo") not in throughput.VS_OURS  # SimPO: against our simpo


def test_mistral_shape_is_built_on_the_meta_device_without_memory():
    from synthetic import build_model, n_params

    model, tokenizer = build_model("mistral7b-shape", device="meta")
    assert 7.1e9 < n_params(model) < 7.4e9 and model.config.model_type == "mistral"
    assert next(model.parameters()).device.type == "meta"


def test_device_script_parses_and_has_a_dry_run():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    text = SCRIPT.read_text()
    assert "--dry-run" in text and "trl-best" in text and "hydra/launcher=gpu_jobs" in text
    assert 'gpu_jobs.jobs_per_gpu="$k"' in text  # the sweep phase: K jobs on the one GPU
    for limit in ("BUDGET", "LIMIT_SMALL", "LIMIT_BIG", "LIMIT_SWEEP"):  # each phase's limit, explicit
        assert f"{limit}=" in text
    bad = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_device_script_compile_part_is_optional_and_runs_our_compiled_rows_against_trl_best():
    text = SCRIPT.read_text()
    assert "PARTS=${PARTS:-env small big sweep}" in text and "want compile" in text  # not in the default PARTS
    assert "COMPILE_LOSSES=dpo+compile,dpo+graphs,simpo+compile,simpo+graphs" in text
    assert "COMPILE_LOSSES=dpo+compile,simpo+compile;" in text  # the dry run: +compile only, +graphs CUDA only
    assert "LIMIT_COMPILE=" in text and '--json "$OUT/compile.json"' in text


@pytest.mark.slow
def test_device_script_dry_run_runs_every_phase_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "skipped on the CPU (CUDA only)" in proc.stdout
    for name in ("env", "small", "big", "sweep"):
        assert (out / f"{name}.cmd").exists() and (out / f"{name}.log").exists()
    import json

    small = json.loads((out / "small.json").read_text())
    assert {r["impl"] for r in small} == {"ours", "trl", "trl-best"}
    assert all("refused" in r for r in small if r["impl"] == "trl-best")
    big = json.loads((out / "big.json").read_text())
    assert {(r["impl"], r["loss"]) for r in big} == {("ours", "dpo+cache"), ("ours", "simpo"),
                                                     ("trl-best", "dpo"), ("trl-best", "simpo")}
    assert all(r["order"] == "sequential" for r in big)
    lines = (out / "sweep.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("jobs ")] == ["jobs 1", "jobs 2"]
    assert sum("4 results.json, status {'completed': 4}" in line for line in lines) == 2  # each K: 4 runs
