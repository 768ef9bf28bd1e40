"""The CSV metrics history of a run folder, kept across a resume.

Lightning's CSVLogger deletes `csv/metrics.csv` when a run starts in a folder that has one ("Previous
log files in this directory will be deleted"), so a resumed run's history began at the resumed step.
`HistoryCSVLogger` keeps the rows already there: when training starts (`KeepHistory`, a callback), the
rows logged at or before the step the run resumes from stay, the rows an interrupted run logged after
its checkpoint are dropped (the resumed run logs those steps again), and the new rows follow. A fresh
start in the folder (step 0) keeps nothing, as before. Used by prefopt.train.loggers.make_loggers and
prefopt.train.trainer_factory. Exercised by `pytest tests/test_csv_history.py`.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, less the deletion of an existing metrics.csv: its rows are read once and
    written back, up to the resumed step, before the first new row."""

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        self.previous: list[dict[str, Any]] = []
        self.keep_until: int | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.previous = list(csv.DictReader(fh))

    def _kept(self) -> list[dict[str, Any]]:
        def step(row: dict[str, Any]) -> float:
            try:
                return float(row.get("step") or "nan")
            except ValueError:
                return float("nan")

        if self.keep_until is None:
            return self.previous
        return [row for row in self.previous if step(row) <= self.keep_until]

    def save(self) -> None:
        if self.previous is not None and self.metrics:
            kept = [{k: v for k, v in row.items() if v not in ("", None)} for row in self._kept()]
            self.previous = None
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)  # written again whole below: the kept rows, then the new
            self.metrics = kept + self.metrics
        super().save()


class HistoryCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def resumed_at(self, step: int) -> None:
        """Keep the earlier rows logged at steps <= `step` (0: a fresh start keeps none)."""
        writer = self.experiment
        if writer.previous is not None:
            writer.keep_until = step if step > 0 else -1


class KeepHistory(Callback):
    """Tells the run's HistoryCSVLogger the step training starts from (after a checkpoint is restored)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, HistoryCSVLogger):
                logger.resumed_at(int(trainer.global_step))
