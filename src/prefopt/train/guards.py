"""Stopping a run at the first non-finite loss or gradient, keeping the last good weights.

A NaN in one step would otherwise spread into the weights and every later metric. The guard raises
`TrainingDiverged` naming the step before the optimizer touches the weights, after saving them as
`checkpoints/last-good.ckpt`; the runner then records the run as failed with that reason, which ends
with the command that goes on from those weights at half the learning rate (`ckpt_path=<that file>
optim.lr=<half>`: a resume may change optim.lr, and the restored optimizer and schedule follow the new
value, prefopt.train.module.PreferenceModule.on_train_start). Exercised by `pytest tests/test_guards.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.errors import TrainingDiverged
from prefopt.train.command import rerun_command



def job_overrides() -> list[str] | None:
    """The running Hydra job's command-line overrides (a multirun job's own), or None outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def peak_lr(trainer) -> float | None:
    """The configured learning rate (the schedule's base) of the first parameter group, or None."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            return float(group.get("initial_lr", group["lr"]))
    return None


def resume_command(overrides: list[str] | None, run_dir: Path, ckpt: Path, lr: float | None) -> str:
    """The shell line that resumes this run's folder from `ckpt` with half of `lr`."""
    half = f"{lr / 2:.3g}" if lr is not None else "<lower>"
    command = rerun_command(overrides or [], {"hydra.run.dir": run_dir, "ckpt_path": ckpt, "optim.lr": half})
    return command if overrides is not None else f"{command} (with the run's other overrides)"


class FiniteGuard(Callback):
    """`checkpoint_dir`: where last-good.ckpt goes (None: nothing is saved); `overrides`: the run's
    command-line overrides for the resume command (default: the Hydra job's)."""

    def __init__(self, checkpoint_dir: Path | None = None, overrides: list[str] | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.overrides = overrides

    def _stop(self, trainer, what: str) -> None:
        where = ""
        if self.checkpoint_dir is not None:
            path = (Path(self.checkpoint_dir) / "last-good.ckpt").absolute()
            trainer.save_checkpoint(str(path))
            overrides = self.overrides if self.overrides is not None else job_overrides()
            command = resume_command(overrides, path.parent.parent, path, peak_lr(trainer))
            where = (f"; the weights before this step are in {path}; go on from them with half the learning "
                     f"rate: {command}")
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
