"""prefopt.train.perf.ThroughputMonitor: the clock covers the training steps after warm-up and leaves
out validation; pairs and tokens are those of the timed batches; memory and MFU are read on the device
training ran on."""

import time

import lightning as L
import pytest
from torch.utils.data import DataLoader

from helpers import PAIRS, collated, optim, tiny_model
from prefopt.losses import SimPOLoss
from prefopt.train.module import PreferenceModule
from prefopt.train.perf import ThroughputMonitor


class SlowValidation(PreferenceModule):
    def validation_step(self, batch, batch_idx):
        time.sleep(1.0)
        return super().validation_step(batch, batch_idx)


def test_the_clock_leaves_out_warm_up_and_validation():
    module = SlowValidation(tiny_model(), SimPOLoss(beta=2.0), **optim(lr=1e-3, warmup_ratio=0.0))
    monitor = ThroughputMonitor(warmup=2)
    batch = collated(PAIRS)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, val_check_interval=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[monitor])
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 8, batch_size=None),
                val_dataloaders=DataLoader([batch], batch_size=None))
    metrics = monitor.metrics(module)
    assert monitor.steps == 6 and monitor.pairs == 6 * len(PAIRS)
    assert int(monitor.tokens) == 6 * int(batch["attention_mask"].sum())
    assert 0 < monitor.seconds < 1.0  # the two validations (1 s each) are not in it
    assert metrics["perf/pairs_per_s"] == pytest.approx(monitor.pairs / monitor.seconds)
    assert metrics["perf/tokens_per_s"] == pytest.approx(int(monitor.tokens) / monitor.seconds)
    assert monitor.device.type == "cpu" and metrics["perf/peak_mem_mb"] > 0 and "perf/mfu" not in metrics
