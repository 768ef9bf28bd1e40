"""Building the Lightning Trainer of a run from `cfg.trainer` plus the run's callbacks and loggers.

- Validation runs 4-8 times at evenly spaced optimizer steps, the last one at the final step
  (`validation_steps`), unless `trainer.val_check_interval` says otherwise (N: every N batches).
- Checkpoints go to `<run dir>/checkpoints` (`last.ckpt`, plus every `checkpoint.every_n_train_steps`).
- `trainer.strategy` may be a Lightning name (`ddp`) or a mapping with `name: fsdp|deepspeed` whose
  other keys configure that strategy (conf/trainer/fsdp.yaml, deepspeed.yaml); FSDP wraps each decoder
  layer of the model (from its `_no_split_modules`).
- `data.effective_batch_size` fixes devices × batch × accumulation: the accumulation is derived from the
  device count, so an experiment means the same thing on 1 GPU or 8.
- `DataFitCheck` compares the data with the settings before Lightning sizes the fit: fewer batches per
  device than one optimizer step accumulates is a one-line error; a `val_check_interval` longer than an
  epoch (with `check_val_every_n_epoch` set) is lowered to the epoch's batches, and says so.
- `trainer.gradient_clip_val` is applied by `prefopt.train.clipping.GradientClipper`, not by Lightning, whose
  mixed-precision plugin refuses to clip for the fused AdamW and whose FSDP plugin cannot clip by norm
  (DeepSpeed, which clips inside its engine, keeps Lightning's setting).
Exercised by `pytest tests/test_gpu_configs.py tests/test_scale.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from prefopt.train.clipping import GradientClipper
from prefopt.errors import ConfigError, first_line
from prefopt.log import get_logger
from prefopt.train.guards import FiniteGuard
from prefopt.train.stall import LossStallWarning
from prefopt.train.perf import ThroughputMonitor
from prefopt.train.progress import StepProgressBar
from prefopt.train.signals import slurm_plugins
from prefopt.train.csv_history import KeepHistory

log = get_logger()


def decoder_layer_classes(model: torch.nn.Module) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ConfigError(f"trainer.strategy: cannot find the decoder layers of {type(model).__name__} to wrap")
    return classes


def _fsdp(spec: dict[str, Any], model: torch.nn.Module):
    from lightning.pytorch.strategies import FSDPStrategy

    layers = decoder_layer_classes(model)
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if spec.pop("activation_checkpointing", True) else None,
        **spec,
    )


def _deepspeed(spec: dict[str, Any], model: torch.nn.Module):
    import importlib.util

    from lightning.pytorch.strategies import DeepSpeedStrategy

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("trainer=deepspeed needs DeepSpeed, which is not installed: pip install deepspeed "
                          "(or use trainer=fsdp, which needs nothing more)")
    return DeepSpeedStrategy(**spec)


STRATEGIES: dict[str, Callable[[dict[str, Any], torch.nn.Module], Any]] = {"fsdp": _fsdp, "deepspeed": _deepspeed}


def build_strategy(spec: Any, model: torch.nn.Module | None) -> Any:
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in STRATEGIES:
        raise ConfigError(f"trainer.strategy.name={name!r} is not allowed; it must be one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](spec, model)


def accumulation_for(effective: int, world_size: int, batch_size: int) -> int:
    """Gradient accumulation so that world_size × batch_size × accumulation == effective."""
    per_step = world_size * batch_size
    if effective % per_step:
        raise ConfigError(
            f"data.effective_batch_size={effective} is not a multiple of devices × data.batch_size = "
            f"{world_size} × {batch_size}; change data.batch_size or the device count"
        )
    return effective // per_step


class DataFitCheck(Callback):
    """Checks, at `setup` (before Lightning builds the loop), that the training data fills what the
    trainer settings assume; see the module docstring."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if stage != "fit" or datamodule is None:
            return
        batches = len(datamodule.train_dataloader())
        check_one_step_fits(batches, trainer.accumulate_grad_batches, trainer.world_size,
                            len(datamodule.train_dataset) if datamodule.train_dataset is not None else None)
        interval = trainer.val_check_interval
        if isinstance(interval, int) and interval > batches and trainer.check_val_every_n_epoch is not None:
            log.info(f"trainer.val_check_interval={interval} batches is longer than an epoch "
                     f"({batches} batches per device): validating every {batches} batches instead")
            trainer.val_check_interval = batches


def check_one_step_fits(batches: int, accumulate: int, world_size: int, pairs: int | None = None) -> None:
    """A ConfigError when an epoch has fewer batches per device than one optimizer step accumulates."""
    if batches >= accumulate:
        return
    what = f"{pairs} train pairs" if pairs is not None else "the train data"
    raise ConfigError(
        f"{what} make {batches} batch(es) per device, fewer than the {accumulate} accumulated for one "
        f"optimizer step ({world_size} device(s)): lower data.effective_batch_size (or "
        f"trainer.accumulate_grad_batches) or use more data"
    )


def is_deepspeed(strategy: Any) -> bool:
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return "deepspeed" in name.lower()


