"""What W&B holds after a multirun with `logger=wandb`, read back from the offline `.wandb` files with
wandb's own protobuf records (tests/wandb_records.py): names, group, job type, the `method` config key,
tags with the learning rate, curves without duplicates, a final row with `hp/*` values and the asked-for
number of samples, a failed run's exit code and status, a retried job logging into the same W&B run,
and the study run `python src/analyze.py DIR --wandb` adds.

Run: `.venv/bin/python -m pytest tests/test_wandb_records.py -q` (about a minute).
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from test_run import ROOT, SMALL_SORT, run_cli
from wandb_records import offline_runs

pytestmark = pytest.mark.slow  # every test here starts a run (`pytest -m "not slow"` skips them)

STEPS = 12  # validation every 3 steps (prefopt.train.trainer_factory.validation_steps): 4 points
ARGS = ["-m", "logger=wandb", "loss=dpo,simpo_margin_low", "optim.lr=1e-4,1e9", *SMALL_SORT,
        "eval.n_samples_logged=3", "checkpoint.enabled=false",  # lr 1e9: a non-finite loss, a failed run
        "hydra.sweep.subdir=job${hydra.job.num}"]  # short folder names (results are found by W&B name)


@pytest.fixture(scope="module")
def study(cache_root, tmp_path_factory):
    """4 jobs (2 complete, 2 fail), then the same command again (completed jobs skipped, failed ones
    retried): (sweep folder, {run name: [W&B runs]})."""
    tmp = tmp_path_factory.mktemp("wandb")
    sweep = tmp / "study_beta"
    for _ in range(2):
        proc = run_cli([*ARGS, f"hydra.sweep.dir={sweep}"], cache_root, tmp)
        assert proc.returncode == 1, proc.stderr[-3000:]  # 2 jobs failed: the multirun says so after all ran
        assert "multirun: 2 of 4 jobs completed, 2 did not" in proc.stdout + proc.stderr
    train = {}
    for run in offline_runs(sweep):
        train.setdefault(run.name, []).append(run)
    return sweep, train


@pytest.fixture(scope="module")
def study_runs(study):
    """The W&B runs `python src/analyze.py SWEEP --wandb` writes."""
    sweep, _ = study
    analysis = subprocess.run([sys.executable, str(ROOT / "src" / "analyze.py"), str(sweep), "--wandb"],
                              cwd=sweep.parent, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "WANDB_MODE": "offline"})
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert "W&B study run" in analysis.stdout
    return offline_runs(sweep / "wandb")


def completed(train):
    return {name: runs[0] for name, runs in train.items() if "lr0.0001" in name}


def test_names_group_tags_method_and_job_type(study):
    sweep, train = study
    assert set(train) == {f"{m}-beta{b}-lr{lr}-sort-seed0" for m, b in (("dpo", "0.1"), ("simpo_margin_low", "2"))
                          for lr in ("0.0001", "1e+09")}
    for name, runs in train.items():
        for run in runs:
            assert run.group == "study_beta" and run.job_type == "train"
            assert run.config["method"] == name.split("-")[0]
            assert f"method:{run.config['method']}" in run.tags and "lr:" + name.split("-lr")[1].split("-")[0] in run.tags


def test_curves_have_no_duplicates_and_validation_points(study):
    _, train = study
    for name, run in completed(train).items():
        keys = Counter()
        for row in run.history:
            assert not {"train_loss", "val_loss"} & set(row), name
            for key in row:
                if key.startswith(("train/", "val/")):
                    keys[(key, row["trainer/global_step"])] += 1
        assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]  # no value logged twice at a step
        val_steps = sorted(row["trainer/global_step"] for row in run.history if "val/loss" in row)
        assert val_steps == [3 - 1, 6 - 1, 9 - 1, 12 - 1]  # logged at the step index before the count
        final = run.history[-1]
        assert not any(k.startswith(("train/", "val/")) for k in final)  # no copy of the curves' last point
        assert final["trainer/global_step"] == STEPS
        assert {"eval/oracle_reward", "hp/beta", "hp/lr", "hp/seed", "perf/pairs_per_s"} <= set(final)
        assert final["hp/lr"] == pytest.approx(1e-4) and final["hp/beta"] == {"dpo": 0.1}.get(name[:3], 2.0)
        assert final["eval/samples/nrows"] == 3


def test_completed_runs_exit_0_with_status_and_final_metrics_in_summary(study):
    _, train = study
    for name, run in completed(train).items():
        assert len(train[name]) == 1  # completed jobs are skipped on the second pass: one W&B run
        assert run.exit_code == 0 and run.summary["status"] == "completed"
        assert {"eval/oracle_reward", "val/loss", "hp/beta"} <= set(run.summary)


def test_failed_runs_exit_1_and_a_retry_reuses_the_run_id(study):
    sweep, train = study
    failed = {name: runs for name, runs in train.items() if "lr1e+09" in name}
    assert len(failed) == 2
    for name, runs in failed.items():
        assert len(runs) == 2 and runs[0].id == runs[1].id  # the retry logs into the same W&B run
        for run in runs:
            assert run.exit_code == 1 and run.summary["status"] == "failed"
            assert "non-finite" in run.summary["error"]
        records = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
        record = next(r for r in records if r["info"].get("wandb", {}).get("name") == name)
        assert record["status"] == "failed" and record["info"]["wandb"]["id"] == runs[0].id


def test_the_study_run_holds_the_tables_and_plots(study_runs):
    assert len(study_runs) == 1
    run = study_runs[0]
    assert run.job_type == "study" and run.group == "study_beta" and run.exit_code == 0
    row = run.history[0]
    report = run.path.parents[2]  # the sweep folder, where analyze wrote its files
    assert row["study/methods/nrows"] == 2  # one row per method, as sensitivity.csv
    assert row["study/pairwise/nrows"] == len(pd.read_csv(report / "pairwise.csv")) > 0
    assert row["study/grid/nrows"] == len(pd.read_csv(report / "grid.csv"))
    assert row["study/report/_type"] == "html-file"
    pngs = sorted(p.stem for p in report.glob("*.png"))
    assert "reward_vs_kl" in pngs and all(row[f"plots/{name}/_type"] == "image-file" for name in pngs)
    table = json.loads((run.path.parent / "files" / row["study/methods/path"]).read_text())
    method = table["columns"].index("method")
    assert sorted(r[method] for r in table["data"]) == ["dpo", "simpo_margin_low"]
