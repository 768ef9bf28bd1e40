"""scripts/gpu_check.sh from a fresh checkout: `--cpu` creates its folders, builds the pairs file at a path
it chooses (never parsed from log output), trains each loss and prints pairs/s, tokens/s, peak memory and
MFU per loss from results.json; a failing step makes it exit 1; without a GPU (and without --cpu) it stops
in one line. Also the run's device/precision/attention line (prefopt/train/hardware.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import tiny_model
from prefopt.train.hardware import setup_line

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
REPORT = ROOT / "scripts" / "gpu_check_report.py"


def gpu_check(args, cache_root, out, **env):
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "PREFOPT_CACHE": str(cache_root), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)


@pytest.mark.slow
def test_cpu_mode_prints_throughput_per_loss(cache_root, tmp_path):
    out = tmp_path / "not" / "yet" / "there"  # the script creates what it needs
    proc = gpu_check(["--cpu"], cache_root, out, LOSSES="dpo rmipo", STEPS="6")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "[prefopt] device: cpu × 1 process(es), precision 32-true, weights float32, attention sdpa" in lines
    header = lines.index(f"{'loss':<8}{'pairs/s':>10}{'tokens/s':>12}{'peak MB':>10}{'MFU':>8}")
    for loss, line in zip(("dpo", "rmipo"), lines[header + 1:header + 3]):
        name, pairs_s, tokens_s, peak_mb, mfu = line.split()
        results = json.loads((out / loss / "results.json").read_text())
        assert name == loss and results["status"] == "completed"
        assert float(pairs_s) == pytest.approx(results["metrics"]["perf/pairs_per_s"], abs=0.05)
        assert float(tokens_s) > float(pairs_s) > 0 and float(peak_mb) > 0 and mfu == "n/a"  # no GPU peak
        assert results["config"]["data"]["path"] == str(out / "pairs.jsonl")
    rows = (out / "pairs.jsonl").read_text().splitlines()
    assert rows and {"prompt", "chosen", "rejected"} <= set(json.loads(rows[0]))


@pytest.mark.slow
def test_a_failing_step_exits_nonzero(cache_root, tmp_path):
    proc = gpu_check(["--cpu"], cache_root, tmp_path / "out", LOSSES="nosuchloss")
    assert proc.returncode == 1
    assert "nosuchloss: failed" in proc.stderr
    assert f"nosuchloss failed: no results.json (see {tmp_path / 'out' / 'nosuchloss.log'})" in proc.stdout


@pytest.mark.slow
def test_report_exits_1_on_a_failed_run(tmp_path):
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "results.json").write_text(json.dumps({"status": "failed", "error": "boom", "metrics": {}}))
    (tmp_path / "ipo").mkdir()
    metrics = {"perf/pairs_per_s": 12.5, "perf/tokens_per_s": 800.0, "perf/peak_mem_mb": 2048.0, "perf/mfu": 0.4123}
    (tmp_path / "ipo" / "results.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))
    proc = subprocess.run([sys.executable, str(REPORT), str(tmp_path), "dpo", "ipo"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1:] == [
        f"dpo     failed: boom (see {tmp_path / 'dpo.log'})",
        "ipo           12.5         800      2048   0.412",
    ]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_stops_in_one_line(tmp_path):
    proc = gpu_check([], tmp_path, tmp_path / "out")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"gpu_check: no CUDA GPU visible to {sys.executable} (torch.cuda.is_available() is False); "
        "use --cpu to run the same steps on the CPU"]
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_setup_line_names_device_precision_and_attention():
    model = tiny_model()
    model.config._attn_implementation = "sdpa"
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    assert setup_line(trainer, model) == ("[prefopt] device: cpu × 1 process(es), precision bf16-mixed, "
                                          "weights float32, attention sdpa")
