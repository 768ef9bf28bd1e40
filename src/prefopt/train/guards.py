"""Stopping a run at the first non-finite loss or gradient, keeping the last good weights.

A NaN in one step would otherwise spread into the weights and every later metric. The guard raises
`TrainingDiverged` naming the step before the optimizer touches the weights, after saving them as
`checkpoints/last-good.ckpt`; the runner then records the run as failed with that reason.
Exercised by `pytest tests/test_guards.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.errors import TrainingDiverged


class FiniteGuard(Callback):
    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def _stop(self, trainer, what: str) -> None:
        where = ""
        if self.checkpoint_dir is not None:
            path = Path(self.checkpoint_dir) / "last-good.ckpt"
            trainer.save_checkpoint(str(path))
            where = f"; the weights before this step are in {path}"
        raise TrainingDiverged(f"{what} at step {trainer.global_step + 1} (lower optim.lr or check the data){where}")

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            self._stop(trainer, f"non-finite loss ({loss.item()})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """One device sync per step: every gradient's largest magnitude in one foreach call (a NaN
        or an infinity anywhere makes it non-finite; a max never overflows, unlike a norm), read once."""
        grads = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not grads:
            return
        peaks = torch._foreach_norm([g for _, g in grads], float("inf"))
        finite = torch.isfinite(torch.stack([p.to(peaks[0].device) for p in peaks]))
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            self._stop(trainer, f"non-finite gradient in {grads[first][0]}")
