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

from prefopt.analysis import (
    analyze, figure_plan, grid_table, load_runs, load_study, markdown_report, method_summary, pairwise_differences,
    plot_score_vs_param, study_settings, swept_keys,
)
from prefopt.analysis.runs import learning_rates, study_title
from prefopt.analysis.stats import CALIBRATED_SEEDS, PAIR_COLUMNS, holm, paired_t_p, seed_noise, t_interval

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


def make_runs(methods: dict, targets: str = "prefopt.losses.DPOLoss") -> pd.DataFrame:
    """A runs table as load_runs returns it: {method: {(β, lr): [score of seed 0, 1, ...]}}."""
    rows = []
    for method, grid in methods.items():
        for (beta, lr), scores in grid.items():
            for seed, score in enumerate(scores):
                rows.append({"run": f"{method}/beta={beta},lr={lr},seed={seed}", "status": "completed", "error": None,
                             "method": method, "seed": seed, "wall_time_s": 1.0, "eval/oracle_reward": score,
                             "loss._target_": targets, "loss.beta": beta, "optim.lr": lr})
    return pd.DataFrame(rows)


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
    return method_summary(runs, study_settings(runs)).set_index("method")


def test_runs_table_has_methods_seeds_metrics_and_config(multirun):
    runs = load_runs(multirun)
    assert len(runs) == 15 and (runs["status"] == "failed").sum() == 1
    assert sorted(runs["method"].unique()) == ["dpo", "ipo", "rmipo"]
    row = runs[(runs["method"] == "dpo") & (runs["loss.beta"] == 0.3) & (runs["seed"] == 1)].iloc[0]
    assert row["eval/oracle_reward"] == pytest.approx(0.82) and row["optim.lr"] == pytest.approx(1e-4)
    settings = study_settings(runs)
    assert (settings.name, settings.score, settings.tolerance) == ("handmade", "eval/oracle_reward", 0.02)
    assert settings.defaults == {"optim.lr": pytest.approx(1e-4)}
    assert settings.window == {"loss.beta": 0.5, "optim.lr": 0.5} and settings.focus is None
    assert settings.compare == ("best", "mean_regret", "regret_default") and settings.alpha == 0.05
    assert study_settings(runs, tolerance=0.1).tolerance == 0.1


def test_study_settings_read_the_sweep_section():
    runs = pd.DataFrame({"sweep.window.loss.beta": [1.0], "sweep.compare": ["['best']"], "sweep.focus": ["rmipo"],
                         "sweep.alpha": [0.1], "sweep.bounds.loss.gamma_min": ["[0.0, None]"]})
    settings = study_settings(runs)
    assert settings.window == {"loss.beta": 1.0} and settings.compare == ("best",)
    assert (settings.focus, settings.alpha, settings.bounds) == ("rmipo", 0.1, {"loss.gamma_min": [0.0, None]})


def test_a_runs_method_label_wins_and_study_bookkeeping_is_no_axis(tmp_path):
    write_run(tmp_path / "r", "rmipo", 2.0, 0, 0.7)  # .hydra says loss=rmipo
    record = json.loads((tmp_path / "r" / "results.json").read_text())
    record["config"]["method"] = "rmipo_marginal_reference"  # set by conf/sweep/knob/*_reference.yaml
    (tmp_path / "r" / "results.json").write_text(json.dumps(record))
    assert load_runs(tmp_path)["method"].tolist() == ["rmipo_marginal_reference"]
    runs = make_runs({"a": {(1.0, 1e-4): [0.5], (3.0, 1e-4): [0.6]}})
    runs["sweep.beta_step"] = ["b1", "b2"]  # the grid position a per-loss grid is swept by
    assert swept_keys(runs, "a") == ["loss.beta"]


def test_a_copy_of_an_axis_is_no_axis():
    """optim.optimizer.lr follows optim.lr (an interpolation in conf/train.yaml): one axis, the shallower."""
    runs = make_runs({"dpo": {(0.1, 1e-4): [0.5], (0.1, 3e-4): [0.6], (0.3, 1e-4): [0.7]}})
    runs["optim.optimizer.lr"] = runs["optim.lr"]
    runs["optim.scheduler.warmup"] = 0.1  # constant: no axis either
    assert swept_keys(runs) == ["loss.beta", "optim.lr"]
    runs["model.compile"] = [None, None, False]  # a setting added after the first two runs: no axis
    assert swept_keys(runs) == ["loss.beta", "optim.lr"]
    runs["model.compile"] = [None, True, False]  # two values where it is set: an axis
    assert swept_keys(runs) == ["loss.beta", "optim.lr", "model.compile"]


