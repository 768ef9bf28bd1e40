"""scripts/eval_prompts_check.py: the same points and seeds scored on two evaluation sizes, matched by
(method, point, seed), priced as the study prices, and the focus method's paired differences on each.

Run: `.venv/bin/python -m pytest tests/test_eval_prompts_check.py -q`.
"""

import runpy
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = runpy.run_path(str(ROOT / "scripts" / "eval_prompts_check.py"))


def study(rewards: dict, kl: float, extra_point: bool = False) -> pd.DataFrame:
    """{method: [reward of seed 0, 1, 2]} at β 2, lr 5e-4, each run at `kl` nats, priced 0.01/nat."""
    rows = []
    for method, values in rewards.items():
        for seed, reward in enumerate(values):
            rows.append({"run": f"{method}/{seed}", "status": "completed", "method": method, "seed": seed,
                         "loss._target_": "prefopt.losses.DPOLoss", "loss.beta": 2.0, "optim.lr": 5e-4,
                         "eval/oracle_reward": reward, "eval/kl": kl, "sweep.focus": "rmipo", "sweep.price": 0.01})
    if extra_point:  # another point of the study: not a twin of anything
        rows.append({**rows[0], "run": "x", "optim.lr": 1.6e-3, "eval/oracle_reward": 0.9})
    return pd.DataFrame(rows)


def test_twins_are_matched_priced_and_compared(tmp_path):
    small = study({"rmipo": [0.70, 0.72, 0.74], "dpo": [0.60, 0.61, 0.65]}, kl=10.0, extra_point=True)
    large = study({"rmipo": [0.71, 0.73, 0.72], "dpo": [0.70, 0.74, 0.72]}, kl=20.0)
    small.to_csv(tmp_path / "small.csv", index=False)
    large.to_csv(tmp_path / "large.csv", index=False)
    text = CHECK["report"](str(tmp_path / "small.csv"), str(tmp_path / "large.csv"), ("128", "512"))
    # rmipo: mean reward 0.72 − 0.01·10 = 0.620 (128) and 0.72 − 0.2 = 0.520 (512)
    assert "| rmipo | beta=2.0, lr=0.0005 | 3 | 0.620 | 0.520 | 0.720 | 0.720 | 10.000 | 20.000 |" in text
    # differences per seed: 128: .10 .11 .09 (mean .10, a clear gap); 512: .01 −.01 .00 (none)
    line = next(l for l in text.splitlines() if l.startswith("| dpo | +"))
    assert line.startswith("| dpo | +0.100 [") and ": holds |" in line and line.endswith("| **no** |")
    assert "+0.000 [" in line and ": no |" in line


def test_a_run_without_twin_is_named(tmp_path):
    small = study({"rmipo": [0.7, 0.7, 0.7]}, kl=1.0)
    large = study({"rmipo": [0.7, 0.7, 0.7], "dpo": [0.6, 0.6, 0.6]}, kl=1.0)
    small.to_csv(tmp_path / "small.csv", index=False)
    large.to_csv(tmp_path / "large.csv", index=False)
    with pytest.raises(SystemExit, match="3 runs of .*large.csv have no twin"):
        CHECK["report"](str(tmp_path / "small.csv"), str(tmp_path / "large.csv"), ("128", "512"))


def test_the_committed_check_regenerates():
    """docs/results/imdb_eval_prompts.md is what the script writes from the committed runs.csv files."""
    small, large = "docs/results/imdb_sensitivity/runs.csv", "docs/results/imdb_eval512/runs.csv"
    import os

    here = os.getcwd()
    os.chdir(ROOT)  # the committed text names the paths relative to the repository
    try:
        text = CHECK["report"](small, large, ("128", "512"))
    finally:
        os.chdir(here)
    assert text == (ROOT / "docs" / "results" / "imdb_eval_prompts.md").read_text()
