"""Saying so when a run's training loss has not moved from where a sigmoid loss starts (log 2).

A DPO-style loss is -log σ(z); while z stays at 0 the loss is log 2 = 0.6931 whatever the batch: the
policy has not moved from the reference (a learning rate too small to matter), or β is so small that
β·margin stays near 0. Such a run completes without an error and its metrics look like numbers, so
`LossStallWarning` watches the first `steps` optimizer steps (or the whole run, if shorter but at least
`min_steps`: a reference-based loss's first step is log 2 by construction): when every
training loss of them is within `tolerance` of the value the loss declares (`PreferenceLoss.stall_loss`;
a loss that declares none is not watched), it writes one warning naming the loss's β and the learning
rate and their usual ranges. It knows no loss by name. The Trainer gets it from
`prefopt.train.trainer_factory`. Exercised by `pytest tests/test_stall.py`.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import Callback

from prefopt.log import get_logger
from prefopt.train.guards import peak_lr

log = get_logger()


class LossStallWarning(Callback):
    """Warns once when the training loss stays at the loss's `stall_loss` for the first `steps` steps."""

    def __init__(self, steps: int = 50, tolerance: float = 1e-3, min_steps: int = 5,
                 lr_range: tuple[float, float] | None = None) -> None:
        """`lr_range`: the learning rates the warning calls usual (the run passes optim.lr's advised range,
        prefopt.config.schema; None: none named)."""
        self.steps, self.tolerance, self.min_steps, self.lr_range = steps, tolerance, min_steps, lr_range
        self.target: float | None = None  # the loss's stall_loss; None: not watching (any more)
        self.first_step = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        loss_fn = getattr(pl_module, "loss_fn", None)
        self.target = getattr(loss_fn, "stall_loss", None)
        self.first_step = trainer.global_step
        if self.first_step >= self.steps:  # resumed past the window
            self.target = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.target is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) * trainer.accumulate_grad_batches  # Lightning divides it by the accumulation
        if not abs(value - self.target) < self.tolerance:  # it moved (or is NaN: FiniteGuard's business)
            self.target = None
            return
        if trainer.global_step >= self.steps:
            self._warn(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.target is not None and trainer.global_step - self.first_step >= self.min_steps:  # stuck all along
            self._warn(trainer, pl_module)

    def _warn(self, trainer: Any, pl_module: Any) -> None:
        log.warning(stall_message(self.target, self.tolerance, self.first_step, trainer.global_step,
                                  pl_module.loss_fn, peak_lr(trainer), self.lr_range))
        self.target = None


def stall_message(target: float, tolerance: float, first: int, last: int, loss_fn: Any, lr: float | None,
                  lr_range: tuple[float, float] | None = None) -> str:
    """The one warning line: where the loss sat, for which steps, and which settings to raise."""
    name = f"{target:.4f}" + (" = log 2" if math.isclose(target, math.log(2)) else "")
    beta, beta_range = getattr(loss_fn, "beta", None), getattr(loss_fn, "beta_range", None)
    knobs = []
    if beta is not None:
        knobs.append(f"loss.beta={beta:g}" + (f" (usual {beta_range[0]:g} to {beta_range[1]:g})" if beta_range else ""))
    if lr is not None:
        knobs.append(f"optim.lr={lr:g}" + (f" (usual {lr_range[0]:g} to {lr_range[1]:g})" if lr_range else ""))
    return (f"warning: the training loss has not moved from {name} (within {tolerance:g}) in steps {first + 1}-{last}: "
            f"the policy is not learning from the pairs; {' or '.join(knobs) or 'β or the learning rate'} "
            "is probably too small, try raising it")