def test_summary_numbers_by_hand(summary):
    dpo = summary.loc["dpo"]
    assert dpo["best"] == pytest.approx(0.82)  # β=1: seeds .80 and .84
    # t-interval over 2 seeds: .82 ± t(.975, 1)·sd/√2, sd = .04/√2
    half = 12.7062047 * np.std([0.80, 0.84], ddof=1) / np.sqrt(2)
    assert (dpo["best_lo"], dpo["best_hi"]) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    # window: β within ½ decade of 1 (0.3 is 0.52 decades away, within the slack; 0.1 is not)
    assert dpo["mean_regret"] == pytest.approx(np.mean([0.80 - 0.80, 0.84 - 0.83]))
    assert dpo["share_within_tol"] == 1.0  # .81 and .82 are within .02 of .82
    assert dpo["regret_default"] == pytest.approx(0.27)  # DPOLoss's default β is 0.1: (.30 + .24) / 2
    assert dpo["default_point"] == "beta=0.1" and dpo["best_point"] == "beta=1"
    assert dpo["seed_sd"] == pytest.approx(np.sqrt((0.005 + 0.0002 + 0.0008) / 3))
    assert (dpo["points"], dpo["runs"], dpo["seeds_per_point"]) == (3, 6, 2)  # the failed run is not a point
    assert dpo["edges"] == "beta at upper edge (1)"
    assert not dpo["window_complete"] and "truncated: beta above 3.2, lr not swept" in dpo["window"]
    rmipo = summary.loc["rmipo"]
    assert rmipo["mean_regret"] == pytest.approx(0.0, abs=1e-9) and rmipo["share_within_tol"] == 1.0
    assert rmipo["regret_default"] == pytest.approx(0.0, abs=1e-9)  # RMiPOLoss's default β is 2
    ipo = summary.loc["ipo"]  # IPOLoss's default β (0.1) is not on its grid: no regret
    assert np.isnan(ipo["regret_default"]) and np.isnan(ipo["regret_default_lo"])
    assert ipo["default_point"] == "" or pd.isna(ipo["default_point"])


def test_t_interval_paired_t_and_holm_by_hand():
    mean, lo, hi, n = t_interval(np.array([1.0, 2.0, 3.0, np.nan]))
    assert (mean, n) == (2.0, 3) and (lo, hi) == (pytest.approx(2 - 4.30265 / np.sqrt(3), rel=1e-5),
                                                  pytest.approx(2 + 4.30265 / np.sqrt(3), rel=1e-5))
    assert np.isnan(t_interval(np.array([0.5]))[1])
    t = 2 / (1 / np.sqrt(3))
    assert paired_t_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(1 - t / np.sqrt(2 + t * t))  # df = 2
    assert paired_t_p(np.array([0.1, 0.1])) == 0.0 and paired_t_p(np.array([0.0, 0.0])) == 1.0
    assert np.isnan(paired_t_p(np.array([0.3])))
    adjusted = holm(np.array([0.01, 0.04, 0.03, np.nan]))
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[3])


def test_seed_noise_splits_the_shared_seed_effect():
    runs = make_runs({"a": {(1.0, 1e-4): [1.0, 2.0, 3.0], (2.0, 1e-4): [2.0, 4.0, 3.0]}})
    noise = seed_noise(runs, study_settings(runs))
    # centred rows [-1, 0, 1], [-1, 1, 0]: seed effects [-1, .5, .5], residual ss 1 over 2 df
    assert noise["residual_sd"] == pytest.approx(np.sqrt(0.5))
    assert noise["seed_effect_sd"] == pytest.approx(np.sqrt(0.75 - 0.5 / 2))
    assert (noise["points"], noise["seeds"]) == (2, 3)


