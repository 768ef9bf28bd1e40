"""Checks before any work: the folders a run writes to and its cache.

`check_output_argv` runs in `src/run.py` before Hydra starts (Hydra's own failure on a read-only
output folder is a logging traceback); `stop_if_unwritable` and `preflight` run first in each job:
the run folder must be writable, a read-only cache is announced (then every artifact must be in it: a
missing one is a one-line `CacheError` when the task or the log-prob tables are built, before training;
the starting policy's evaluation is computed without the cache) and the cache's lock timeout is set.
What `ckpt_path` resumes is decided once, in the run plan (prefopt.config.plan). Read-only is judged with `os.access`, so tests running
as root can mock it. Exercised by `pytest tests/test_preflight.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from prefopt.log import PLAIN, get_logger
from prefopt.store import cache

log = get_logger()


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def writable(path: Path) -> bool:
    """Whether files can be created in `path` (or, if it does not exist yet, in its nearest ancestor)."""
    existing = nearest_existing(path)
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def output_problem(folder: Path, key: str) -> str | None:
    """One line when the run folder `folder` (set by `key`) cannot be written, else None."""
    if writable(folder):
        return None
    where = nearest_existing(folder)
    what = "is not a folder" if not where.is_dir() else "is not writable"
    return (f"{key}: {where} {what}, so the run cannot write {folder}; set {key} to a folder you can write to "
            "(e.g. one in your home or scratch space)")


def check_output_argv(argv: Sequence[str], cwd: Path | None = None) -> str | None:
    """From the command line alone: a problem with the output folder Hydra is about to create, or None.
    Looks at `hydra.run.dir=` / `hydra.sweep.dir=` (with -m), else at `outputs/` or `multirun/` in cwd."""
    cwd = cwd or Path.cwd()
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    if given and "${" in given[-1]:
        given = [given[-1].split("${", 1)[0] or "."]  # an interpolation: check the fixed part before it
    folder = Path(given[-1]) if given else cwd / ("multirun" if multirun else "outputs")
    return output_problem(folder if folder.is_absolute() else cwd / folder, key)


def preflight(cfg: DictConfig, output_dir: Path) -> None:
    """Set up and check the cache. The run folder is checked first, by `stop_if_unwritable`; what
    `ckpt_path` resumes is decided by the run plan (prefopt.train.resume.resume_decision)."""
    paths = cfg.get("paths") or {}
    cache.configure(lock_timeout_s=paths.get("lock_timeout_s", cache.DEFAULT_LOCK_TIMEOUT_S))
    cache_dir = Path(paths.get("cache_dir") or cache.default_cache_root())
    if not writable(cache_dir):
        log.info(f"the cache {cache_dir} is read-only: every artifact this run needs must already be in "
                 "it (a missing one stops the run before training)")


def stop_if_unwritable(output_dir: Path) -> None:
    """Exit 1 with one line when the run folder cannot be written (results.json could not be either)."""
    problem = output_problem(output_dir, "hydra.run.dir")
    if problem:
        log.error(f"error: {problem}", extra=PLAIN)
        raise SystemExit(1)
