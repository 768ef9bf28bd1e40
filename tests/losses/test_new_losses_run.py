"""Each of the five newer losses trains a few steps of the sort task end to end with finite metrics, and
the reference-free ones never build a reference (`python src/run.py data=sort loss=<name> trainer.max_steps=5`)."""

import json
import math

import pytest

from test_run import SMALL_SORT, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["orpo", "cpo", "rdpo", "simper", "betadpo"])
def test_a_short_sort_run_completes_with_finite_metrics(loss, cache_root, tmp_path):
    args = [*SMALL_SORT, f"loss={loss}", "trainer.max_steps=5", "checkpoint.enabled=false", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed"
    train = {k: v for k, v in results["metrics"].items() if k.startswith("train/")}
    assert {"train/loss", "train/rewards/margins", "train/rewards/accuracies"} <= set(train)
    assert all(math.isfinite(v) for v in train.values() if isinstance(v, (int, float))), train
