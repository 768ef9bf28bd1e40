"""The sensitivity analysis on a hand-made multirun folder whose numbers are worked out by hand:
prefopt.analysis (tables, statistics, bootstrap, plots, report) and the `src/analyze.py` CLI.

Run: `.venv/bin/python -m pytest tests/test_analyze.py -q`.
"""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from prefopt.analysis import analyze, grid_table, load_runs, method_summary, pairwise_differences, study_settings

matplotlib.use("Agg")  # figures to files only
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"dpo": "prefopt.losses.DPOLoss", "ipo": "prefopt.losses.IPOLoss", "rmipo": "prefopt.losses.RMiPOLoss"}

# method -> β -> oracle reward of seeds 0 and 1
SCORES = {
    "dpo": {0.1: [0.50, 0.60], 0.3: [0.80, 0.82], 1.0: [0.80, 0.84]},  # means .55 .81 .82
    "ipo": {0.3: [0.69, 0.71], 1.0: [0.70, 0.70]},                    # means .70 .70
    "rmipo": {2.0: [0.70, 0.70], 5.0: [0.71, 0.69]},                  # means .70 .70
}


def write_run(folder: Path, method: str, beta: float, seed: int, score: float, hydra_record: bool = True,
              status: str = "completed", steps: int = 0) -> None:
    folder.mkdir(parents=True)
    config = {"seed": seed, "loss": {"_target_": TARGETS[method], "beta": beta}, "optim": {"lr": 1e-4},
              "sweep": {"name": "handmade", "score": "eval/oracle_reward", "tolerance": 0.02,
                        "defaults": {"optim": {"lr": 1e-4}}}}
    metrics = {} if status != "completed" else {
        "eval/oracle_reward": score, "eval/oracle_reward_start": 0.6, "eval/kl": 10 * (1 - beta / 10),
        "eval/win_rate": 0.5, "eval/length": 7.0, "train/loss": 0.3}
    record = {"status": status, "metrics": metrics, "config": config, "seed": seed, "wall_time_s": 1.0}
    if status != "completed":
        record["error"] = "loss.beta must be a number > 0"
    (folder / "results.json").write_text(json.dumps(record))
    if hydra_record:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      loss: {method}\n")
    if steps:
        (folder / "csv").mkdir()
        rows = [{"step": s, "train/margin/mean": 1.6 - s / 100, "train/pmi/delta": s / 50} for s in range(steps)]
        rows.append({"step": 0, "train/margin/mean": 0.3, "eval/oracle_reward": score})  # end-of-run summary
        pd.DataFrame(rows).to_csv(folder / "csv" / "metrics.csv", index=False)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    for method, grid in SCORES.items():
        for beta, scores in grid.items():
            for seed, score in enumerate(scores):
                # rmipo runs have no .hydra record: their method comes from RMiPOLoss.name
                write_run(root / method / f"beta={beta},seed={seed}", method, beta, seed, score,
                          hydra_record=method != "rmipo", steps=30 if method == "rmipo" else 0)
    write_run(root / "dpo" / "beta=-1,seed=0", "dpo", -1.0, 0, 0.0, status="failed")
    return root


@pytest.fixture(scope="module")
def summary(multirun):
    runs = load_runs(multirun)
    return method_summary(runs, study_settings(runs), n_boot=500).set_index("method")


def test_runs_table_has_methods_seeds_metrics_and_config(multirun):
    runs = load_runs(multirun)
    assert len(runs) == 15 and (runs["status"] == "failed").sum() == 1
    assert sorted(runs["method"].unique()) == ["dpo", "ipo", "rmipo"]
    row = runs[(runs["method"] == "dpo") & (runs["loss.beta"] == 0.3) & (runs["seed"] == 1)].iloc[0]
    assert row["eval/oracle_reward"] == pytest.approx(0.82) and row["optim.lr"] == pytest.approx(1e-4)
    settings = study_settings(runs)
    assert (settings.name, settings.score, settings.tolerance) == ("handmade", "eval/oracle_reward", 0.02)
    assert settings.defaults == {"optim.lr": pytest.approx(1e-4)}
    assert study_settings(runs, tolerance=0.1).tolerance == 0.1


def test_summary_numbers_by_hand(summary):
    dpo = summary.loc["dpo"]
    assert dpo["best"] == pytest.approx(0.82)
    assert dpo["median"] == pytest.approx(0.81)
    assert dpo["worst"] == pytest.approx(0.55)
    assert dpo["range"] == pytest.approx(0.27)
    assert dpo["share_within_tol"] == pytest.approx(2 / 3)  # .82 and .81 are within .02 of .82
    assert dpo["regret_default"] == pytest.approx(0.27)  # DPOLoss's default β is 0.1
    assert dpo["default_point"] == "beta=0.1" and dpo["best_point"] == "beta=1"
    assert dpo["seed_sd"] == pytest.approx(np.sqrt((0.005 + 0.0002 + 0.0008) / 3))
    assert (dpo["points"], dpo["runs"], dpo["seeds_per_point"]) == (3, 6, 2)  # the failed run is not a point
    rmipo = summary.loc["rmipo"]
    assert rmipo["range"] == pytest.approx(0.0, abs=1e-9) and rmipo["share_within_tol"] == 1.0
    assert rmipo["regret_default"] == pytest.approx(0.0, abs=1e-9)  # RMiPOLoss's default β is 2
    ipo = summary.loc["ipo"]  # IPOLoss's default β (0.1) is not on its grid: no regret
    assert np.isnan(ipo["regret_default"]) and np.isnan(ipo["regret_default_lo"])
    assert ipo["default_point"] == "" or pd.isna(ipo["default_point"])


