"""The project's console output: one `logging` logger per source, rank-zero aware, in `[name] message` form.

    from prefopt.log import get_logger
    log = get_logger()          # "[prefopt] ..." lines
    log = get_logger("sort")    # "[sort] ..." lines (a task's own progress)
    log.info("data: %d pairs", n); log.warning("..."); log.info(table, extra=PLAIN)   # PLAIN: no prefix

INFO and below go to stdout, WARNING and above to stderr, each looked up when the line is written
(so pytest's capsys and a redirected stream see them) and flushed at once. On a distributed run only
global rank 0 writes (records from other ranks are dropped), so a line appears once per run, not once
per GPU. `PREFOPT_LOG_LEVEL=WARNING` quiets the progress lines (read when the first logger is made; a
value that is not a level is named in a warning and INFO is used). Exercised by `pytest tests/test_log.py`.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "prefopt"
PLAIN = {"plain": True}  # `extra=PLAIN`: the message alone (tables, the final `error: ...` line)
LEVEL_ENV = "PREFOPT_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _rank() -> int:
    """The process's global rank: Lightning's record of it once Lightning is imported, else the launcher's
    env. Lightning is never imported here (that would cost an early `error: ...` line seconds of torch)."""
    lightning_rank = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(lightning_rank, "rank_zero_only", None), "rank", None)
    return int(rank) if rank is not None else env_rank()


def env_rank() -> int:
    """The global rank the launcher gives this process (torchrun's RANK, SLURM's SLURM_PROCID, Lightning's
    LOCAL_RANK for processes it starts); 0 outside a data-parallel run."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def is_rank_zero() -> bool:
    """Whether this process speaks for the run (for output written without a logger, e.g. in a signal handler)."""
    return _rank() == 0


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_rank_zero()


_JOB = {"tag": ""}  # " job N" while a job of a parallel multirun runs in this process (set_job)


def set_job(number: int | None) -> None:
    """Tag this process's lines with a multirun job number (`[prefopt job 3] ...`), so the interleaved
    output of a parallel sweep (joblib) tells the jobs apart; None removes the tag."""
    _JOB["tag"] = "" if number is None else f" job {number}"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:  # log.exception(...): the traceback follows the line
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if getattr(record, "plain", False):
            return message
        return f"[{record.name.rsplit('.', 1)[-1]}{_JOB['tag']}] {message}"


class _ConsoleHandler(logging.Handler):
    """Writes to the current sys.stdout (below WARNING) or sys.stderr, flushing each line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:  # the reader left (`python src/analyze.py ... | head`): nothing to tell it
            pass
        except Exception:  # pragma: no cover - a closed stream must not end the run
            self.handleError(record)


def _configure(root: logging.Logger) -> None:
    if getattr(root, "_prefopt_configured", False):
        return
    handler = _ConsoleHandler()
    handler.setFormatter(_Formatter())
    handler.addFilter(_RankZero())
    root.addHandler(handler)
    root.propagate = False  # Hydra's root handler would print every line a second time
    root._prefopt_configured = True
    asked = os.environ.get(LEVEL_ENV, "INFO").strip().upper() or "INFO"
    root.setLevel(asked if asked in LEVELS else "INFO")
    if asked not in LEVELS:
        root.warning("%s=%s is not a level (%s): using INFO", LEVEL_ENV, os.environ[LEVEL_ENV], ", ".join(LEVELS))


def get_logger(name: str | None = None) -> logging.Logger:
    """The logger for `name` (a task or component), printing as `[name] ...`; `[prefopt] ...` without one."""
    root = logging.getLogger(ROOT)
    _configure(root)
    return root if not name else logging.getLogger(f"{ROOT}.{name}")
