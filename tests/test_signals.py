"""Honest interrupts (prefopt.train.signals): SIGINT and SIGTERM during training save a checkpoint with the
default `checkpoint.every_n_train_steps=0`, record `status: interrupted` with the signal and step,
print how to resume, exit 130 / 143, and the resumed run ends with the uninterrupted run's metrics;
a signal before training records the interrupt without a traceback; two DDP ranks signalled together (as
SLURM and Ctrl-C signal a job) stop at one step, and their resume matches; under SLURM Lightning requeues."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_resume import metrics
from test_run import ROOT, SMALL_SORT, run_cli

ARGS = [*SMALL_SORT, "loss=dpo", "trainer.max_steps=100", "logger=none"]


def start(args, cache_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(cache_root),
           "PYTHONUNBUFFERED": "1"}  # progress lines arrive as they are printed
    return subprocess.Popen([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def interrupt_when(proc, marker, signum, group=False):
    """Send `signum` once stdout shows `marker` (to the run's whole process group with `group`, as a
    scheduler or a terminal's Ctrl-C does); returns (stdout, stderr) at exit."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=240)
    return "".join(seen) + out, err


@pytest.fixture(scope="module")
def uninterrupted(cache_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    proc = run_cli([*ARGS, f"hydra.run.dir={tmp / 'run'}"], cache_root, tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return metrics(tmp / "run")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_training_checkpoints_records_and_resumes_exactly(signum, uninterrupted, cache_root, tmp_path):
    run_dir = tmp_path / "run"
    victim = start([*ARGS, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    _, err = interrupt_when(victim, "step 20/100", signum)
    assert victim.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["signal"] == signal.Signals(signum).name
    assert 20 <= results["step"] < 100 and results["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # although every_n_train_steps=0
    assert "Traceback" not in err and f"at step {results['step']}" in err
    hint = [line for line in err.splitlines() if "resume with:" in line]
    assert len(hint) == 1 and hint[0].endswith(f"hydra.run.dir={run_dir} ckpt_path=last")

    proc = run_cli([*ARGS, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(run_dir) == uninterrupted
    resumed = json.loads((run_dir / "results.json").read_text())["info"]["resumed_from"]
    assert resumed["step"] == results["step"]


@pytest.mark.slow
def test_signal_before_training_is_recorded_without_traceback(cache_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = start([*ARGS, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    _, err = interrupt_when(proc, "[sort]", signal.SIGINT)  # while the task is being set up
    assert proc.returncode == 130
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["signal"], results["step"]) == ("interrupted", "SIGINT", 0)
    assert "no checkpoint was saved" in err and "Traceback" not in err


DDP = ["data.batch_size=8", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
       "trainer.max_steps=40", "data.max_length=61"]  # two gloo ranks; tables under a key of their own


@pytest.mark.slow
def test_ddp_ranks_signalled_together_stop_at_one_step_and_resume_exactly(cache_root, tmp_path):
    """Both ranks get SIGTERM (the process group, as SLURM signals every task); they agree on the step,
    rank 0 alone saves, records and prints the hint, and the resumed 2-rank run ends with the metrics of
    an uninterrupted one."""
    run_dir = tmp_path / "run"
    victim = start([*ARGS, *DDP, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    _, err = interrupt_when(victim, "step 10/40", signal.SIGTERM, group=True)
    assert victim.returncode == 143, err[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["signal"]) == ("interrupted", "SIGTERM") and 10 <= results["step"] < 40
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and "Traceback" not in err
    assert err.count("resume with:") == 1 and err.count("SIGTERM: stopping after this step") == 1

    resumed = run_cli([*ARGS, *DDP, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cache_root, tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = run_cli([*ARGS, *DDP, f"hydra.run.dir={tmp_path / 'full'}"], cache_root, tmp_path, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    assert metrics(run_dir) == metrics(tmp_path / "full")
    assert json.loads((run_dir / "results.json").read_text())["info"]["resumed_from"]["step"] == results["step"]


SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "prefopt",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.mark.slow
def test_slurm_requeue_resumes_from_the_newest_checkpoint(uninterrupted, cache_root, tmp_path, monkeypatch):
    """SIGUSR1 (SLURM's warning before the time limit): Lightning saves hpc_ckpt_1.ckpt and calls
    `scontrol requeue <job>` (a stand-in records it); the SIGTERM of the requeue stops the run a few steps
    later with last.ckpt. The requeued job, the same command again, resumes from that newer last.ckpt,
    writes last.ckpt again (no last-v1.ckpt) and ends with the uninterrupted run's metrics."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    for key, value in {**SLURM, "PATH": f"{bin_dir}:{os.environ['PATH']}"}.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    job = start([*ARGS, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    for line in job.stdout:
        if "step 20/100" in line:
            job.send_signal(signal.SIGUSR1)
            break
    for _ in range(600):  # the requeue has been asked for once scontrol ran
        if calls.exists():
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=240)
    assert job.returncode == 143, err[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"] and (run_dir / "hpc_ckpt_1.ckpt").exists()
    stopped = json.loads((run_dir / "results.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")

    requeued = run_cli([*ARGS, f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert metrics(run_dir) == uninterrupted
    resumed = json.loads((run_dir / "results.json").read_text())["info"]["resumed_from"]
    assert resumed == {"checkpoint": str(run_dir / "checkpoints" / "last.ckpt"), "step": stopped["step"]}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "last.ckpt.sum"]


def test_slurm_runs_get_lightning_requeue(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from prefopt.train.signals import slurm_plugins

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert slurm_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "prefopt-sweep")
    (env,) = slurm_plugins()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1


class FakeTrainer:
    """What the guard reads from a Lightning Trainer."""

    world_size, callbacks, sanity_checking = 1, [], False

    def __init__(self, root):
        self.global_step, self.default_root_dir, self.saved = 0, str(root), []

    def save_checkpoint(self, path):
        self.saved.append((path, self.global_step))


def test_guard_stops_only_at_an_optimizer_step_boundary(tmp_path):
    from prefopt.train.signals import InterruptGuard, Interrupted

    guard, trainer = InterruptGuard(), FakeTrainer(tmp_path)
    guard.on_train_start(trainer, None)
    trainer.global_step = 1
    guard.on_train_batch_end(trainer, None, None, None, 0)  # step 1 done
    guard._handle(signal.SIGTERM, None)  # arrives during the first micro-batch of step 2
    guard.on_train_batch_end(trainer, None, None, None, 1)  # accumulating: global_step still 1
    assert trainer.saved == []
    trainer.global_step = 2
    with pytest.raises(Interrupted) as stop:
        guard.on_train_batch_end(trainer, None, None, None, 2)
    assert trainer.saved == [(str(tmp_path / "checkpoints" / "last.ckpt"), 2)]
    assert (stop.value.signum, stop.value.step, stop.value.exit_code) == (signal.SIGTERM, 2, 143)


def test_guard_outside_training_or_on_a_second_signal_stops_at_once(tmp_path):
    from prefopt.train.signals import InterruptGuard, Interrupted

    guard = InterruptGuard()
    with pytest.raises(Interrupted) as stop:
        guard._handle(signal.SIGINT, None)  # before training: nothing to save
    assert (stop.value.step, stop.value.checkpoint, stop.value.exit_code) == (0, None, 130)
    guard = InterruptGuard()
    guard.on_train_start(FakeTrainer(tmp_path), None)
    guard._handle(signal.SIGINT, None)  # noted
    with pytest.raises(Interrupted):
        guard._handle(signal.SIGINT, None)  # the user insists


def test_resume_hint_pastes_for_a_folder_with_spaces_and_a_quote(tmp_path):
    """The hint's command, split as a POSIX shell splits it (shlex) and each override parsed as Hydra parses
    it, gives back the run folder and the run's own overrides exactly."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from prefopt.train.signals import Interrupted, resume_hint

    run_dir = tmp_path / "Bob's run, 2 = two"
    overrides = ["loss=dpo", "data.path=/data/my pairs.jsonl", "hydra.run.dir=old", "ckpt_path=null"]
    stop = Interrupted(signal.SIGINT, 7, str(run_dir / "checkpoints" / "last.ckpt"))
    hint = resume_hint(stop, overrides, run_dir)
    assert hint.startswith(f"[prefopt] interrupted by SIGINT at step 7, checkpoint {stop.checkpoint}; resume with: ")
    argv = shlex.split(hint.split("resume with: ", 1)[1])
    assert argv[:2] == ["python", "src/run.py"]
    parser = OverridesParser.create()
    parsed = [(o.key_or_group, o.value()) for o in (parser.parse_override(a) for a in argv[2:])]
    assert parsed == [("loss", "dpo"), ("data.path", "/data/my pairs.jsonl"), ("hydra.run.dir", str(run_dir)),
                      ("ckpt_path", "last")]