def test_differences_are_paired_by_seed_with_holm(multirun):
    runs = load_runs(multirun)
    pairs = pairwise_differences(runs, study_settings(runs)).set_index(["a", "b", "stat"])
    row = pairs.loc[("dpo", "rmipo", "best")]
    assert row["diff"] == pytest.approx(0.12) and row["n_seeds"] == 2  # paired: [.80-.70, .84-.70]
    assert row["warning"].startswith("2 seeds: fewer than the 5 ")  # beside a verdict on too few seeds
    assert pairs.loc[("dpo", "rmipo", "mean_regret"), "warning"] == ""  # not tested: no verdict to warn about
    t = 0.12 / (np.std([0.10, 0.14], ddof=1) / np.sqrt(2))
    assert row["p"] == pytest.approx(1 - 2 / np.pi * np.arctan(t))  # t with 1 df is Cauchy
    assert pd.isna(pairs.loc[("dpo", "rmipo", "mean_regret"), "p"])  # windows truncated: not tested
    assert pairs.loc[("dpo", "rmipo", "mean_regret"), "note"].startswith("window truncated: dpo")
    assert ("ipo", "rmipo", "regret_default") not in pairs.index  # ipo has no default point
    tested = pairs[pairs["p"].notna()]
    assert list(tested["p_holm"]) == pytest.approx(list(holm(tested["p"].to_numpy())))
    assert not tested["verdict"].any()  # two seeds: nothing holds at family-wise 5%


def test_verdicts_with_five_seeds_and_a_focus():
    base = {(b, lr): [0.80, 0.81, 0.79, 0.80, 0.82] for b in (0.1, 0.3, 1.0) for lr in (1e-5, 3e-5, 1e-4)}
    base[(0.3, 3e-5)] = [0.85, 0.86, 0.84, 0.85, 0.87]  # an interior best
    better = {k: [v + 0.10 + 0.002 * i for i, v in enumerate(vals)] for k, vals in base.items()}
    runs = make_runs({"a": base, "b": better, "c": base}, targets="prefopt.losses.RMiPOLoss")
    settings = study_settings(runs, focus="a")
    pairs = pairwise_differences(runs, settings).set_index(["a", "b", "stat"])
    assert set(pairs.index.get_level_values("b")) == {"b", "c"}  # the focus against each other method
    assert pairs.loc[("a", "b", "best"), "verdict"] is True and pairs.loc[("a", "c", "best"), "verdict"] is False
    assert pairs.loc[("a", "b", "best"), "diff"] == pytest.approx(-0.104)
    assert pairs.loc[("a", "b", "mean_regret"), "note"] == ""  # complete 3 × 3 windows: tested
    assert (pairs["warning"] == "").all()  # five seeds: as many as the calibration's
    text = markdown_report(runs, settings, method_summary(runs, settings), pairwise_differences(runs, settings),
                           grid_table(runs, settings))
    assert "- best: b > a by 0.104" in text and "a against each other method" in text
    with pytest.raises(ValueError, match="sweep.focus='z' is not a method of this study"):
        pairwise_differences(runs, study_settings(runs, focus="z"))
    with pytest.raises(ValueError, match=r"sweep.compare has \['range'\]"):
        pairwise_differences(runs, study_settings(runs, compare=("best", "range")))


def test_one_seed_gives_no_verdict_and_no_verdict_sentence():
    runs = make_runs({"a": {(1.0, 1e-4): [0.8], (2.0, 1e-4): [0.7]}, "b": {(1.0, 1e-4): [0.5], (2.0, 1e-4): [0.6]}})
    settings = study_settings(runs)
    pairs = pairwise_differences(runs, settings)
    assert pairs["verdict"].isna().all() and set(pairs["note"]) == {"one seed"}
    text = markdown_report(runs, settings, method_summary(runs, settings), pairs, grid_table(runs, settings))
    assert "n/a (one seed)" in text
    assert "No difference holds" not in text and "Differences that hold" not in text
    assert "Seed noise: not measured (one seed per point)." in text


