"""The cost of tuning: the expected best score after k trials drawn at random from a method's grid
("Show Your Work", Dodge et al. 2019), by hand and against brute-force enumeration of every k-subset;
its per-seed curve, `k_within_tolerance`, the `tuning_cost` statistic compared paired by seed, and where
the report, the tables and the figure show it (prefopt.analysis.stats, report, plots).

Run: `.venv/bin/python -m pytest tests/test_tuning_cost.py -q`.
"""

import time
from itertools import combinations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from test_analyze import make_runs

from prefopt.analysis import (
    analyze, expected_max, grid_table, markdown_report, method_summary, pairwise_differences, study_settings,
    tuning_curves,
)
from prefopt.analysis.stats import k_within_tolerance, method_grids, midpoint, tuning_k

matplotlib.use("Agg")


def test_expected_max_by_hand():
    # sorted 1, 2, 3, 4: k=1 the mean; k=2 (1·1 + 2·2 + 3·3 ... ) = (2·1 + 3·2 + 4·3) / C(4, 2) = 20/6;
    # k=3 (3·C(2,2) + 4·C(3,2)) / C(4,3) = 15/4; k=4 the maximum
    assert expected_max(np.array([4.0, 2.0, 1.0, 3.0])) == pytest.approx([2.5, 20 / 6, 3.75, 4.0])
    assert expected_max(np.array([0.7])) == pytest.approx([0.7])
    assert expected_max(np.array([np.nan, 1.0, 2.0])) == pytest.approx([1.5, 2.0])  # a missing run is no point
    assert len(expected_max(np.array([np.nan]))) == 0
    assert expected_max(np.array([0.5, 0.5, 0.5])) == pytest.approx([0.5] * 3)  # ties


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_expected_max_equals_the_mean_over_every_k_subset(n):
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), np.round(rng.normal(size=n), 1)):  # the second with ties
        brute = [np.mean([max(s) for s in combinations(values, k)]) for k in range(1, n + 1)]
        assert expected_max(values) == pytest.approx(brute, rel=1e-12, abs=1e-12)


TWO = {"a": {(1.0, 1e-4): [0.1, 0.2], (2.0, 1e-4): [0.3, 0.3], (3.0, 1e-4): [0.5, 0.7]},
       "b": {(1.0, 1e-4): [0.2, 0.2], (2.0, 1e-4): [0.2, 0.4], (3.0, 1e-4): [0.4, 0.4]}}


def test_tuning_cost_is_compared_paired_by_seed_at_the_same_k():
    """N = 3, k = (3+1)//2 = 2: weights 0, 1/3, 2/3 on the sorted scores. a: seed 0 (.3 + 2·.5)/3 = .4333,
    seed 1 (.3 + 2·.7)/3 = .5667; b: (.2 + 2·.4)/3 = .3333, (.4 + 2·.4)/3 = .4; a − b = (.1, .1667)."""
    runs = make_runs(TWO)
    settings = study_settings(runs, compare=("tuning_cost",))
    grids = method_grids(runs, settings)
    assert midpoint(grids) == 2 and tuning_k(grids, settings) == 2
    row = pairwise_differences(runs, settings).set_index("stat").loc["tuning_cost"]
    assert (row["a"], row["b"], row["n_seeds"]) == ("a", "b", 2)
    assert row["diff"] == pytest.approx((0.1 + 1 / 6) / 2)
    t = row["diff"] / (np.std([0.1, 1 / 6], ddof=1) / np.sqrt(2))
    assert row["p"] == pytest.approx(1 - 2 / np.pi * np.arctan(t))  # t with 1 df is Cauchy
    at_three = pairwise_differences(runs, study_settings(runs, compare=("tuning_cost",), tuning_k=3))
    assert at_three["diff"].iloc[0] == pytest.approx(0.2)  # k = N: the grid maxima, (.5 − .4 + .7 − .4) / 2
    summary = method_summary(runs, settings).set_index("method")
    assert summary.loc["a", "tuning_cost"] == pytest.approx(0.5) and summary.loc["a", "tuning_k"] == 2
    assert summary.loc["b", "tuning_cost"] == pytest.approx((1 / 3 + 0.4) / 2)


