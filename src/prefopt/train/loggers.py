"""Experiment loggers for a run: CSV (always, unless `logger=none`) and W&B (`logger=wandb`).

W&B runs offline unless `WANDB_MODE` says otherwise. Each run gets
- a name and tags from method (the loss config's name), β, learning rate, data and seed;
- a group naming the study and its date (`sweep_group`), `job_type=train`, and the flattened config,
  whose `method` key (`fill_method`) lets the workspace group runs by method;
- an id derived from its run folder (`run_id`), so a job retried into the same folder resumes its
  earlier W&B run instead of adding a second one;
- one final history row (`log_summary`) with what is known only at the end: `eval/*`, `perf/*`, the
  run's hyperparameters as values (`hp/beta`, `hp/lr`, ... for x-axes of line plots) and the sample
  table, logged at the last training step so no curve gets a copy of its last point;
- `status` (`completed` | `failed`) and `error` in its summary, and a non-zero exit code when it
  failed (`finish_loggers`).
Exercised by `pytest tests/test_loggers.py tests/test_wandb_records.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefopt.store.cache import fingerprint

FINAL_PREFIXES = ("eval/", "perf/", "hp/")  # keys of the final row: not curves logged during training
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def fill_method(cfg: DictConfig, loss_choice: str | None) -> str:
    """Set `cfg.method` (left null in conf/train.yaml) to the loss config's name, e.g.
    `simpo_margin_low`, which tells controls apart from the loss class they share; a value set on the
    command line is kept."""
    if cfg.get("method") is None:
        cfg.method = loss_choice or "unknown"
    return str(cfg.method)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_identity(cfg: DictConfig, loss_name: str, data_name: str, method: str | None = None) -> tuple[str, list[str]]:
    """A readable run name and tags from method, β, learning rate, data and seed; `method` is the loss
    config's name (`simpo_margin_low`), `loss_name` the loss class's (`simpo`)."""
    beta = cfg.loss.get("beta")
    lr = OmegaConf.select(cfg, "optim.lr")
    method = method or cfg.get("method") or loss_name
    name = f"{method}-beta{_number(beta)}-lr{_number(lr)}-{data_name}-seed{cfg.seed}"
    tags = [f"loss:{loss_name}", f"method:{method}", f"data:{data_name}", f"beta:{_number(beta)}",
            f"lr:{_number(lr)}", f"seed:{cfg.seed}", *cfg.get("tags", [])]
    return name, tags


def sweep_group(sweep_dir: str | Path | None, study: str | None) -> str:
    """The W&B group of a multirun's jobs: the sweep folder's name when it names the study (the
    studies' `multirun/beta_sensitivity_<date>_<time>`, or a folder the user chose); for Hydra's
    default `multirun/<date>/<time>`, `<study>_<date>_<time>` (study: `multirun` without a sweep).
    A single run (no sweep folder) goes to `single-runs`."""
    if not sweep_dir:
        return "single-runs"
    parts = Path(sweep_dir).parts
    if len(parts) >= 2 and DATE.fullmatch(parts[-2]):
        return f"{study or 'multirun'}_{parts[-2]}_{parts[-1]}"
    return parts[-1]


def run_id(output_dir: str | Path) -> str:
    """A W&B run id fixed by the run folder: the same folder (a retried or resumed job) always logs
    into the same W&B run."""
    return fingerprint(str(Path(output_dir).resolve()))


def hyperparameters(cfg: DictConfig) -> dict[str, float]:
    """The run's knobs as loggable values: every numeric loss key (`hp/beta`, `hp/gamma_min`, ...),
    `hp/lr` and `hp/seed`."""
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    values = {f"hp/{k}": v for k, v in loss.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lr = OmegaConf.select(cfg, "optim.lr")
    if lr is not None:
        values["hp/lr"] = float(lr)
    values["hp/seed"] = int(cfg.seed)
    return values


def make_loggers(cfg: DictConfig, output_dir: Path, name: str, group: str, tags: list[str],
                 job_type: str = "train") -> list[Any]:
    from prefopt.train.csv_history import HistoryCSVLogger

    loggers: list[Any] = []
    if cfg.logger.get("csv", False):  # metrics.csv kept across a resume (prefopt.train.csv_history)
        loggers.append(HistoryCSVLogger(save_dir=str(output_dir), name="csv", version=""))
    wb = cfg.logger.get("wandb")
    if wb:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=wb.get("project", "prefopt"),
                entity=wb.get("entity"),
                name=name,
                group=wb.get("group") or group,
                tags=tags,
                job_type=job_type,
                id=run_id(output_dir),
                resume="allow",
                save_dir=str(output_dir),
                config=flatten(OmegaConf.to_container(cfg, resolve=True)),
                offline=os.environ["WANDB_MODE"] != "online",
            )
        )
    for logger in loggers:
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)  # Lightning's default; wandb warns about it
    return loggers


def wandb_identity(loggers: list[Any]) -> dict[str, Any] | None:
    """{project, group, id, name} of the run's W&B logger (None without one), for results.json."""
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if init is not None:
            return {k: init.get(k) for k in ("project", "group", "id", "name", "job_type")}
    return None


def _samples_table(samples: list[dict]) -> Any:
    import wandb

    columns = list(samples[0].keys())
    return wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])


def log_summary(loggers: list[Any], metrics: dict[str, float], samples: list[dict] | None = None,
                step: int | None = None, hparams: dict[str, float] | None = None) -> None:
    """One final row per logger at the last training step: the end-of-run metrics (`eval/*`,
    `perf/*`), `hparams` and, in W&B, the sample table; `train/*` and `val/*` were logged as curves
    already. W&B's summary gets every final metric."""
    final = {k: v for k, v in {**metrics, **(hparams or {})}.items()
             if k.startswith(FINAL_PREFIXES) and isinstance(v, (int, float))}
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "summary"):
            row: dict[str, Any] = dict(final)
            if step is not None:
                row["trainer/global_step"] = step
            if samples:
                row["eval/samples"] = _samples_table(samples)
            experiment.log(row)
            experiment.summary.update({**metrics, **(hparams or {})})
        else:
            logger.log_metrics(final, step=step)
        logger.save()


def finish_loggers(loggers: list[Any], status: str = "completed", error: str | None = None) -> None:
    """Close every logger; a W&B run records `status` and `error` in its summary and exits with code
    0 when completed, 1 otherwise, so a failed run is marked failed in the workspace."""
    for logger in loggers:
        logger.finalize("success" if status == "completed" else "failed")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.summary.update({"status": status, **({"error": error} if error else {})})
            sync = offline_sync_line(experiment)
            experiment.finish(exit_code=0 if status == "completed" else 1)
            if sync:
                from prefopt.log import get_logger

                get_logger().info(sync)


def offline_sync_line(experiment: Any) -> str | None:
    """Where an offline W&B run was written and the command that uploads it (None for an online run)."""
    settings = getattr(experiment, "settings", None)
    folder = getattr(settings, "sync_dir", None)
    if not folder or not getattr(settings, "_offline", False):
        return None
    import shlex

    return f"W&B (offline): {folder}; upload it with: wandb sync {shlex.quote(str(folder))}"
