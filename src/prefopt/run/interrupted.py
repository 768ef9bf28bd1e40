"""Recording a run that a signal stopped: results.json `status: interrupted`, the resume hint, the exit code.

The runner calls `record_interrupt` when prefopt.train.signals.InterruptGuard raised `Interrupted`
(SIGINT / SIGTERM). Exercised by `pytest tests/test_signals.py`.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from prefopt.log import PLAIN, get_logger
from prefopt.train.signals import Interrupted, resume_hint

log = get_logger()


def record_interrupt(stop: Interrupted, output_dir: Path, overrides: list[str], rank: int,
                     **record: Any) -> None:
    """Write results.json `status: interrupted` (signal, step, checkpoint), print how to resume, and
    exit 130 (SIGINT) or 143 (SIGTERM). `record`: the other results.json fields (config, info, ...)."""
    from prefopt.train.resume import last_checkpoint
    from prefopt.run.results import write_results

    if stop.checkpoint is None:  # stopped outside training: the newest checkpoint of the run, if any
        found = last_checkpoint(output_dir)
        stop.checkpoint = str(found) if found is not None else None
    if rank == 0:
        signame = signal.Signals(stop.signum).name
        write_results(output_dir / "results.json", status="interrupted", signal=signame, step=stop.step,
                      checkpoint=stop.checkpoint, error=f"interrupted by {signame} at step {stop.step}",
                      **{"metrics": {}, **record})
        log.warning(resume_hint(stop, overrides, output_dir), extra=PLAIN)  # the hint carries its "[prefopt]"
    raise SystemExit(stop.exit_code)
