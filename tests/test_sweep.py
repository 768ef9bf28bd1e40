"""The sweep machinery end to end in subprocesses: `python src/run.py -m sweep=smoke` runs each
(loss, β) point of conf/sweep/smoke.yaml into its own folder, a re-run skips completed jobs, a failing
job is recorded while the others go on, and src/analyze.py reads the result. The study configs
(conf/sweep/*.yaml) list points, knobs and losses that exist; their grids step by half a decade, hold
the default point and put the committed study's bests inside.

Run: `.venv/bin/python -m pytest tests/test_sweep.py -q`.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from test_run import SMALL_SORT, run_cli

from prefopt.analysis import analyze
from prefopt.config.study_file import load_study_file

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "conf" / "sweep"
TINY = [*SMALL_SORT, "trainer.max_steps=3"]


@pytest.fixture(scope="module")
def smoke(cache_root, tmp_path_factory):
    """The smoke sweep, each point once with a valid and once with an invalid label smoothing (0.7 is
    outside [0, 0.5)): 4 jobs complete, 4 fail."""
    tmp = tmp_path_factory.mktemp("smoke")
    args = ["-m", "sweep=smoke", "loss.label_smoothing=0.0,0.7", *TINY, f"hydra.sweep.dir={tmp / 'sweep'}"]
    proc = run_cli(args, cache_root, tmp)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the 4 failed jobs: the multirun says so after all ran
    assert "multirun: 4 of 8 jobs completed, 4 did not" in proc.stdout + proc.stderr
    return tmp / "sweep", args, tmp


def results_by_point(sweep_dir: Path, smoothing: str = "0.0") -> dict[tuple[str, str], dict]:
    """(loss folder, beta=...) -> results.json, for the job folders with that label smoothing."""
    found = {}
    for path in sweep_dir.glob(f"*/*label_smoothing={smoothing},*/results.json"):
        beta = path.parent.name.split(",")[0]
        found[(path.parent.parent.name, beta)] = json.loads(path.read_text())
    return found


@pytest.mark.slow
def test_smoke_sweep_runs_every_point_of_its_per_loss_grid(smoke):
    sweep_dir, _, _ = smoke
    found = results_by_point(sweep_dir)
    assert set(found) == {("dpo", "beta=0.1"), ("dpo", "beta=1.0"), ("rmipo", "beta=2.0"), ("rmipo", "beta=5.0")}
    for (loss, beta), results in found.items():
        assert results["status"] == "completed"
        config = results["config"]
        target = {"dpo": "prefopt.losses.DPOLoss", "rmipo": "prefopt.losses.RMiPOLoss"}[loss]
        assert config["loss"]["_target_"] == target
        assert f"beta={config['loss']['beta']}" == beta
        assert config["trainer"]["max_steps"] == 3 and config["seed"] == 0  # the command line wins
        assert config["sweep"]["name"] == "smoke" and config["checkpoint"]["enabled"] is False
    assert not list(sweep_dir.glob("*/*/checkpoints"))


@pytest.mark.slow
def test_smoke_sweep_feeds_the_analysis(smoke, tmp_path):
    sweep_dir, _, _ = smoke
    written = analyze(sweep_dir, tmp_path)
    text = written["sensitivity.md"].read_text()
    assert "# Sensitivity study: smoke" in text and "from 8 runs (4 completed, 4 not;" in text
    assert "| **dpo** |" in text and "| **rmipo** |" in text
    assert "beta=0.1" in text  # DPOLoss's default β is a point of the smoke grid: the default point
    assert "## Runs that did not complete" in text and text.count("label_smoothing=0.7 is not allowed") == 4


@pytest.mark.slow
def test_rerun_into_the_same_folder_skips_completed_jobs_and_retries_failed_ones(smoke, cache_root):
    sweep_dir, args, tmp = smoke
    completed = {p: p.read_text() for p in sweep_dir.glob("*/*label_smoothing=0.0,*/results.json")}
    failed = list(sweep_dir.glob("*/*label_smoothing=0.7,*/results.json"))
    proc = run_cli(args, cache_root, tmp)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout.count("already completed with this config: skipping") == 4
    assert {p: p.read_text() for p in completed} == completed  # untouched
    assert proc.stderr.count("error: loss: DPOLoss: label_smoothing=0.7 is not allowed") == 2  # the failed jobs
    assert proc.stderr.count("error: loss: RMiPOLoss: label_smoothing=0.7 is not allowed") == 2  # ran again
    assert "multirun: 4 of 8 jobs completed, 4 did not" in proc.stdout + proc.stderr
    assert len(failed) == 4 and all(json.loads(p.read_text())["status"] == "failed" for p in failed)


@pytest.mark.slow
def test_failing_jobs_are_recorded_and_the_others_go_on(smoke):
    sweep_dir, _, _ = smoke
    failed = results_by_point(sweep_dir, smoothing="0.7")
    assert set(failed) == set(results_by_point(sweep_dir))  # every point failed once and completed once
    for results in failed.values():
        assert results["status"] == "failed" and results["metrics"] == {}
        assert "label_smoothing" in results["error"] and "[0, 0.5)" in results["error"]


STUDIES = sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def _study(study: str):
    """A study preset merged over its shared base files, and the text of all of them."""
    return load_study_file(SWEEPS / f"{study}.yaml")


@pytest.mark.parametrize("study", STUDIES)
def test_study_configs_list_existing_points_and_losses(study):
    cfg, _ = _study(study)
    params = cfg.hydra.sweeper.params
    points = [p.strip() for p in str(params.get("+sweep/point", "")).split(",") if p.strip()]
    knobs = [p.strip() for p in str(params.get("+sweep/knob", "")).split(",") if p.strip()]
    losses = [p.strip() for p in str(params.get("loss", "")).split(",") if p.strip()]
    assert points or losses or knobs
    for point in points:
        spec = OmegaConf.load(SWEEPS / "point" / f"{point}.yaml")
        loss, beta = point.rsplit("_b", 1)
        assert spec.defaults == [{"override /loss": loss}] and spec.loss.beta == float(beta), point
    for knob in knobs:  # each knob point picks a loss that has β and lr in sweep.at
        spec = OmegaConf.load(SWEEPS / "knob" / f"{knob}.yaml")
        (loss,) = [d["override /loss"] for d in spec.defaults]
        assert (ROOT / "conf" / "loss" / f"{loss}.yaml").exists() and loss in cfg.sweep.at, knob
    for loss in losses:
        assert (ROOT / "conf" / "loss" / f"{loss}.yaml").exists(), loss
        if "grid" in cfg.sweep:
            assert loss in cfg.sweep.grid, f"{study}: no grid for {loss}"
    assert study.startswith(cfg.sweep.name) and cfg.sweep.score.startswith("eval/")
    assert {"override /tuned": None} in cfg.defaults  # studies measure their own settings


def _grid(study: str) -> dict[str, dict[str, list[float]]]:
    cfg, _ = _study(study)
    return {loss: {axis: list(values.values()) for axis, values in axes.items()}
            for loss, axes in OmegaConf.to_container(cfg.sweep.grid).items()}


GRID_STUDIES = ["beta_sensitivity", "beta_sensitivity_lr", "imdb_sensitivity", "imdb_sensitivity_lr"]


@pytest.mark.parametrize("study", GRID_STUDIES)
def test_grids_step_by_half_a_decade_with_5_seeds_and_the_default_point(study):
    """Every loss's grid steps by half a decade on each axis and holds the loss's default β (if it has
    one) at the study's default lr; a position no preset's sweep covers is run by a documented command."""
    cfg, text = _study(study)
    params = cfg.hydra.sweeper.params
    assert len(str(params["seed"]).split(",")) >= 5
    positions = {axis: str(params.get(f"sweep.{axis}_step", "")).split(",") for axis in ("beta", "lr")}
    swept = [p.strip() for p in str(params["loss"]).split(",")]
    lists_all = "sweep.beta_step" in params  # a β preset's header lists every run of the study
    for loss, axes in _grid(study).items():
        default_beta = OmegaConf.load(ROOT / "conf" / "loss" / f"{loss}.yaml").get("beta")
        assert ("beta" in axes) == (default_beta is not None), f"{study}/{loss}: a β axis iff the loss has β"
        for axis, values in axes.items():
            keys = list(OmegaConf.to_container(cfg.sweep.grid[loss][axis]))
            if loss in swept:
                assert set(positions[axis]) <= set(keys), f"{study}/{loss}/{axis}: a swept position is missing"
            extras = set(keys) - set(positions[axis]) if loss in swept or lists_all else set()
            for extra in extras:  # a grid extension: run by a documented command
                assert f"{axis}_step={extra}" in text or f",{extra}" in text, f"{study}/{loss}/{axis}={extra}"
            steps = np.diff(np.log10(values))
            assert np.all(np.abs(steps - 0.5) <= 0.06), f"{study}/{loss}/{axis}: {values}"
        assert default_beta is None or default_beta in axes["beta"], loss
        assert cfg.sweep.defaults.optim.lr in axes["lr"], loss


# study -> (method, axis) whose best may sit on the grid's edge, as its report states: IMDb's SimPO β
# stays on the lower edge as its score flattens toward the β → 0 limit
EDGE_ALLOWED = {"beta_sensitivity": set(), "imdb_sensitivity": {("simpo", "beta")}}


@pytest.mark.parametrize("study", sorted(EDGE_ALLOWED))
def test_committed_grids_put_the_bests_inside(study):
    """Each committed study's best points (docs/results/<study>/grid.csv) are interior in β and lr,
    except where the report states otherwise (then at the grid's lower edge)."""
    committed = pd.read_csv(ROOT / "docs" / "results" / study / "grid.csv")
    grid = _grid(study)
    for loss, rows in committed.groupby("method"):
        best = rows.loc[rows["score_mean"].idxmax()]
        for axis, column in (("beta", "loss.beta"), ("lr", "optim.lr")):
            if axis not in grid[loss]:  # SimPER has no β
                continue
            values = grid[loss][axis]
            if (loss, axis) in EDGE_ALLOWED[study]:
                assert best[column] == min(values), f"{study}/{loss}: best {column}={best[column]}"
            else:
                assert min(values) < best[column] < max(values), f"{loss}: best {column}={best[column]} vs {values}"
