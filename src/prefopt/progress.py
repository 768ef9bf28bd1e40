"""A training progress bar counted in optimizer steps (not epochs), and quieter Lightning logs.

Lightning's own bars count batches per epoch, which reads oddly for step-limited preference runs
("Epoch 3/-2"); this one shows `step/max_steps` with the current loss. Used by `prefopt.runner`.
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (GPU/TPU availability, tips) out of the run's output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        log = logging.getLogger(name)
        log.setLevel(logging.WARNING)
        log.propagate = False
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen reference
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars for every load


class StepProgressBar(Callback):
    """tqdm over optimizer steps with the latest training loss and accuracy."""

    def __init__(self, desc: str = "training") -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.bar = tqdm(total=total, initial=trainer.global_step, desc=self.desc, unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        metrics = trainer.callback_metrics
        post = {k.split("/", 1)[1]: f"{float(metrics[k]):.3f}" for k in ("train/loss", "train/rewards/accuracies") if k in metrics}
        self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
