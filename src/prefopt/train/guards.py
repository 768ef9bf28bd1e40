"""Stopping a run at the first non-finite loss or gradient, keeping the last good weights.

A NaN in one step would otherwise spread into the weights and every later metric. The guard raises
`TrainingDiverged` naming the step before the optimizer touches the weights, after saving them as
`checkpoints/last-good.ckpt`; the runner then records the run as failed with that reason, which ends
with the command that goes on from those weights at half the learning rate (`ckpt_path=<that file>
optim.lr=<half>`: a resume may change optim.lr, and the restored optimizer and schedule follow the new
value, prefopt.train.module.PreferenceModule.on_train_start).

Each check reads a flag back from the device, a host synchronisation that stalls a GPU's queue of kernels.
`check_finite_every_n_steps` (N, default 1: every step, as above) defers it: the loss and gradient checks
only AND a device flag each step, which is read on every N-th optimizer step and at the end of training;
when it fires the error names the steps since the last check, the weights have taken those steps, and
nothing is saved (set 1 to keep the last good weights). Exercised by `pytest tests/test_guards.py`.
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

    def __init__(self, checkpoint_dir: Path | None = None, overrides: list[str] | None = None,
                 every_n_steps: int = 1) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"check_finite_every_n_steps={every_n_steps!r}; it must be an integer >= 1")
        self.checkpoint_dir = checkpoint_dir
        self.overrides = overrides
        self.every = int(every_n_steps)
        self._finite: torch.Tensor | None = None  # deferred mode: all losses and gradients finite since the check
        self._since = 1  # the first step the flag covers

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

    def _note(self, finite: torch.Tensor) -> None:
        """Deferred mode: AND `finite` (a device bool) into the flag, with no host synchronisation."""
        self._finite = finite if self._finite is None else self._finite & finite

    def _check_deferred(self, trainer, final: bool = False) -> None:
        """Deferred mode: read the flag (one sync) on every N-th optimizer step, or at the end."""
        step = trainer.global_step + (0 if final else 1)  # the optimizer step being taken
        if self._finite is None or (not final and step % self.every):
            return
        finite, self._finite, since = self._finite, None, self._since
        self._since = step + 1
        if not bool(finite):
            raise TrainingDiverged(
                f"non-finite loss or gradient in steps {since}-{step} (check_finite_every_n_steps={self.every}: "
                "the weights took those steps and were not saved; set check_finite_every_n_steps=1 to stop at "
                "the first one with the last good weights; lower optim.lr or check the data)")

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self.every > 1:
            return self._note(torch.isfinite(loss.detach()).all())
        if not torch.isfinite(loss).all():
            self._stop(trainer, f"non-finite loss ({loss.item()})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Every gradient's largest magnitude in one foreach call (a NaN or an infinity anywhere makes it
        non-finite; a max never overflows, unlike a norm): read once a step (one device sync), or with
        `every_n_steps` > 1 kept on the device and read every N steps."""
        grads = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if grads:
            peaks = torch._foreach_norm([g for _, g in grads], float("inf"))
            finite = torch.isfinite(torch.stack([p.to(peaks[0].device) for p in peaks]))
            if self.every > 1:
                self._note(finite.all())
            elif not bool(finite.all()):
                first = int((~finite).nonzero()[0, 0])
                self._stop(trainer, f"non-finite gradient in {grads[first][0]}")
        if self.every > 1:
            self._check_deferred(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every > 1:
            self._check_deferred(trainer, final=True)
