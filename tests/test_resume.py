"""Exact resume and determinism on CPU: a run killed with SIGKILL mid-training and restarted with the
same command, folder and `ckpt_path=last` ends with the same metrics as an uninterrupted run, and the
same command twice gives identical metrics."""

import json
import os
import signal
import subprocess
import sys
import time

from test_run import ROOT, SMALL_SORT, run_cli

ARGS = [*SMALL_SORT, "trainer.max_steps=100", "checkpoint.every_n_train_steps=20", "logger=none"]


def metrics(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    return {k: v for k, v in results["metrics"].items() if not k.startswith("perf/")}  # timings vary


def test_same_command_twice_gives_identical_metrics(cache_root, tmp_path):
    for name in ("a", "b"):
        proc = run_cli([*ARGS, f"hydra.run.dir={tmp_path / name}"], cache_root, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def test_sigkill_and_resume_matches_uninterrupted(cache_root, tmp_path):
    proc = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'full'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    run_dir = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(cache_root)}
    cmd = [sys.executable, str(ROOT / "src" / "run.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    victim = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while victim.poll() is None and time.time() < deadline:
        if list((run_dir / "checkpoints").glob("*step=20.ckpt")):  # the first periodic checkpoint
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists(), "killed too late: the run had already finished"
    assert list((run_dir / "checkpoints").glob("*step=20.ckpt"))

    proc = run_cli([*ARGS, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(run_dir) == metrics(tmp_path / "full")
