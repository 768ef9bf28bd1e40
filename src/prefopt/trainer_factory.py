"""Building the Lightning Trainer of a run from `cfg.trainer` plus the run's callbacks and loggers.

Validation runs once after the last optimizer step unless `trainer.val_check_interval` says otherwise;
checkpoints go to `<run dir>/checkpoints` (`last.ckpt`, plus every `checkpoint.every_n_train_steps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from prefopt.guards import FiniteGuard
from prefopt.progress import StepProgressBar


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], desc: str) -> L.Trainer:
    checkpoints = output_dir / "checkpoints"
    callbacks: list[Any] = [StepProgressBar(desc), FiniteGuard(checkpoints if cfg.checkpoint.enabled else None)]
    if cfg.checkpoint.enabled:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=str(checkpoints),
                save_last=True,
                save_top_k=-1 if cfg.checkpoint.every_n_train_steps else 0,  # keep every periodic one
                every_n_train_steps=cfg.checkpoint.every_n_train_steps or None,
            )
        )
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_", None)
    if kwargs.get("val_check_interval") is None and kwargs.get("max_steps", -1) > 0:
        # validate once, after the last optimizer step (counted in batches across epochs)
        kwargs["val_check_interval"] = kwargs["max_steps"] * kwargs.get("accumulate_grad_batches", 1)
    return L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=bool(cfg.checkpoint.enabled),
        enable_progress_bar=False,
        default_root_dir=str(output_dir),
    )
