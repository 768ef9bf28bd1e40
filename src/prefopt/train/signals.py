"""Honest interrupts: Ctrl-C (SIGINT) and SIGTERM (what SLURM and most schedulers send) stop a run
with a resumable checkpoint, `status: interrupted` in results.json and exit status 130 / 143.

`InterruptGuard` is installed for the whole job. A signal during training is noted and acted on at the
end of the current optimizer step (after its last accumulated batch) or validation, where Lightning's
own periodic checkpoints are taken, so resuming gives the same numbers as an uninterrupted run: it saves
`checkpoints/last.ckpt` (whatever `checkpoint.every_n_train_steps` says), then raises `Interrupted`.
Outside training (building data, evaluating) it raises at once. A second Ctrl-C stops without saving.
In a data-parallel run the ranks agree on the step to stop at (one all-reduce of a flag per step).
The runner records the interrupt (prefopt.run.interrupted.record_interrupt) and exits. Under SLURM, Lightning's own requeue
(`slurm_plugins`) saves `hpc_ckpt_*.ckpt` on SIGUSR1 and requeues the job, which resumes from the
newest checkpoint of its folder (`prefopt.train.resume.requeued_checkpoint`).
Exercised by `pytest tests/test_signals.py`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from prefopt.log import get_logger, is_rank_zero

log = get_logger()
HANDLED = (signal.SIGINT, signal.SIGTERM)


def _say(text: str) -> None:
    """A signal handler's line (rank 0 only), written without `logging`. The handler runs between two
    bytecodes of whatever the main thread was doing, possibly in the middle of a log call: logging would
    re-enter its handler lock (an RLock, so it goes on) and write into a stream half-way through a write,
    and its errors end as a "--- Logging error ---" traceback. A plain write to sys.stderr (the console,
    and run.log through `ConsoleLog`) is the least that can go wrong; if even that is refused (a buffered
    stream interrupted mid-write raises "reentrant call"), the bytes go straight to file descriptor 2."""
    if not is_rank_zero():
        return
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (RuntimeError, OSError, ValueError):
        os.write(2, text.encode("utf-8", "replace"))


class Interrupted(BaseException):
    """A run stopped by a signal: not an Exception, so nothing on the way mistakes it for an error."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptGuard(Callback):
    """Signal handlers for one job plus the Lightning hooks that stop it at a step boundary."""

    def __init__(self, checkpoints: bool = True) -> None:
        self.checkpoints = checkpoints  # cfg.checkpoint.enabled: with it off, nothing is saved
        self.signum: int | None = None
        self.training = False
        self.step = 0
        self._previous: dict[int, Any] = {}

    # ---- the handlers ---------------------------------------------------------------------------
    def install(self) -> "InterruptGuard":
        for signum in HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        again = self.signum is not None
        self.signum = signum
        if not self.training or again:  # nothing to save, or the user insists
            raise Interrupted(signum, self.step, None)
        _say(f"\n[prefopt] {signal.Signals(signum).name}: stopping after this step with a checkpoint "
             "(send it again to stop at once)\n")

    # ---- Lightning hooks ------------------------------------------------------------------------
    def install_over_lightning(self) -> None:
        """Lightning puts its own SIGTERM handler first once fit has set up (it raises SIGTERMException,
        a SystemExit with status 0, with no checkpoint); take SIGTERM back so that it stops at a step
        boundary with a checkpoint, like SIGINT."""
        if signal.getsignal(signal.SIGTERM) != self._handle:
            signal.signal(signal.SIGTERM, self._handle)

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self.install_over_lightning()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.install_over_lightning()
        self.training, self.step = True, trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stepped = trainer.global_step != self.step  # not in the middle of a gradient accumulation
        self.step = trainer.global_step
        if stepped:
            self._stop_if_asked(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.training and not trainer.sanity_checking:
            self._stop_if_asked(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.training = False

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.training = False

    def _stop_if_asked(self, trainer: Any) -> None:
        asked = self.signum is not None
        if trainer.world_size > 1:  # every rank stops at the same step (the save is collective)
            asked = bool(trainer.strategy.reduce_boolean_decision(asked, all=False))
        if not asked:
            return
        signum = self.signum if self.signum is not None else signal.SIGTERM
        self.training = False
        path = self._save(trainer)
        raise Interrupted(signum, trainer.global_step, path)

    def _save(self, trainer: Any) -> str | None:
        if not self.checkpoints:
            return None
        folder = next((cb.dirpath for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath),
                      None) or str(Path(trainer.default_root_dir) / "checkpoints")
        path = str(Path(folder) / "last.ckpt")
        trainer.save_checkpoint(path)
        return path


def resume_hint(stop: Interrupted, argv: list[str], output_dir: Path) -> str:
    """The one line that says how to go on from where the run stopped."""
    name = signal.Signals(stop.signum).name
    if stop.checkpoint is None:
        return (f"[prefopt] interrupted by {name} at step {stop.step}; no checkpoint was saved, "
                "so run the same command again to start over")
    from prefopt.train.command import rerun_command  # quoted for the shell and for Hydra: any folder name pastes

    command = rerun_command(argv, {"hydra.run.dir": output_dir, "ckpt_path": "last"})
    return f"[prefopt] interrupted by {name} at step {stop.step}, checkpoint {stop.checkpoint}; resume with: {command}"


def slurm_plugins() -> list[Any]:
    """Lightning's SLURM environment with requeue on SIGUSR1 when running under SLURM (none elsewhere):
    the job saves `hpc_ckpt_*.ckpt` in its run folder, requeues itself and resumes from it.
    Ask SLURM for the signal before the time limit, e.g. `#SBATCH --signal=SIGUSR1@90`."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]
