"""Experiment loggers for a run: CSV (always, unless `logger=none`) and W&B (`logger=wandb`).

W&B runs offline unless `WANDB_MODE` says otherwise; each run gets a name, group and tags built from
loss, β, data and seed, and the flattened resolved config, so W&B's workspace can group by loss and put
β on the x-axis. `finish_loggers` closes the W&B run so a multirun's next job starts a fresh one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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


def run_identity(cfg: DictConfig, loss_name: str, data_name: str, method: str | None = None) -> tuple[str, list[str]]:
    """A readable run name and tags from the loss, β, data and seed; `method` is the loss config's
    name (`simpo_margin_low`), which tells controls apart from the loss class they share."""
    beta = cfg.loss.get("beta")
    method = method or loss_name
    name = f"{method}-beta{beta}-{data_name}-seed{cfg.seed}"
    tags = [f"loss:{loss_name}", f"method:{method}", f"data:{data_name}", f"beta:{beta}", f"seed:{cfg.seed}",
            *cfg.get("tags", [])]
    return name, tags


def make_loggers(cfg: DictConfig, output_dir: Path, name: str, group: str, tags: list[str]) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if cfg.logger.get("csv", False):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="csv", version=""))
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
                save_dir=str(output_dir),
                config=flatten(OmegaConf.to_container(cfg, resolve=True)),
                offline=os.environ["WANDB_MODE"] != "online",
            )
        )
    return loggers


def log_summary(loggers: list[Any], metrics: dict[str, float], samples: list[dict] | None = None,
                step: int | None = None) -> None:
    """Final metrics into every logger at the last step (W&B: summary and a table of sample texts)."""
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "summary"):
            experiment.summary.update(metrics)
            if samples:
                import wandb

                columns = list(samples[0].keys())
                experiment.log({"eval/samples": wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])})
        logger.save()


def finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
