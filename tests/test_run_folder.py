"""A run folder answers only for the config it ran, and one run at a time (prefopt.run.folder); a multirun
job's folder name carries every override and stays under the name limit (prefopt.config.launcher
.job_dirname); a multirun in which a job failed says which and exits 1 (prefopt.run.sweep_outcome)."""

import json
import os

import pytest
from omegaconf import OmegaConf

from prefopt.config.launcher import job_dirname
from prefopt.run import folder, sweep_outcome
from prefopt.run.folder import FolderTaken, completed_metrics, hold, release
from prefopt.run.results import write_results
from test_run import SMALL_SORT, run_cli

DPO = {"loss": {"_target_": "prefopt.losses.DPOLoss", "beta": 0.1}, "optim": {"lr": 1e-4}, "seed": 0,
       "logger": {"name": "csv"}, "threads": 1}


def completed(run_dir, config):
    write_results(run_dir / "results.json", status="completed", metrics={"eval/oracle_reward": 0.75}, config=config)


def test_a_completed_folder_is_skipped_only_for_its_own_config(tmp_path):
    completed(tmp_path, DPO)
    same = OmegaConf.create({**DPO, "logger": {"name": "wandb"}, "threads": 4})  # no number changes
    assert completed_metrics(tmp_path, same) == {"eval/oracle_reward": 0.75}
    other = OmegaConf.create({**DPO, "loss": {"_target_": "prefopt.losses.IPOLoss", "beta": 0.5}})
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(FolderTaken) as err:
        completed_metrics(tmp_path, other)
    message = str(err.value)
    assert "loss._target_ 'prefopt.losses.DPOLoss' -> 'prefopt.losses.IPOLoss'" in message
    assert "loss.beta 0.1 -> 0.5" in message and "hydra.run.dir" in message and "\n" not in message
    assert (tmp_path / "results.json").read_bytes() == before


def test_no_completed_run_means_nothing_to_skip(tmp_path):
    assert completed_metrics(tmp_path, OmegaConf.create(DPO)) is None
    write_results(tmp_path / "results.json", status="failed", error="x", metrics={}, config=DPO)
    assert completed_metrics(tmp_path, OmegaConf.create(DPO)) is None


def test_a_second_holder_of_a_run_folder_is_refused_naming_the_first(tmp_path):
    first = hold(tmp_path)
    with pytest.raises(FolderTaken, match=rf"in use by another run \(pid {os.getpid()} on "):
        hold(tmp_path)
    release(first)
    release(hold(tmp_path))  # free again


def test_the_run_folder_lock_never_follows_a_symlink(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / folder.LOCK_NAME).symlink_to(target)
    with pytest.raises(Exception, match="symbolic link"):
        hold(tmp_path / "run")
    assert target.read_text() == "keep"


def test_job_folder_names_stay_short_and_distinct():
    assert job_dirname("loss=dpo,sweep=smoke") == "loss=dpo,sweep=smoke"
    assert job_dirname("data.path=/data/a.jsonl") == "data.path=_data_a.jsonl"  # one folder, not nested ones
    long_a, long_b = "tags=[" + "a" * 250 + "]", "tags=[" + "a" * 249 + "b]"
    name_a, name_b = job_dirname(long_a), job_dirname(long_b)
    assert len(name_a) <= 200 and len(name_b) <= 200 and name_a != name_b
    assert name_a.startswith("tags=[aaaa") and name_a == job_dirname(long_a)


def test_sweep_outcome_tallies_the_jobs_of_this_multirun(tmp_path):
    cfg = OmegaConf.create({**DPO, "method": "dpo", "objective": "eval/oracle_reward"})
    sweep_outcome.note(tmp_path, 0, tmp_path / "0_a", "completed", None,
                       sweep_outcome.job_row(cfg, {"eval/oracle_reward": 0.812345}))
    sweep_outcome.note(tmp_path, 1, tmp_path / "1_b", "failed", "loss: beta=-1 is not allowed")
    jobs = sweep_outcome.read_jobs(tmp_path, since=0)
    assert sweep_outcome.table(jobs) == [
        "job  method  beta  lr      seed  status     eval/oracle_reward",
        "0    dpo     0.1   0.0001  0     completed  0.8123",
        "1    -       -     -       -     failed     -",
    ]
    assert [j["status"] for j in jobs] == ["completed", "failed"]
    assert sweep_outcome.summary(jobs) == [
        "multirun: 1 of 2 jobs completed, 1 did not",
        f"  job 1 failed: loss: beta=-1 is not allowed ({tmp_path / '1_b'})",
    ]
    assert sweep_outcome.read_jobs(tmp_path, since=jobs[-1]["time"] + 1) == []  # an earlier multirun's lines
    callback = sweep_outcome.SweepOutcome()
    callback.started = 0
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert sweep_outcome.exit_code() == 1
    sweep_outcome.FAILED.clear()


@pytest.mark.slow
def test_rerun_into_a_completed_folder_with_another_config_is_refused(cache_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*SMALL_SORT, "loss=dpo", "trainer.max_steps=3", f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = (run_dir / "results.json").read_bytes()
    proc = run_cli([*SMALL_SORT, "loss=ipo", "loss.beta=0.5", "trainer.max_steps=3", f"hydra.run.dir={run_dir}"],
                   cache_root, tmp_path)
    assert proc.returncode == 1
    assert "holds a completed run of another config" in proc.stderr and "loss.beta" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run_dir / "results.json").read_bytes() == before
    proc = run_cli([*SMALL_SORT, "loss=dpo", "trainer.max_steps=3", f"hydra.run.dir={run_dir}"], cache_root, tmp_path)
    assert proc.returncode == 0 and "already completed with this config: skipping" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_multirun_with_a_failed_job_runs_the_others_and_exits_1(cache_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *SMALL_SORT, "loss=dpo", "trainer.max_steps=3", "checkpoint.enabled=false",
                    "loss.beta=-1,0.1", f"hydra.sweep.dir={sweep}", f"tags=[{'x' * 250}]"], cache_root, tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "multirun: 1 of 2 jobs completed, 1 did not" in out
    assert "job 0 failed: loss: DPOLoss: beta=-1 is not allowed" in out
    done = [json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json")]
    assert sorted(done) == ["completed", "failed"]
    assert all(len(p.name) <= 205 for p in sweep.iterdir())  # a 250-character override: a hashed name