def take_clipping(kwargs: dict[str, Any]) -> list[Any]:
    """Move gradient clipping from the Trainer arguments into a `GradientClipper` callback (none for
    DeepSpeed, which clips inside its own step with Lightning's `gradient_clip_val`)."""
    if is_deepspeed(kwargs.get("strategy", "auto")):
        return []
    value = kwargs.pop("gradient_clip_val", None)
    algorithm = kwargs.pop("gradient_clip_algorithm", None)
    return [GradientClipper(value, algorithm)] if value else []


def validation_steps(max_steps: int, points: range = range(4, 9)) -> int:
    """Optimizer steps between validations: max_steps / n for the smallest n in `points` that divides
    max_steps (200 -> 50: 4 points), so that the last validation falls on the last step; max_steps
    (one validation, at the end) when none does."""
    for n in points:
        if max_steps % n == 0:
            return max_steps // n
    return max_steps


def _trainer_summary(kwargs: dict[str, Any]) -> str:
    strategy = kwargs.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else getattr(strategy, "strategy_name", type(strategy).__name__)
    return f"accelerator={kwargs.get('accelerator', 'auto')}, devices={kwargs.get('devices', 'auto')}, strategy={name}"


def _callbacks(cfg: DictConfig, checkpoints: Path, desc: str, extra_callbacks: list[Any],
               lr_range: tuple[float, float] | None = None) -> list[Any]:
    """Progress, the finite-loss guard, throughput, the data-fit check and (if enabled) checkpoints."""
    callbacks: list[Any] = [
        *extra_callbacks,
        StepProgressBar(desc),
        KeepHistory(),
        FiniteGuard(checkpoints if cfg.checkpoint.enabled else None,
                    every_n_steps=int(cfg.get("check_finite_every_n_steps", 1) or 1)),
        LossStallWarning(lr_range=lr_range),
        ThroughputMonitor(),
        DataFitCheck(),
    ]
    if cfg.checkpoint.enabled:
        from prefopt.train.checkpointing import checkpoint_callback

        callbacks.append(checkpoint_callback(cfg, checkpoints))  # last.ckpt + the newest checkpoint.keep periodic
    return callbacks


def _make_trainer(cfg: DictConfig, kwargs: dict[str, Any], accumulate: int, loggers: list[Any],
                  callbacks: list[Any], output_dir: Path) -> L.Trainer:
    """A lightning.Trainer from the trainer group's arguments; settings this machine cannot run are a
    ConfigError line."""
    extra = {"accumulate_grad_batches": accumulate}
    if kwargs.get("val_check_interval") is None and kwargs.get("max_steps", -1) > 0:
        # a few validations, the last after the last optimizer step (counted in batches across epochs)
        extra["val_check_interval"] = validation_steps(kwargs["max_steps"]) * accumulate
    try:
        return L.Trainer(
            **{**kwargs, **extra},
            logger=loggers or False,
            callbacks=callbacks,
            enable_checkpointing=bool(cfg.checkpoint.enabled),
            enable_progress_bar=False,
            use_distributed_sampler=False,  # PreferenceDataModule shards the data itself (data/sampler.py)
            default_root_dir=str(output_dir),
        )
    except (ValueError, MisconfigurationException, RuntimeError) as err:  # e.g. fsdp on a CPU, no GPU
        raise ConfigError(f"the trainer settings do not work on this machine: {first_line(err)} "
                          f"(trainer: {_trainer_summary(kwargs)})") from None


def checkpoint_plugins(kwargs: dict[str, Any]) -> list[Any] | None:
    """The trainer's plugins: the user's (`trainer.plugins`), or under SLURM requeue-and-resume on SIGUSR1
    (prefopt.train.signals); plus atomic, checksummed, tensors-only checkpoint files
    (prefopt.train.ckpt_io) wherever the strategy writes single files (not DeepSpeed's own folders)."""
    from prefopt.train.ckpt_io import SafeCheckpointIO

    given = kwargs.get("plugins") or slurm_plugins() or []
    plugins = list(given) if isinstance(given, (list, tuple)) else [given]
    if not is_deepspeed(kwargs.get("strategy", "auto")):
        plugins.append(SafeCheckpointIO())
    return plugins or None


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], desc: str,
                  model: torch.nn.Module | None = None, extra_callbacks: list[Any] = (),
                  lr_range: tuple[float, float] | None = None) -> L.Trainer:
    """The run's Trainer: the trainer group's arguments with our strategy, clipping and SLURM plugins;
    built again with the accumulation that `data.effective_batch_size` asks for once the world size is known.
    `lr_range`: the usual learning rates the stall warning names (prefopt.train.stall)."""
    callbacks = _callbacks(cfg, output_dir / "checkpoints", desc, list(extra_callbacks), lr_range)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_", None)
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"), model)
    callbacks.extend(take_clipping(kwargs))
    kwargs["plugins"] = checkpoint_plugins(kwargs)
    trainer = _make_trainer(cfg, kwargs, int(kwargs.get("accumulate_grad_batches", 1)), loggers, callbacks, output_dir)
    effective = cfg.data.get("effective_batch_size")
    if effective:
        accumulate = accumulation_for(int(effective), trainer.world_size, int(cfg.data.batch_size))
        trainer = _make_trainer(cfg, kwargs, accumulate, loggers, callbacks, output_dir)
        log.info(f"effective batch {effective} = {trainer.world_size} device(s) × "
                 f"{cfg.data.batch_size} per device × {accumulate} accumulation steps")
    return trainer
