"""A run folder belongs to one run at a time, and answers only for the config it ran.

- `hold(output_dir)`: the run-folder lock (`.prefopt-run.lock`, taken by rank 0 for the whole run). A
  second process started into the same `hydra.run.dir` stops at once with one line naming the holder,
  instead of the two deleting each other's checkpoints and interleaving `run.log`.
- `completed_metrics(output_dir, cfg)`: a folder whose results.json says `completed` is skipped (its
  results kept and returned, also to a sweeper) only when the run it recorded had this config, compared
  key by key on the resolved configs less the keys that change no number (`UNSCORED_KEYS`: loggers,
  paths, checkpointing, threads...). Otherwise `FolderTaken`: one line naming what differs and where to
  run instead; nothing in the folder is touched.
Called first thing by prefopt.run.runner.run. Exercised by `pytest tests/test_run_folder.py`.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from prefopt.errors import ConfigError
from prefopt.log import get_logger
from prefopt.run.results import read_results
from prefopt.store.lockfile import holder, open_lock, try_lock, write_holder

log = get_logger()
LOCK_NAME = ".prefopt-run.lock"
# keys whose value changes where and how a run reports, never its numbers
UNSCORED_KEYS = (
    "logger", "paths", "tags", "threads", "ckpt_path", "checkpoint", "sweep", "objective",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "eval.n_samples_logged",
)


class FolderTaken(ConfigError):
    """The run folder is in use by another process, or holds a completed run of another config."""


def hold(output_dir: Path) -> IO[str]:
    """Take the run folder's lock for this process (close the returned file to release it)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    fh = open_lock(path)
    if not try_lock(fh):
        fh.close()
        raise FolderTaken(f"{output_dir} is in use by another run ({holder(path)}); wait for it to finish, or "
                          "give this run its own folder (hydra.run.dir=...)")
    write_holder(fh)
    return fh


def release(fh: IO[str] | None) -> None:
    if fh is not None and not fh.closed:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def config_differences(recorded: dict[str, Any], requested: dict[str, Any], limit: int = 4) -> list[str]:
    """What differs between two resolved configs, less UNSCORED_KEYS ("key old -> new")."""
    from prefopt.train.resume import at_most, changed_keys, flat_config

    old, new = flat_config(recorded, ignore=UNSCORED_KEYS), flat_config(requested, ignore=UNSCORED_KEYS)
    return at_most(changed_keys(old, new, ()), limit)


def _requested(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable config: the run's validation names it
        return None


def completed_metrics(output_dir: Path, cfg: DictConfig) -> dict[str, float] | None:
    """The metrics of a run that completed in this folder with this config (kept, never overwritten);
    None when there is none; FolderTaken when the completed run had another config."""
    previous = read_results(output_dir / "results.json")
    if not previous or previous.get("status") != "completed":
        return None
    requested = _requested(cfg)
    changed = ["the config (this one does not resolve)"] if requested is None else \
        config_differences(previous.get("config") or {}, requested)
    if changed:
        raise FolderTaken(f"{output_dir} holds a completed run of another config ({'; '.join(changed)}); its "
                          "results are kept and this run did not start: run it in a new folder "
                          "(hydra.run.dir=... or hydra.sweep.dir=...), or delete that folder to replace it")
    log.info(f"{output_dir} already completed with this config: skipping (its results are kept)")
    return previous.get("metrics", {})
