"""Training throughput of a run: pairs/s, tokens/s, peak memory and model-FLOPs utilisation (MFU).

Measured over the training steps after the first `warmup` ones and reported as `perf/*` metrics in
results.json (and the loggers). MFU counts 6·N FLOPs per trained token (forward and backward of the
policy) plus 2·N per token for each extra no-grad pass (reference, marginal), against the GPU's
dense bf16 peak where the device is known. Used by every run; printed by scripts/gpu_check.sh.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class ThroughputMonitor(Callback):
    """Pairs and tokens per second over the training steps after the first `warmup`: the clock pauses
    for validation and stops when training ends (waiting for the GPU there, not every step). Peak
    memory and MFU are read on the device training ran on, which Lightning leaves by the end of fit."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.pairs = self.steps = 0
        self.tokens: int | torch.Tensor = 0  # summed on the device, read once at the end
        self.seconds = 0.0
        self.since: float | None = None  # the clock runs since then
        self.device: torch.device | None = None
        self.peak_mb: float | None = None

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _stop_clock(self) -> None:
        if self.since is not None:
            self._sync()
            self.seconds += time.perf_counter() - self.since
            self.since = None

    def on_train_batch_start(self, trainer, pl_module, batch: dict[str, Any], batch_idx: int) -> None:
        if self.since is None and trainer.global_step >= self.warmup:
            self.device = pl_module.device
            self._sync()
            self.since = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict[str, Any], batch_idx: int) -> None:
        if self.since is None:
            return
        self.pairs += int(batch["index"].shape[0])
        self.tokens = self.tokens + batch["attention_mask"].sum()
        self.steps += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop_clock()

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_clock()
        if self.device is not None:
            self.peak_mb = peak_memory_mb(self.device)

    def metrics(self, pl_module) -> dict[str, float]:
        """After training ended (`on_train_end` stopped the clock and read the peak memory)."""
        if not self.steps:
            return {}
        device = self.device  # set with the first timed step
        seconds = max(self.seconds, 1e-9)
        out = {"perf/pairs_per_s": self.pairs / seconds, "perf/tokens_per_s": int(self.tokens) / seconds,
               "perf/peak_mem_mb": self.peak_mb}
        peak = peak_tflops(device)
        if peak:
            n_params = sum(p.numel() for p in pl_module.policy.parameters())
            loss = pl_module.loss_fn
            extra_passes = int(loss.needs_reference) + int(loss.needs_marginal)
            flops = (6 + 2 * extra_passes) * n_params * out["perf/tokens_per_s"]  # this device's share
            out["perf/mfu"] = flops / (peak * 1e12)
        return out
