"""scripts/sweep_side_by_side.py: speed-ups from the arms' walls, and runs matched across arms by
(loss, β, lr, seed) with their oracle rewards compared; a missing, failed or differing run fails it."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = runpy.run_path(str(ROOT / "scripts" / "sweep_side_by_side.py"))


def write_run(out: Path, arm: str, loss: str, beta: float, lr: float, reward: float, status: str = "completed",
              folder: str | None = None) -> None:
    """One results.json as a run writes it (only the keys the summary reads)."""
    path = out / arm / loss / (folder or f"{arm}_b{beta}_lr{lr}") / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": status, "seed": 0, "metrics": {"eval/oracle_reward": reward},
                                "config": {"loss": {"beta": beta}, "optim": {"lr": lr}}}))


def study(tmp_path: Path, pack_reward: float = 0.9, pack_status: str = "completed") -> Path:
    (tmp_path / "walls.txt").write_text("old-1 300.0\nnew-1 240.0\npack-1 200.0\nold-2 260.0\nnew-2 160.0\npack-2 200.0\n")
    for arm in ("old-1", "new-1", "old-2", "new-2", "pack-2"):
        write_run(tmp_path, arm, "dpo", 0.1, 1e-4, 0.9)
        write_run(tmp_path, arm, "simpo", 2.0, 3e-5, 0.8)
    write_run(tmp_path, "pack-1", "dpo", 0.1, 1e-4, pack_reward, status=pack_status)
    write_run(tmp_path, "pack-1", "simpo", 2.0, 3e-5, 0.8, folder="other_name")  # matched by config, not name
    return tmp_path


def test_speedups_are_ratios_of_mean_walls(tmp_path, capsys):
    assert SUMMARY["main"](study(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "old: mean 280.0 s (300.0, 260.0)" in out
    assert "old / new: 1.40x (per repetition 1.25, 1.62)" in out  # 280 / 200; 300 / 240, 260 / 160
    assert "old / pack: 1.40x (per repetition 1.50, 1.30)" in out
    assert "every run's oracle reward is the same in every arm" in out


def test_a_differing_reward_fails(tmp_path, capsys):
    assert SUMMARY["main"](study(tmp_path, pack_reward=0.91)) == 1
    out = capsys.readouterr().out
    assert "pack-1: 2 runs, 0 failed, 1 oracle rewards differ from old-1 [('dpo', 0.1, 0.0001, 0)]" in out
    assert "ARMS DISAGREE" in out


def test_a_failed_run_fails(tmp_path, capsys):
    assert SUMMARY["main"](study(tmp_path, pack_status="failed")) == 1
    assert "pack-1: 1 runs, 1 failed" in capsys.readouterr().out


def test_the_grid_is_read_from_the_study_config(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "sweep:\n  grid:\n"
        "    dpo: {beta: {b0: 9.0, b1: 0.1, b2: 1.0}, lr: {l1: 1.0e-4, l2: 3.0e-4}}\n"
        "    simpo: {beta: {b1: 2.0, b2: 6.0}, lr: {l1: 3.0e-5, l2: 1.0e-4}}\n"
        "hydra:\n  sweeper:\n    params:\n      loss: dpo,simpo\n      sweep.beta_step: b1,b2\n      sweep.lr_step: l2\n")
    assert SUMMARY["main_grid"](study) == {"dpo": "loss.beta=0.1,1.0 optim.lr=0.0003",  # b0 is not swept
                                           "simpo": "loss.beta=2.0,6.0 optim.lr=0.0001"}
    committed = SUMMARY["main_grid"]()  # conf/sweep/beta_sensitivity.yaml: 4 losses x 5 beta x 3 lr = 60 runs
    assert committed["rmipo"] == "loss.beta=0.6,2.0,6.0,20.0,60.0 optim.lr=1e-05,3e-05,0.0001"
    assert sorted(committed) == ["dpo", "ipo", "rmipo", "simpo"]