def test_best_on_a_grid_edge_is_flagged_per_axis():
    betas, lrs = (0.1, 0.3, 1.0, 3.0, 10.0), (1e-5, 3e-5, 1e-4)
    edge = {(b, lr): [0.5 + 0.01 * np.log10(b) - 0.01 * abs(np.log10(lr) + 4.5)] * 2 for b in betas for lr in lrs}
    inner = {(b, lr): [0.5 - 0.01 * abs(np.log10(b)) - 0.01 * abs(np.log10(lr) + 4.5)] * 2 for b in betas for lr in lrs}
    runs = make_runs({"edge": edge, "inner": inner})
    summary = method_summary(runs, study_settings(runs)).set_index("method")
    assert summary.loc["edge", "edges"] == "beta at upper edge (10)"
    assert summary.loc["edge", "window"] == "beta 3–10 × lr 1e-05–0.0001 (6 points); truncated: beta above 32"
    assert summary.loc["inner", "edges"] == "" and summary.loc["inner", "window_complete"]
    assert summary.loc["inner", "window"] == "beta 0.3–3 × lr 1e-05–0.0001 (9 points)"
    bounded = study_settings(runs, bounds={"loss.beta": [None, 10.0]})
    assert method_summary(runs, bounded).set_index("method").loc["edge", "edges"] == \
        "beta at natural upper bound (10)"
    text = markdown_report(runs, study_settings(runs), summary.reset_index(), pd.DataFrame(columns=PAIR_COLUMNS),
                           grid_table(runs, study_settings(runs)))
    assert "- edge: **best on the grid's edge: beta at upper edge (10)** (extend the grid)" in text
    assert "- inner: best is interior; window beta 0.3–3" in text


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
    written = analyze(multirun, tmp_path / "report")
    for name in ("sensitivity.md", "sensitivity.csv", "grid.csv", "runs.csv", "curves.csv", "pairwise.csv",
                 "score_vs_beta.png", "reward_vs_kl.png", "training_margin_delta.png"):
        assert written[name].exists(), name
    for name in ("score_vs_beta.png", "reward_vs_kl.png", "training_margin_delta.png"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(written["sensitivity.csv"]).set_index("method")
    assert table.loc["dpo", "regret_default"] == pytest.approx(0.27)
    pairs = pd.read_csv(written["pairwise.csv"])
    assert list(pairs.columns) == PAIR_COLUMNS and len(pairs) == len(pairs[["a", "b", "stat"]].drop_duplicates())
    text = written["sensitivity.md"].read_text()
    assert "| **dpo** | 0.820 [" in text and "regret at default" in text
    assert "No difference holds at the family-wise error rate." in text  # two seeds: 4 comparisons tested
    assert "every pair of methods × (best, mean regret in the window, regret at default), 4 comparisons" in text
    assert "beta=-1,seed=0" in text and "loss.beta must be a number > 0" in text  # the failed run
    curves = pd.read_csv(written["curves.csv"])
    assert set(curves["run"].str.split("/").str[0]) == {"rmipo"} and len(curves) == 4 * 30  # no summary rows
    assert curves.groupby("run")["train/margin/mean"].first().tolist() == pytest.approx([1.6] * 4)

    again = analyze(written["runs.csv"], tmp_path / "again")  # from the saved tables
    assert pd.read_csv(again["sensitivity.csv"])["best"].tolist() == pytest.approx(
        pd.read_csv(written["sensitivity.csv"])["best"].tolist())
    assert again["training_margin_delta.png"].exists()


def test_regenerating_from_runs_csv_is_identical(multirun, tmp_path):
    """analyze(runs.csv) twice in place writes the same bytes: the committed reports can be checked."""
    first = analyze(multirun, tmp_path / "report")
    once = analyze(first["runs.csv"])
    before = {name: path.read_bytes() for name, path in once.items() if not name.endswith(".png")}
    twice = analyze(first["runs.csv"])
    assert {name: twice[name].read_bytes() for name in before} == before


def test_report_states_the_sweeps_wall_time_from_when_runs_ended(multirun, tmp_path):
    """Runs record when they ended (results.json `finished_at`; older ones: the file's mtime); the report
    gives the span from the earliest start (end − run time) to the last end, and the summed run time."""
    from prefopt.analysis.report import _timing

    runs = make_runs({"dpo": {(0.1, 1e-4): [0.5, 0.6]}})
    runs["wall_time_s"] = [10.0, 50.0]
    runs["finished_at"] = [1000.0, 1100.0]  # starts 990 and 1050: the sweep spans 110 s
    assert _timing(runs).endswith("last run's end: 1.8 minutes") and "1.0 minutes of run time" in _timing(runs)
    assert "wall time, first" not in _timing(runs.drop(columns="finished_at"))  # old runs.csv: as before
    runs = make_runs({"dpo": {(0.1, 1e-4): [0.5, 0.6, 0.7]}})  # a third run two days later: a second sitting
    runs["wall_time_s"] = [10.0, 50.0, 30.0]
    runs["finished_at"] = [1000.0, 1100.0, 1100.0 + 2 * 86400]
    assert _timing(runs).endswith("in each of its 2 sittings: 1.8, 0.5 minutes (2.3 in all)")
    runs["finished_at"] = [1000.0, 1100.0, 1100.0 + 20 * 60 + 30]  # 20 minutes with no run going: a pause
    assert _timing(runs).endswith("in each of its 2 sittings: 1.8, 0.5 minutes (2.3 in all)")
    runs["finished_at"] = [1000.0, 1100.0, 1100.0 + 5 * 60 + 30]  # 5 minutes: the same sitting, 990 s to 1430 s
    assert _timing(runs).endswith("last run's end: 7.3 minutes")
    loaded = load_runs(multirun)  # the hand-made results.json have no `finished_at`: their mtime is used
    mtimes = [p.stat().st_mtime for p in multirun.rglob("results.json")]
    assert loaded["finished_at"].between(min(mtimes) - 1, max(mtimes) + 1).all()


COMMITTED = sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/runs.csv"))


@pytest.mark.parametrize("study", COMMITTED)
def test_committed_reports_regenerate_from_their_runs_csv(study):
    """`python src/analyze.py docs/results/<study>/runs.csv` reproduces the committed tables and text
    (checked here without drawing the figures)."""
    folder = ROOT / "docs" / "results" / study
    runs, _, settings = load_study(folder / "runs.csv")
    summary, pairs = method_summary(runs, settings), pairwise_differences(runs, settings)
    grid = grid_table(runs, settings)
    for name, table in (("sensitivity.csv", summary), ("pairwise.csv", pairs), ("grid.csv", grid)):
        assert table.to_csv(index=False) == (folder / name).read_text(), f"{study}/{name} is stale"
    curves = load_study(folder / "runs.csv")[1]
    figures, skipped = figure_plan(runs, curves, grid, settings)
    assert all((folder / name).exists() for name in figures) and not any((folder / name).exists() for name in skipped)
    command = f"python src/analyze.py docs/results/{study}/runs.csv"
    text = markdown_report(runs, settings, summary, pairs, grid, figures=list(figures), command=command,
                           skipped=skipped)
    assert text == (folder / "sensitivity.md").read_text(), f"{study}/sensitivity.md is stale"


def test_cli_piped_into_a_reader_that_leaves_writes_its_files_and_exits_quietly(multirun, tmp_path):
    """`python src/analyze.py ... | head`: the reader closes the pipe (here before the first line); the
    report is still written, and no traceback or logging error follows."""
    out = tmp_path / "piped"
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "analyze.py"), str(multirun), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # every write to stdout now fails with EPIPE
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err and "Logging error" not in err, err[-2000:]
    assert (out / "sensitivity.md").exists()


