"""The Trainer callback that serves the frozen log-probs from cached tables (prefopt.scoring.logp_cache).

`LogpCaches` calls `attach_caches` when fit starts: after the process group exists (so data-parallel
ranks split the build) and before the strategy wraps the model (so a released reference is never
wrapped). The runner adds it (prefopt.run.steps.trainer_for). Exercised by `pytest tests/test_logp_cache.py
tests/test_scale.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.scoring.logp_cache import attach_caches, device_of


class LogpCaches(Callback):
    """Attaches the tables when fit starts: after the process group exists (so data-parallel ranks split
    the build) and before the strategy wraps the model (so a released reference is never wrapped).
    What it did (`attach_caches`'s {"logp_cache": {...}} for results.json) is kept in `report`, and
    handed to `on_report` when given."""

    def __init__(self, cfg: Any, data: Any, cache_root: Path,
                 on_report: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.cfg, self.data, self.cache_root, self.on_report = cfg, data, Path(cache_root), on_report
        self.report: dict[str, Any] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or self.report is not None:
            return
        strategy = trainer.strategy
        collective = strategy if trainer.world_size > 1 else None
        device = strategy.root_device if device_of(self.cfg).type == "cuda" else torch.device("cpu")
        self.report = attach_caches(self.cfg, pl_module.frozen, self.data, self.cache_root, collective, device)
        if self.on_report is not None:
            self.on_report(self.report)