def test_bootstrap_intervals_bracket_the_estimates(summary):
    dpo = summary.loc["dpo"]
    # resampled best = max of seed-means drawn from {.80,.81,.82} (β .3) and {.80,.82,.84} (β 1)
    assert 0.80 <= dpo["best_lo"] <= 0.82 <= dpo["best_hi"] <= 0.84
    assert dpo["range_lo"] >= 0.80 - 0.60 and dpo["range_hi"] <= 0.84 - 0.50
    rmipo = summary.loc["rmipo"]
    assert rmipo["range_lo"] >= 0 and rmipo["range_hi"] <= 0.01 + 1e-9


def test_differences_beyond_seed_noise(multirun):
    runs = load_runs(multirun)
    pairs = pairwise_differences(runs, study_settings(runs), n_boot=500).set_index(["a", "b", "stat"])
    assert pairs.loc[("dpo", "rmipo", "range"), "diff"] == pytest.approx(0.27)
    assert pairs.loc[("dpo", "rmipo", "range"), "exceeds_noise"]  # resampled ranges: >= .20 vs <= .01
    assert pairs.loc[("dpo", "rmipo", "median"), "exceeds_noise"]  # >= .80 vs <= .71
    assert not pairs.loc[("ipo", "rmipo", "range"), "exceeds_noise"]  # both resample within [0, .01]
    assert not pairs.loc[("ipo", "rmipo", "median"), "exceeds_noise"]


def test_grid_table_means_and_extras(multirun):
    runs = load_runs(multirun)
    grid = grid_table(runs, study_settings(runs))
    dpo = grid[grid["method"] == "dpo"].set_index("loss.beta")
    assert list(dpo.index) == [0.1, 0.3, 1.0]
    assert dpo.loc[0.1, "score_mean"] == pytest.approx(0.55) and dpo.loc[0.1, "is_default"]
    assert dpo.loc[0.1, "score_sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert dpo.loc[1.0, "eval/kl"] == pytest.approx(9.0)


def test_unknown_score_names_the_metrics(multirun):
    runs = load_runs(multirun)
    with pytest.raises(KeyError, match="eval/nope.*eval/oracle_reward"):
        method_summary(runs, study_settings(runs, score="eval/nope"))


def test_analyze_writes_report_tables_and_figures(multirun, tmp_path):
    written = analyze(multirun, tmp_path / "report", n_boot=300)
    for name in ("sensitivity.md", "sensitivity.csv", "grid.csv", "runs.csv", "curves.csv",
                 "score_vs_beta.png", "reward_vs_kl.png", "training_margin_delta.png"):
        assert written[name].exists(), name
    for name in ("score_vs_beta.png", "reward_vs_kl.png", "training_margin_delta.png"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(written["sensitivity.csv"]).set_index("method")
    assert table.loc["dpo", "range"] == pytest.approx(0.27)
    text = written["sensitivity.md"].read_text()
    assert "| **dpo** | 0.820 [" in text and "regret at default" in text
    assert "range over the grid: rmipo is narrower than dpo by 0.270" in text
    assert "beta=-1,seed=0" in text and "loss.beta must be a number > 0" in text  # the failed run
    curves = pd.read_csv(written["curves.csv"])
    assert set(curves["run"].str.split("/").str[0]) == {"rmipo"} and len(curves) == 4 * 30  # no summary rows
    assert curves.groupby("run")["train/margin/mean"].first().tolist() == pytest.approx([1.6] * 4)

    again = analyze(written["runs.csv"], tmp_path / "again", n_boot=300)  # from the saved tables
    assert pd.read_csv(again["sensitivity.csv"])["best"].tolist() == pytest.approx(
        pd.read_csv(written["sensitivity.csv"])["best"].tolist())
    assert again["training_margin_delta.png"].exists()


def test_cli_writes_into_the_folder_and_fails_cleanly(multirun, tmp_path, capsys):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "analyze.py"), str(multirun), "--out", str(out),
                           "--boot", "200"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "sensitivity.md").exists() and "sensitivity.md" in proc.stdout

    cli = runpy.run_path(str(ROOT / "src" / "analyze.py"))  # the same main(), in this process
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli["main"]([str(empty)]) == 1
    assert "error: no results.json under" in capsys.readouterr().err
    assert cli["main"]([str(multirun), "--out", str(tmp_path / "x"), "--score", "eval/nope"]) == 1
    assert "no run has the metric 'eval/nope'" in capsys.readouterr().err
    assert cli["main"]([str(multirun), "--out", str(tmp_path / "x"), "--methods", "dpo,simpo"]) == 1
    assert "no runs of method(s) ['simpo']" in capsys.readouterr().err
    assert cli["main"]([str(multirun), "--out", str(tmp_path / "two"), "--methods", "ipo,rmipo", "--boot", "50"]) == 0
    assert pd.read_csv(tmp_path / "two" / "sensitivity.csv")["method"].tolist() == ["ipo", "rmipo"]
