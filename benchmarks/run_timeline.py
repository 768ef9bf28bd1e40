"""Where a run's wall time goes: every step of prefopt/run/steps.py (and the runner's config check and
clean-up) timed with wall clocks, Lightning's training steps and validation apart inside `fit`; one
line per run on stderr, largest first. Takes src/run.py's arguments, so a multirun shows what a sweep
worker's warm runs cost:

    python benchmarks/run_timeline.py -m sweep=beta_sensitivity loss=dpo seed=0 sweep.lr_step=l2 \\
        sweep.beta_step=b1,b2,b3,b4,b5
"""

from __future__ import annotations

import functools
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("check_and_seed", "task_artifacts", "starting_choice", "start_loader", "policy_to_train", "preference_data",
         "preference_module", "trainer_for", "fit", "trained_policy", "starting_policy", "oracle_evaluation",
         "export_generations", "log_and_save")
RUNNER = ("validate_config", "_record_completed", "_finish")


def timed(owner: Any, name: str, totals: dict[str, float], key: str | None = None) -> None:
    """Replace `owner.name` by a wrapper that adds each call's wall time to `totals[key or name]`."""
    real: Callable = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[key or name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def report(totals: dict[str, float]) -> str:
    """`TIMES total=… fit=… …`: seconds, largest first, zeros left out."""
    parts = [f"{name}={seconds:.2f}" for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])
             if round(seconds, 2) > 0]
    return "TIMES " + " ".join(parts)


def instrument() -> dict[str, float]:
    """Wrap the run's steps, the runner's own work and Lightning's loops; `runner.run` prints each run."""
    sys.path.insert(0, str(ROOT / "src"))
    from lightning.pytorch.loops import evaluation_loop, training_epoch_loop

    from prefopt.run import runner, steps

    totals: dict[str, float] = defaultdict(float)
    for name in STEPS:
        timed(steps, name, totals)
    for name in RUNNER:
        timed(runner, name, totals)
    timed(training_epoch_loop._TrainingEpochLoop, "advance", totals, "fit:training_steps")
    timed(evaluation_loop._EvaluationLoop, "run", totals, "fit:validation")
    run = runner.run

    def run_and_report(cfg: Any) -> Any:
        totals.clear()
        start = time.perf_counter()
        try:
            return run(cfg)
        finally:
            totals["total"] = time.perf_counter() - start
            print(report(totals), file=sys.stderr, flush=True)

    runner.run = run_and_report
    return totals


if __name__ == "__main__":
    instrument()
    sys.argv = [str(ROOT / "src" / "run.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