@pytest.mark.slow
def test_cli_writes_into_the_folder_and_fails_cleanly(multirun, tmp_path, capsys):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "analyze.py"), str(multirun), "--out", str(out)], capture_output=True, text=True, timeout=120)
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
    assert cli["main"]([str(multirun), "--out", str(tmp_path / "two"), "--methods", "ipo,rmipo"]) == 0
    assert pd.read_csv(tmp_path / "two" / "sensitivity.csv")["method"].tolist() == ["ipo", "rmipo"]


def test_a_price_on_drift_ranks_by_reward_minus_price_times_kl(tmp_path):
    """sweep.price: the score becomes reward − price·KL per run; the best moves to the point whose
    extra reward is worth its extra KL, and the report, grid and figure say what the score is."""
    runs = make_runs({"dpo": {(0.1, 1e-4): [0.60, 0.62], (0.1, 3e-4): [0.70, 0.72], (0.1, 1e-3): [0.80, 0.82]}})
    runs["eval/kl"] = runs["optim.lr"].map({1e-4: 5.0, 3e-4: 20.0, 1e-3: 120.0})
    runs["sweep.price"] = 0.002
    settings = study_settings(runs)
    assert (settings.price, settings.price_metric) == (0.002, "eval/kl")
    from prefopt.analysis.runs import priced_score

    priced = priced_score(runs, settings)
    assert settings.score == "eval/oracle_reward-0.002*eval/kl" and settings.reward == "eval/oracle_reward"
    # by hand: 0.61 − 0.01 = 0.60; 0.71 − 0.04 = 0.67; 0.81 − 0.24 = 0.57: the middle lr is best
    summary = method_summary(priced, settings).set_index("method")
    assert summary.loc["dpo", "best"] == pytest.approx(0.67)
    assert "lr=0.0003" in summary.loc["dpo", "best_point"]
    unpriced = method_summary(runs, study_settings(runs.drop(columns="sweep.price"))).set_index("method")
    assert unpriced.loc["dpo", "best"] == pytest.approx(0.81)  # without the price: the largest lr
    grid = grid_table(priced, settings)
    assert grid["eval/oracle_reward"].tolist() == pytest.approx([0.61, 0.71, 0.81])
    text = markdown_report(priced, settings, summary.reset_index(), pd.DataFrame(columns=PAIR_COLUMNS), grid)
    assert "minus 0.002 per nat of `eval/kl`" in text and "| oracle_reward |" in text
    with pytest.raises(ValueError, match="sweep.price must be >= 0"):
        priced_score(runs, study_settings(runs, price=-1.0))
    with pytest.raises(KeyError, match="needs the metric 'eval/kl'"):
        priced_score(runs.drop(columns="eval/kl"), study_settings(runs))


