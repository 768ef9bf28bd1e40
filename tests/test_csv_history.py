"""A resumed run keeps its CSV history (prefopt.train.csv_history): the rows before the checkpoint stay,
the rows an interrupted run logged after it are logged again by the resumed run, and the file ends equal,
step for step, to an uninterrupted run's; the progress lines say "resumed from step N"."""

import csv
import shutil

import pytest

from prefopt.train.csv_history import HistoryCSVLogger
from test_run import SMALL_SORT, run_cli

TIMED = ("perf/", "eval/")  # timings vary between runs; eval rows are compared in tests/test_resume.py


def rows(path):
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    return [{k: v for k, v in row.items() if v and not k.startswith(TIMED)} for row in table]


def test_rows_up_to_the_resumed_step_are_kept_and_the_new_ones_follow(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,train/loss\n5,0.69\n10,0.61\n15,0.55\n")
    logger = HistoryCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.resumed_at(10)  # the checkpoint was at step 10; the row of step 15 is logged again
    logger.log_metrics({"train/loss": 0.56, "val/loss": 0.6}, step=15)
    logger.save()
    assert rows(tmp_path / "csv" / "metrics.csv") == [
        {"step": "5", "train/loss": "0.69"}, {"step": "10", "train/loss": "0.61"},
        {"step": "15", "train/loss": "0.56", "val/loss": "0.6"}]


def test_a_fresh_start_in_the_folder_keeps_no_old_rows(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,train/loss\n5,0.69\n")
    logger = HistoryCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.resumed_at(0)
    logger.log_metrics({"train/loss": 0.7}, step=5)
    logger.save()
    assert rows(tmp_path / "csv" / "metrics.csv") == [{"step": "5", "train/loss": "0.7"}]


@pytest.mark.slow
def test_an_interrupted_and_resumed_run_has_the_uninterrupted_history(cache_root, tmp_path):
    args = [*SMALL_SORT, "loss=dpo", "trainer.max_steps=40", "checkpoint.every_n_train_steps=20", "checkpoint.keep=-1",
            "trainer.log_every_n_steps=5"]
    full = tmp_path / "full"
    proc = run_cli([*args, f"hydra.run.dir={full}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a run killed at its end after the step-20 checkpoint: its history has rows past the checkpoint
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "csv", killed / "csv")
    for path in (full / "checkpoints").glob("epoch=*-step=20.ckpt*"):
        shutil.copy(path, killed / "checkpoints" / path.name)
    proc = run_cli([*args, f"hydra.run.dir={killed}", "ckpt_path=last"], cache_root, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "resumed from step 20" in out
    expected = rows(full / "csv" / "metrics.csv")
    assert len([r for r in expected if "train/loss" in r]) >= 6
    assert rows(killed / "csv" / "metrics.csv") == expected