def test_k_within_tolerance_on_the_seed_mean_scores():
    """a's seed-means .15, .30, .60: the curve .35, (.30 + 2·.60)/3 = .50, .60; within .02 of .60 only
    at k = 3; within .1: k = 2. b's .20, .30, .40: .30, (.30 + .80)/3 = .3667, .40; within .05: k = 2."""
    runs = make_runs(TWO)
    grids = {g.method: g for g in method_grids(runs, study_settings(runs))}
    assert expected_max(grids["a"].means) == pytest.approx([0.35, 0.5, 0.6])
    assert k_within_tolerance(grids["a"], 0.02) == 3 and k_within_tolerance(grids["a"], 0.1) == 2
    assert k_within_tolerance(grids["b"], 0.05) == 2 and k_within_tolerance(grids["b"], 0.2) == 1
    summary = method_summary(runs, study_settings(runs, tolerance=0.1)).set_index("method")
    assert summary["k_within_tolerance"].to_dict() == {"a": 2, "b": 1}  # b: .30 is within .1 of .40


def test_the_curve_table_has_a_seed_band_and_ends_at_the_best():
    runs = make_runs(TWO)
    table = tuning_curves(runs, study_settings(runs)).set_index(["method", "k"])
    assert list(table.loc["a"].index) == [1, 2, 3]
    a2 = table.loc[("a", 2)]
    assert a2["expected_best"] == pytest.approx(0.5) and a2["n_seeds"] == 2
    half = 12.7062047 * np.std([0.4 + 0.1 / 3, 0.5 + 0.2 / 3], ddof=1) / np.sqrt(2)  # t(.975, 1)
    assert (a2["lo"], a2["hi"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert table.loc[("a", 3), "expected_best"] == pytest.approx(0.6)  # mean over seeds of each seed's max
    assert table.loc[("a", 3), "seed_mean_curve"] == pytest.approx(0.6)  # the best seed-mean


def test_report_table_figure_and_family(tmp_path):
    runs = make_runs(TWO)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    written = analyze(tmp_path / "runs.csv", tmp_path / "out")
    assert written["tuning_cost.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(written["tuning_cost.csv"])) == 6  # 2 methods × k = 1 … 3
    text = written["sensitivity.md"].read_text()
    assert "| expected best after k trials | k within 0.02 |" in text
    assert "| 0.500 [" in text and "(k=2) | 3 of 3 |" in text and "![tuning_cost.png](tuning_cost.png)" in text
    assert "Dodge et al. 2019" in text
    settings = study_settings(runs, compare=("best", "tuning_cost"))
    pairs = pairwise_differences(runs, settings)
    text = markdown_report(runs, settings, method_summary(runs, settings), pairs, grid_table(runs, settings))
    assert "every pair of methods × (best, expected best after k random trials), 2 comparisons" in text
    assert "| a | b | expected best after k random trials | 0.133 |" in text


def test_single_point_methods_draw_no_tuning_curve(tmp_path):
    runs = make_runs({"a": {(0.1, 1e-4): [0.5, 0.6]}, "b": {(0.1, 1e-4): [0.4, 0.5]}})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    written = analyze(tmp_path / "runs.csv", tmp_path / "out")
    assert "tuning_cost.png" not in written
    text = written["sensitivity.md"].read_text()
    assert "- not drawn: `tuning_cost.png`: every method has a single grid point" in text
    assert method_summary(runs, study_settings(runs))["k_within_tolerance"].tolist() == [1, 1]


@pytest.mark.slow  # wandb starts its service process
def test_the_wandb_study_run_holds_the_tuning_table_and_figure(tmp_path, monkeypatch):
    from wandb_records import offline_runs

    from prefopt.analysis.wandb_study import log_study

    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = make_runs(TWO)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    written = analyze(tmp_path / "runs.csv", tmp_path / "out")
    log_study(tmp_path / "runs.csv", written)
    for _ in range(100):  # wandb's service finishes writing the offline file just after run.finish() returns
        (run,) = offline_runs(tmp_path / "out")
        if run.history:
            break
        time.sleep(0.1)
    row = run.history[0]
    assert row["study/tuning_cost/nrows"] == 6 and row["plots/tuning_cost/_type"] == "image-file"