def test_a_priced_study_regenerates_from_its_runs_csv(multirun, tmp_path):
    """The priced column written to runs.csv is recomputed, not compounded, when the report is rebuilt."""
    source = tmp_path / "priced"
    import shutil

    shutil.copytree(multirun, source)
    for path in source.rglob("results.json"):
        record = json.loads(path.read_text())
        record["config"]["sweep"]["price"] = 0.01
        path.write_text(json.dumps(record))
    first = analyze(source, tmp_path / "report")
    best = pd.read_csv(first["sensitivity.csv"]).set_index("method")["best"]
    assert best["dpo"] == pytest.approx(0.82 - 0.01 * 9.0)  # β=1: reward .82 at KL 9 (write_run's KL)
    again = analyze(first["runs.csv"], tmp_path / "again")
    assert again["sensitivity.csv"].read_text() == first["sensitivity.csv"].read_text()
    assert "minus 0.01 per nat" in again["sensitivity.md"].read_text()


def test_the_price_can_be_overridden_and_zero_unprices(multirun, tmp_path):
    """`analyze(price=...)` / `--price`: another exchange rate for the same runs; 0 ranks by the reward."""
    priced = analyze(multirun, tmp_path / "priced", price=0.01)
    assert pd.read_csv(priced["sensitivity.csv"]).set_index("method")["best"]["dpo"] == pytest.approx(0.82 - 0.09)
    assert "--price 0.01" in priced["sensitivity.md"].read_text()
    plain = analyze(priced["runs.csv"], tmp_path / "plain", price=0)
    assert pd.read_csv(plain["sensitivity.csv"]).set_index("method")["best"]["dpo"] == pytest.approx(0.82)
    assert "per nat" not in plain["sensitivity.md"].read_text()


def test_the_calibrations_seed_count_is_the_one_warned_about():
    """CALIBRATED_SEEDS (the few-seeds warning) is the seed count the calibration simulates."""
    from test_stats_calibration import SEEDS

    assert CALIBRATED_SEEDS == SEEDS == 5


def two_seed_study(folder: Path) -> Path:
    """A runs.csv without `sweep.name` in `folder`: a and b over lr ∈ {1e-4, 3e-4} at one β, seeds 0 and 1.
    a's best: lr 3e-4 (.80, .90); b's best: lr 1e-4 (.60, .71); paired a − b = (.20, .19)."""
    runs = make_runs({"a": {(0.1, 1e-4): [0.50, 0.60], (0.1, 3e-4): [0.80, 0.90]},
                      "b": {(0.1, 1e-4): [0.60, 0.71], (0.1, 3e-4): [0.40, 0.50]}})
    folder.mkdir(parents=True)
    runs.to_csv(folder / "runs.csv", index=False)
    return folder / "runs.csv"


