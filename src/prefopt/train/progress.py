"""What a run shows while it works: training progress counted in optimizer steps, quieter Lightning
logs, and a copy of the console in the run folder's `run.log`.

- `StepProgressBar`: on a terminal, a tqdm bar `step/total optimizer steps` with the latest loss; anywhere else
  (a file, a pipe, a cluster log), one plain line every N steps instead of bar redraws.
- `ConsoleLog`: everything printed to stdout/stderr also goes to `run.log`, where a line redrawn with
  carriage returns (a progress bar) keeps only its final state.
Used by `prefopt.run.runner`; exercised by `pytest tests/test_run_log.py`.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.callbacks import Callback

from prefopt.log import get_logger

log = get_logger()


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (GPU/TPU availability, tips) out of the run's output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        chatter = logging.getLogger(name)
        chatter.setLevel(logging.WARNING)
        chatter.propagate = False
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen reference
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars for every load


def on_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class StepProgressBar(Callback):
    """Progress over optimizer steps with the latest training loss and accuracy: a tqdm bar on a
    terminal, else a line `[prefopt] <desc>: step 40/200, loss 0.652, accuracy 0.750` every `every`
    steps (default: a tenth of the run) and at the last step."""

    def __init__(self, desc: str = "training", every: int | None = None, terminal: bool | None = None) -> None:
        self.desc = desc
        self.every = every
        self.terminal = terminal
        self.bar: Any = None
        self.last_line = -1
        self.started = 0.0
        self.first_step = 0
        self.shown: dict[str, str] = {}  # the metrics on the last progress line
        self.total: int | None = None

    @staticmethod
    def _total(trainer) -> int | None:
        """Optimizer steps this run will take: max_steps, or what epochs and accumulation give."""
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - unknown before the data is set up, or infinite
            total = trainer.max_steps
        return int(total) if total and total > 0 and total != float("inf") else None

    def on_train_start(self, trainer, pl_module) -> None:
        self.total = total = self._total(trainer)
        self.started, self.first_step = time.time(), int(trainer.global_step)
        if not getattr(trainer, "is_global_zero", True):
            return
        if self.first_step > 0:
            left = f", {total - self.first_step} to go" if total else ""
            log.info(f"{self.desc}: resumed from step {self.first_step} "
                     f"(checkpoint {getattr(trainer, 'ckpt_path', None) or 'restored'}){left}")
        if self.terminal if self.terminal is not None else on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=trainer.global_step, desc=self.desc, unit="step", dynamic_ncols=True)
        elif self.every is None:
            self.every = max(5, (total or 100) // 10)

    def _postfix(self, trainer) -> dict[str, str]:
        metrics = trainer.callback_metrics
        names = {"train/loss": "loss", "train/rewards/accuracies": "accuracy"}
        return {short: f"{float(metrics[k]):.3f}" for k, short in names.items() if k in metrics}

    def _fresh_postfix(self, trainer) -> str:
        """", loss 0.652, accuracy 0.750" when those changed since the last line; "" when they are the
        values already shown (logged every `trainer.log_every_n_steps` steps, not at each line)."""
        values = self._postfix(trainer)
        if values == self.shown:
            return ""
        self.shown = values
        return "".join(f", {k} {v}" for k, v in values.items())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not getattr(trainer, "is_global_zero", True):  # data-parallel workers: rank 0 speaks for all
            return
        step = trainer.global_step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(self._postfix(trainer), refresh=False)
            return
        last = bool(self.total and step >= self.total)
        if step != self.last_line and (step % self.every == 0 or last):
            self.last_line = step
            total = f"/{self.total}" if self.total else ""
            post = self._fresh_postfix(trainer)
            rate = (step - self.first_step) / max(time.time() - self.started, 1e-9)  # this process's steps
            log.info(f"{self.desc}: step {step}{total}{post} ({rate:.1f} steps/s)")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _LineLog:
    """Writes text to a file line by line; a line redrawn with '\\r' keeps only its last state."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.partial = ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.file.write(line.rsplit("\r", 1)[-1] + "\n")
        if lines:
            self.file.flush()

    def close(self) -> None:
        if self.partial.rsplit("\r", 1)[-1].strip():
            self.file.write(self.partial.rsplit("\r", 1)[-1] + "\n")
        self.partial = ""
        self.file.close()


class _Tee:
    """A stdout/stderr stand-in: writes go to the console and to the shared run.log."""

    def __init__(self, stream: Any, log: _LineLog) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the console
        return getattr(self._stream, name)


class ConsoleLog:
    """Copy stdout and stderr into `path` (appended) until `close()`; usable as a context manager."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.log = _LineLog(open(path, "a", encoding="utf-8"))
        self.saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.log), _Tee(sys.stderr, self.log)

    def close(self) -> None:
        if self.log is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = self.saved
        self.log.close()
        self.log = None

    def __enter__(self) -> "ConsoleLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
