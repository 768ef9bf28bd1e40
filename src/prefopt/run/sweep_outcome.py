"""A multirun that tells the truth: every job's outcome collected, failures named, a non-zero exit.

Each job of a multirun appends one JSON line to `<sweep dir>/jobs.jsonl` when it ends (`note`: time,
job number, folder, status, error), from whichever process ran it (Hydra's basic launcher, a joblib
worker, a submitit job). `SweepOutcome`, a Hydra callback (conf/train.yaml `hydra.callbacks`), marks
the multirun's start and, at its end in the launching process, reads the lines written since, prints
a one-line tally and each job that did not complete, and leaves them in `FAILED`; src/run.py then exits 1
after all jobs ran. Exercised by `pytest tests/test_sweep_outcome.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from prefopt.log import PLAIN, get_logger

log = get_logger()
JOBS_FILE = "jobs.jsonl"
FAILED: list[dict[str, Any]] = []  # the jobs of the last multirun in this process that did not complete


def job_row(cfg: Any, metrics: dict | None) -> dict[str, Any]:
    """What the end-of-sweep table shows of a job: method, β, learning rate, seed and its score."""
    from omegaconf import OmegaConf

    def pick(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key)
        except Exception:  # noqa: BLE001 - an unresolvable value: the job's own error names it
            return None

    objective = pick("objective") or "eval/oracle_reward"
    return {"method": pick("method"), "beta": pick("loss.beta"), "lr": pick("optim.lr"), "seed": pick("seed"),
            "score_name": objective, "score": (metrics or {}).get(objective)}


def note(sweep_dir: Path, job_num: int, output_dir: Path, status: str, error: str | None,
         row: dict[str, Any] | None = None) -> None:
    """Append this job's outcome to the sweep's jobs.jsonl (one write of one line: O_APPEND keeps lines
    of concurrent jobs whole). A failure to write is said, never raised: the job's own record is results.json."""
    line = json.dumps({"time": time.time(), "job": job_num, "folder": str(output_dir), "status": status,
                       "error": error, **(row or {})}, default=str) + "\n"
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(sweep_dir / JOBS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as err:
        log.warning(f"warning: could not note job {job_num}'s outcome in {sweep_dir / JOBS_FILE}: {err}")


def read_jobs(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    """The outcomes noted in `sweep_dir` at or after `since`, the last line of each folder winning."""
    latest: dict[str, dict[str, Any]] = {}
    try:
        lines = (sweep_dir / JOBS_FILE).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            job = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(job, dict) and job.get("time", 0) >= since:
            latest[str(job.get("folder"))] = job
    return sorted(latest.values(), key=lambda j: (j.get("job") is None, j.get("job")))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def table(jobs: list[dict[str, Any]]) -> list[str]:
    """One line per job: job, method, β, lr, seed, status, score (aligned columns)."""
    score = next((j["score_name"] for j in jobs if j.get("score_name")), "score")
    head = ["job", "method", "beta", "lr", "seed", "status", score]
    rows = [[_cell(j.get(k)) for k in ("job", "method", "beta", "lr", "seed", "status", "score")] for j in jobs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def summary(jobs: list[dict[str, Any]]) -> list[str]:
    """The tally line, then one line per job that did not complete."""
    bad = [j for j in jobs if j.get("status") != "completed"]
    lines = [f"multirun: {len(jobs) - len(bad)} of {len(jobs)} jobs completed"
             + (f", {len(bad)} did not" if bad else "")]
    for job in bad:
        lines.append(f"  job {job.get('job')} {job.get('status')}: {job.get('error') or 'no error recorded'} "
                     f"({job.get('folder')})")
    return lines


class SweepOutcome(Callback):
    """Hydra callback: collects the multirun's job outcomes at its end (in the launching process)."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from prefopt.config.tuned import sweep_note

        self.started = time.time()
        FAILED.clear()
        note_line = sweep_note(list(config.hydra.overrides.task))
        if note_line:
            log.warning(note_line)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        jobs = read_jobs(Path(config.hydra.sweep.dir), self.started)
        if not jobs:
            return
        FAILED[:] = [j for j in jobs if j.get("status") != "completed"]
        lines = [*table(jobs), *summary(jobs)]
        offline = sorted(Path(config.hydra.sweep.dir).glob("**/wandb/offline-run-*"))
        if offline:
            lines.append(f"W&B (offline): {len(offline)} run(s); upload them with: wandb sync $(find "
                         f"{shlex.quote(str(config.hydra.sweep.dir))} -type d -name 'offline-run-*')")
        (log.warning if FAILED else log.info)("\n".join(lines), extra=PLAIN)


def exit_code() -> int:
    """1 when a job of this process's last multirun did not complete (src/run.py exits with it)."""
    return 1 if FAILED else 0