def test_the_cli_prints_a_headline_with_the_verdicts_that_hold(tmp_path, capsys):
    """Headline by hand: a's seeds .80, .90 → .85 ± t(.975, 1)·.0707/√2 = .85 ± .635; b's .60, .71 →
    .655 ± 12.706·.0778/√2 = .655 ± .699; a − b = (.20, .19): t = .195 / (.00707/√2) = 39 on 1 df,
    p = 1 − (2/π)·atan(39) = .0163 (the family's one test: best; the windows are truncated, no default
    lr) < .05: holds, on 2 seeds, fewer than the calibration's 5: warned beside it."""
    cli = runpy.run_path(str(ROOT / "src" / "analyze.py"))
    assert cli["main"]([str(two_seed_study(tmp_path / "my_study")), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[:5] == [
        "my_study: best eval/oracle_reward per method (95% t-interval over seeds)",
        "  a  0.850 [0.215, 1.485]  at lr=0.0003 (2 seeds a point)",
        "  b  0.655 [-0.044, 1.354]  at lr=0.0001 (2 seeds a point)",
        "verdicts that hold (Holm, family-wise 0.05):",
        "  best: a > b by 0.195 (⚠ only 2 seeds; calibrated for 5)",
    ]
    assert "sensitivity.md" in out  # then the files it wrote
    assert "1 verdict(s) rest on 2 seeds, fewer than the 5" in err
    pairs = pd.read_csv(tmp_path / "out" / "pairwise.csv").set_index("stat")
    assert pairs.loc["best", "p_holm"] == pytest.approx(1 - 2 / np.pi * np.arctan(39.0))
    assert pairs.loc["best", "verdict"] and pairs.loc["best", "warning"].startswith("2 seeds: fewer than the 5")
    text = (tmp_path / "out" / "sensitivity.md").read_text()
    assert "| a | b | best | 0.195 | " in text and "| 2 | 0.016 | **yes** ⚠ few seeds |" in text
    assert "**⚠ few seeds: 1 of these verdicts rest on 2 seeds, fewer than the 5" in text
    assert "- best: a > b by 0.195 (⚠ only 2 seeds; calibrated for 5)" in text


def test_a_study_without_a_name_is_titled_by_its_folder(tmp_path):
    runs, _, settings = load_study(two_seed_study(tmp_path / "my_study"))  # no sweep.name in its runs
    assert settings.name == "my_study"
    text = markdown_report(runs, settings, method_summary(runs, settings), pairwise_differences(runs, settings),
                           grid_table(runs, settings))
    assert text.startswith("# Sensitivity study: my_study\n")
    assert study_title(tmp_path / "multirun" / "2024-05-01" / "12-00-00") == "2024-05-01/12-00-00"  # Hydra's default
    assert study_title(tmp_path / "multirun" / "beta") == "beta"


def test_every_figure_not_drawn_is_named_with_the_reason(tmp_path, capsys):
    """β not swept (lr is), no KL logged, no training curves: three figures not drawn, each said why."""
    written = analyze(two_seed_study(tmp_path / "study"), tmp_path / "out")
    assert "score_vs_lr.png" in written and "score_vs_beta.png" not in written and "reward_vs_kl.png" not in written
    err = capsys.readouterr().err
    assert ("not drawn: score_vs_beta.png: loss.beta is not swept (one value per method); "
            "the score is drawn against optim.lr") in err
    text = written["sensitivity.md"].read_text()
    assert "![score_vs_lr.png](score_vs_lr.png)" in text
    assert ("- not drawn: `score_vs_beta.png`: loss.beta is not swept (one value per method); "
            "the score is drawn against optim.lr") in text
    assert "- not drawn: `reward_vs_kl.png`: no run logged eval/kl" in text
    assert "- not drawn: `training_margin_delta.png`: no run logged train/margin/mean or train/pmi/delta" in text
    one_point = make_runs({"a": {(0.1, 1e-4): [0.5]}})
    grid = grid_table(one_point, study_settings(one_point))
    assert figure_plan(one_point, pd.DataFrame(), grid, study_settings(one_point))[1]["score_vs_beta.png"] == \
        "no config key varies within a method (a single grid point each)"


def test_the_report_and_the_beta_plot_state_each_methods_learning_rate(multirun, tmp_path):
    runs = make_runs({"a": {(0.1, 1e-4): [0.5], (0.3, 1e-4): [0.6]}, "b": {(0.1, 3e-5): [0.5], (0.1, 1e-4): [0.6]}})
    assert learning_rates(runs) == {"a": "0.0001", "b": "several: 3e-05, 0.0001"}
    assert learning_rates(runs.drop(columns="optim.lr")) == {"a": "–", "b": "–"}
    settings = study_settings(runs)
    summary = method_summary(runs, settings).set_index("method")
    assert summary.loc["a", "lr"] == "0.0001" and summary.loc["b", "lr"] == "several: 3e-05, 0.0001"
    text = markdown_report(runs, settings, summary.reset_index(), pairwise_differences(runs, settings),
                           grid_table(runs, settings))
    assert "| lr (optim.lr) |" in text and "| lr=0.0001 | – | several: 3e-05, 0.0001 |" in text
    fig = plot_score_vs_param(grid_table(runs, settings), lrs=learning_rates(runs))
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a, lr 0.0001", "b, lr several: 3e-05, 0.0001 (no β axis)"]


def test_carried_runs_join_a_study_as_if_they_had_run_in_it(tmp_path):
    """A study split in two runs.csv files (RMiPO's rows; the other methods' rows) and joined again by
    `carry` gives the same per-method table as the whole; a method the source lacks, or a run in both
    sources, is one error naming it."""
    whole = pd.read_csv(ROOT / "docs" / "results" / "beta_sensitivity" / "runs.csv")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole[whole["method"] == "rmipo"].to_csv(tmp_path / "a" / "runs.csv", index=False)
    whole[whole["method"] != "rmipo"].to_csv(tmp_path / "b" / "runs.csv", index=False)
    others = ",".join(sorted(set(whole["method"]) - {"rmipo"}))
    analyze(tmp_path / "a" / "runs.csv", tmp_path / "joined", carry=[f"{tmp_path / 'b' / 'runs.csv'}:{others}"])
    analyze(ROOT / "docs" / "results" / "beta_sensitivity" / "runs.csv", tmp_path / "full")
    joined = pd.read_csv(tmp_path / "joined" / "sensitivity.csv").sort_values("method").reset_index(drop=True)
    full = pd.read_csv(tmp_path / "full" / "sensitivity.csv").sort_values("method").reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, full)
    with pytest.raises(ValueError, match=r"no runs of method\(s\) \['kto'\]"):
        analyze(tmp_path / "a" / "runs.csv", tmp_path / "x", carry=[f"{tmp_path / 'b' / 'runs.csv'}:dpo,kto"])
    with pytest.raises(ValueError, match="are in .* as well"):
        analyze(tmp_path / "a" / "runs.csv", tmp_path / "x", carry=[str(tmp_path / "a" / "runs.csv")])


def test_a_method_without_beta_has_a_learning_rate_window_only():
    """SimPER has no loss.beta: its window spans the learning rate alone and is complete when the lr
    grid reaches half a decade either side of its best; a method that has β but keeps it fixed is cut."""
    from prefopt.analysis.runs import StudySettings
    from prefopt.analysis.stats import method_grids, window_complete

    runs = make_runs({"dpo": {(0.1, 1e-4): [0.5], (0.1, 3e-4): [0.6], (0.1, 1e-3): [0.55]}})
    lr_only = runs.copy()
    lr_only["method"], lr_only["loss.beta"] = "simper", np.nan
    settings = StudySettings()
    [simper] = method_grids(lr_only, settings)
    assert simper.absent == frozenset({"loss.beta"})
    assert window_complete(simper, 1, settings.window) == (True, "lr 0.0001–0.001 (3 points)")
    [dpo] = method_grids(runs, settings)
    complete, text = window_complete(dpo, 1, settings.window)
    assert not complete and "beta not swept" in text
