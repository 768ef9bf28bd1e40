"""Building the Lightning Trainer of a run from `cfg.trainer` plus the run's callbacks and loggers.

- Validation runs once after the last optimizer step unless `trainer.val_check_interval` says otherwise.
- Checkpoints go to `<run dir>/checkpoints` (`last.ckpt`, plus every `checkpoint.every_n_train_steps`).
- `trainer.strategy` may be a Lightning name (`ddp`) or a mapping with `name: fsdp|deepspeed` whose
  other keys configure that strategy (conf/trainer/fsdp.yaml, deepspeed.yaml); FSDP wraps each decoder
  layer of the model (from its `_no_split_modules`).
- `data.effective_batch_size` fixes devices × batch × accumulation: the accumulation is derived from the
  device count, so an experiment means the same thing on 1 GPU or 8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from prefopt.errors import ConfigError
from prefopt.guards import FiniteGuard
from prefopt.perf import ThroughputMonitor
from prefopt.progress import StepProgressBar


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


def _trainer_summary(kwargs: dict[str, Any]) -> str:
    strategy = kwargs.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else getattr(strategy, "strategy_name", type(strategy).__name__)
    return f"accelerator={kwargs.get('accelerator', 'auto')}, devices={kwargs.get('devices', 'auto')}, strategy={name}"


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], desc: str,
                  model: torch.nn.Module | None = None, extra_callbacks: list[Any] = ()) -> L.Trainer:
    checkpoints = output_dir / "checkpoints"
    callbacks: list[Any] = [
        *extra_callbacks,
        StepProgressBar(desc),
        FiniteGuard(checkpoints if cfg.checkpoint.enabled else None),
        ThroughputMonitor(),
    ]
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
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"), model)

    def make(accumulate: int) -> L.Trainer:
        extra = {"accumulate_grad_batches": accumulate}
        if kwargs.get("val_check_interval") is None and kwargs.get("max_steps", -1) > 0:
            # validate once, after the last optimizer step (counted in batches across epochs)
            extra["val_check_interval"] = kwargs["max_steps"] * accumulate
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
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"the trainer settings do not work on this machine: {first} "
                              f"(trainer: {_trainer_summary(kwargs)})") from None

    trainer = make(int(kwargs.get("accumulate_grad_batches", 1)))
    effective = cfg.data.get("effective_batch_size")
    if effective:
        accumulate = accumulation_for(int(effective), trainer.world_size, int(cfg.data.batch_size))
        trainer = make(accumulate)
        print(f"[prefopt] effective batch {effective} = {trainer.world_size} device(s) × "
              f"{cfg.data.batch_size} per device × {accumulate} accumulation steps")
    return trainer
