"""Gradient clipping that works with the fused AdamW kernel under every precision and strategy.

Lightning's own clipping refuses two of the project's trainer configs: its mixed-precision plugin will
not clip for an optimizer that unscales gradients inside its step (fused AdamW: "does not allow for
gradient clipping because it performs unscaling of gradients internally"), and its FSDP plugin cannot
clip by norm at all (it holds no handle on the root FSDP module). So `prefopt.train.trainer_factory` takes
`trainer.gradient_clip_val` / `gradient_clip_algorithm` away from Lightning and hands them to
`GradientClipper`, which clips just before each optimizer step:

- bf16-mixed and 32-true: no gradient scaler, the gradients are the true ones; clip them as they are.
- 16-mixed (fp16 GradScaler): Lightning unscales only optimizers that do not unscale themselves, so
  for a fused one the clipper calls `scaler.unscale_` first (the scaler's `step` then knows the
  gradients are unscaled and passes no scale to the kernel).
- FSDP: the norm over every rank's shard, by the root module's `clip_grad_norm_`.
- DeepSpeed clips inside its own engine step (Lightning passes it `gradient_clip_val`), so
  trainer_factory leaves that strategy to Lightning.

Exercised by `pytest tests/test_gpu_configs.py`.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.errors import ConfigError


def _root_fsdp(trainer) -> torch.nn.Module | None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = getattr(trainer.strategy, "model", None)
    return root if isinstance(root, FullyShardedDataParallel) else None


def unscale_if_needed(trainer, optimizer) -> None:
    """fp16 mixed precision with an optimizer that unscales in its own step: unscale before clipping."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled() or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return
    scaler.unscale_(optimizer)


def clip_gradients(trainer, optimizer, max_value: float, algorithm: str = "norm") -> None:
    """Clip the optimizer's gradients to `max_value`: by their global norm, or elementwise ("value")."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return
    unscale_if_needed(trainer, optimizer)
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, max_value)
        return
    root = _root_fsdp(trainer)
    if root is not None:
        root.clip_grad_norm_(max_value)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_value)


class GradientClipper(Callback):
    """Clips gradients before every optimizer step (after gradient accumulation)."""

    def __init__(self, max_value: float, algorithm: str | None = "norm") -> None:
        if algorithm not in (None, "norm", "value"):
            raise ConfigError(f"trainer.gradient_clip_algorithm={algorithm!r} is not allowed; it must be norm or value")
        self.max_value, self.algorithm = float(max_value), algorithm or "norm"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        clip_gradients(trainer, optimizer, self.max_value, self.algorithm)
