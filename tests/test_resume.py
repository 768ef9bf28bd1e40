"""Exact resume and determinism on CPU: a run killed with SIGKILL mid-training and restarted with the
same command, folder and `ckpt_path=last` ends with the same metrics as an uninterrupted run, and the
same command twice gives identical metrics. Resumes check what they resume (prefopt.train.resume): another
config, data or tokenizer is refused in one line naming it; rows appended to a jsonl file are left out
(the checkpoint's rows, split and tokenizer are used); `ckpt_path=last` without a checkpoint stops
unless `last_or_fresh`. Signals: tests/test_signals.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_run import ROOT, SMALL_SORT, run_cli

ARGS = [*SMALL_SORT, "trainer.max_steps=100", "checkpoint.every_n_train_steps=20", "logger=none"]


def metrics(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    return {k: v for k, v in results["metrics"].items() if not k.startswith("perf/")}  # timings vary


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics(cache_root, tmp_path):
    for name in ("a", "b"):
        proc = run_cli([*ARGS, f"hydra.run.dir={tmp_path / name}"], cache_root, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


@pytest.mark.slow
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
    resumed = json.loads((run_dir / "results.json").read_text())["info"]["resumed_from"]
    assert resumed["step"] >= 20  # it did resume (a fresh start would give the same numbers)


# ---- resumes check what they resume (prefopt.train.resume) ----------------------------------------------
SHORT = [*SMALL_SORT, "loss=dpo", "logger=none"]


@pytest.fixture(scope="module")
def stopped_run(cache_root, tmp_path_factory):
    """A short run's folder with its last.ckpt and no results.json (as if it had been stopped)."""
    tmp = tmp_path_factory.mktemp("stopped")
    proc = run_cli([*SHORT, f"hydra.run.dir={tmp / 'run'}"], cache_root, tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize("change,named", [
    (["loss.beta=0.2"], "loss.beta 0.1 -> 0.2"),
    (["loss=ipo"], "loss._target_ 'prefopt.losses.DPOLoss' -> 'prefopt.losses.IPOLoss'"),
    (["seed=1"], "seed 0 -> 1"),
    (["data.source.judge_bias=0.5"], "the train pairs"),
])
def test_resume_with_other_settings_or_data_is_refused(stopped_run, cache_root, tmp_path, change, named):
    (stopped_run / "results.json").unlink(missing_ok=True)
    proc = run_cli([*SHORT, *change, f"hydra.run.dir={stopped_run}", "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"cannot resume from {stopped_run / 'checkpoints' / 'last.ckpt'}" in line and named in line
    assert json.loads((stopped_run / "results.json").read_text())["status"] == "failed"


def jsonl_run(pairs, run_dir, steps):
    return ["data=jsonl", f"data.path={pairs}", "loss=dpo", "logger=none", f"trainer.max_steps={steps}",
            "model.vocab_size=300", f"hydra.run.dir={run_dir}",
            "optim.warmup_ratio=0", "optim.min_lr_ratio=1"]  # a constant lr: steps 1-2 alike whatever max_steps


def write_pairs(path, n):
    rows = [{"prompt": f"{i} plus {i} is", "chosen": f" {2 * i}", "rejected": f" {2 * i + 1}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_resume_after_rows_are_appended_trains_on_the_checkpoints_rows_and_tokenizer(cache_root, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 40)
    assert run_cli(jsonl_run(pairs, tmp_path / "full", 4), cache_root, tmp_path).returncode == 0  # uninterrupted
    assert run_cli(jsonl_run(pairs, tmp_path / "run", 2), cache_root, tmp_path).returncode == 0
    (tmp_path / "run" / "results.json").unlink()
    with pairs.open("a") as fh:  # new words, often enough to change the BPE merges of a rebuilt tokenizer
        fh.write(10 * (json.dumps({"prompt": "zebra quagga", "chosen": " xylophone", "rejected": " yak"}) + "\n"))
    proc = run_cli([*jsonl_run(pairs, tmp_path / "run", 4), "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reading the data as its run did (data.source.max_rows=40; rows added since are left out)" in proc.stdout
    full, resumed = (json.loads((tmp_path / d / "results.json").read_text())["info"] for d in ("full", "run"))
    assert resumed["resumed_from"]["step"] == 2 and resumed["pin"] == {"max_rows": 40}
    assert resumed["rows"] == full["rows"] == {"train": 38, "eval": 2}  # the appended 10 rows are not read
    assert resumed["data"]["train/pairs"] == full["data"]["train/pairs"] == 38
    tokenizer = [json.loads((tmp_path / d / "model" / "tokenizer.json").read_text())["model"]["vocab"]
                 for d in ("full", "run")]
    assert tokenizer[0] == tokenizer[1] and "zebra" not in tokenizer[1]  # the checkpoint's token ids
    assert metrics(tmp_path / "run") == metrics(tmp_path / "full")


@pytest.mark.slow
def test_resume_when_the_trained_rows_are_gone_or_edited_is_refused(cache_root, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 40)
    assert run_cli(jsonl_run(pairs, tmp_path / "run", 2), cache_root, tmp_path).returncode == 0
    (tmp_path / "run" / "results.json").unlink()
    write_pairs(pairs, 30)  # rows deleted: the first 40 are no longer there
    proc = run_cli([*jsonl_run(pairs, tmp_path / "run", 4), "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "the data it trained on is no longer there (its run read {'max_rows': 40}, the data now gives " \
           "{'max_rows': 30})" in line
    write_pairs(pairs, 40)
    pairs.write_text(pairs.read_text().replace('"rejected": " 1"', '"rejected": " zebra"'))  # row 0 edited
    proc = run_cli([*jsonl_run(pairs, tmp_path / "run", 4), "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot resume from" in proc.stderr and "pairs (rows, order, split or tokenization)" in proc.stderr


@pytest.mark.slow
def test_ckpt_path_last_without_a_checkpoint_stops_unless_fresh_is_allowed(cache_root, tmp_path):
    proc = run_cli([*SHORT, f"hydra.run.dir={tmp_path / 'a'}", "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"ckpt_path=last: {tmp_path / 'a' / 'checkpoints'} has no readable checkpoint" in proc.stderr
    proc = run_cli([*SHORT, f"hydra.run.dir={tmp_path / 'b'}", "ckpt_path=last_or_fresh"], cache_root, tmp_path)
    assert proc.returncode == 0 and "starting fresh" in proc.stdout


def test_record_leaves_out_what_a_resume_may_change():
    from omegaconf import OmegaConf

    from prefopt.train.resume import differences, flat_config

    cfg = OmegaConf.create({"seed": 0, "loss": {"beta": 0.1}, "trainer": {"max_steps": 10, "precision": "32"},
                            "paths": {"cache_dir": "/x"}, "logger": {"csv": True}, "ckpt_path": None})
    assert flat_config(cfg) == {"seed": 0, "loss.beta": 0.1, "trainer.precision": "32"}
    base = {"tokenizer": "t", "train_pairs": "a", "eval_pairs": "b", "config": flat_config(cfg)}
    longer = OmegaConf.merge(cfg, {"trainer": {"max_steps": 50}, "paths": {"cache_dir": "/y"}})
    assert differences(base, {**base, "config": flat_config(longer)}) == []
    other = {**base, "eval_pairs": "c", "config": {**base["config"], "loss.beta": 0.2}}
    assert differences(base, other) == ["the eval pairs (rows, order, split or tokenization)", "loss.beta 0.1 -> 0.2"]
