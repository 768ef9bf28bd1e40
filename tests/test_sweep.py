"""The sweep machinery end to end in subprocesses: `python src/run.py -m sweep=smoke` runs each
(loss, β) point of conf/sweep/smoke.yaml into its own folder, a re-run skips completed jobs, a failing
job is recorded while the others go on, and src/analyze.py reads the result. The study configs
(conf/sweep/*.yaml) list points and losses that exist.

Run: `.venv/bin/python -m pytest tests/test_sweep.py -q`.
"""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_run import SMALL_SORT, run_cli

from prefopt.analysis import analyze

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
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep", args, tmp


def results_by_point(sweep_dir: Path, smoothing: str = "0.0") -> dict[tuple[str, str], dict]:
    """(loss folder, beta=...) -> results.json, for the job folders with that label smoothing."""
    found = {}
    for path in sweep_dir.glob(f"*/*label_smoothing={smoothing},*/results.json"):
        beta = path.parent.name.split(",")[0]
        found[(path.parent.parent.name, beta)] = json.loads(path.read_text())
    return found


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


def test_smoke_sweep_feeds_the_analysis(smoke, tmp_path):
    sweep_dir, _, _ = smoke
    written = analyze(sweep_dir, tmp_path, n_boot=100)
    text = written["sensitivity.md"].read_text()
    assert "# Sensitivity study: smoke" in text and "from 8 runs (4 completed, 4 not;" in text
    assert "| **dpo** |" in text and "| **rmipo** |" in text
    assert "beta=0.1" in text  # DPOLoss's default β is a point of the smoke grid: the default point
    assert "## Runs that did not complete" in text and text.count("label_smoothing=0.7 is not allowed") == 4


def test_rerun_into_the_same_folder_skips_completed_jobs_and_retries_failed_ones(smoke, cache_root):
    sweep_dir, args, tmp = smoke
    completed = {p: p.read_text() for p in sweep_dir.glob("*/*label_smoothing=0.0,*/results.json")}
    failed = list(sweep_dir.glob("*/*label_smoothing=0.7,*/results.json"))
    proc = run_cli(args, cache_root, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already completed: skipping") == 4
    assert {p: p.read_text() for p in completed} == completed  # untouched
    assert proc.stderr.count("label_smoothing=0.7 is not allowed") == 4  # the failed jobs ran again
    assert len(failed) == 4 and all(json.loads(p.read_text())["status"] == "failed" for p in failed)


def test_failing_jobs_are_recorded_and_the_others_go_on(smoke):
    sweep_dir, _, _ = smoke
    failed = results_by_point(sweep_dir, smoothing="0.7")
    assert set(failed) == set(results_by_point(sweep_dir))  # every point failed once and completed once
    for results in failed.values():
        assert results["status"] == "failed" and results["metrics"] == {}
        assert "label_smoothing" in results["error"] and "[0, 0.5)" in results["error"]


@pytest.mark.parametrize("study", ["smoke", "beta_sensitivity", "lr_sensitivity", "controls"])
def test_study_configs_list_existing_points_and_losses(study):
    cfg = OmegaConf.load(SWEEPS / f"{study}.yaml")
    params = cfg.hydra.sweeper.params
    points = [p.strip() for p in str(params.get("+sweep/point", "")).split(",") if p.strip()]
    losses = [p.strip() for p in str(params.get("loss", "")).split(",") if p.strip()]
    assert points or losses
    for point in points:
        spec = OmegaConf.load(SWEEPS / "point" / f"{point}.yaml")
        loss, beta = point.rsplit("_b", 1)
        assert spec.defaults == [{"override /loss": loss}] and spec.loss.beta == float(beta), point
    for loss in losses:
        assert (ROOT / "conf" / "loss" / f"{loss}.yaml").exists(), loss
    assert cfg.sweep.name == study and cfg.sweep.score.startswith("eval/")


def test_beta_study_grid_is_the_issue_grid():
    params = OmegaConf.load(SWEEPS / "beta_sensitivity.yaml").hydra.sweeper.params
    points = [p.strip() for p in params["+sweep/point"].split(",")]
    grids: dict[str, list[float]] = {}
    for point in points:
        loss, beta = point.rsplit("_b", 1)
        grids.setdefault(loss, []).append(float(beta))
    assert grids == {"dpo": [0.01, 0.03, 0.1, 0.3, 1.0], "ipo": [0.01, 0.03, 0.1, 0.3, 1.0],
                     "simpo": [1, 2, 5, 10], "rmipo": [1, 2, 5, 10]}
    assert len(str(params["optim.lr"]).split(",")) == 2 and str(params["seed"]) == "0,1,2"
