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
    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.pairs = self.tokens = self.steps = 0
        self.started: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch: dict[str, Any], batch_idx: int) -> None:
        if self.started is None and trainer.global_step >= self.warmup:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict[str, Any], batch_idx: int) -> None:
        if self.started is None:
            return
        self.pairs += int(batch["index"].shape[0])
        self.tokens += int(batch["attention_mask"].sum())
        self.steps += 1

    def metrics(self, pl_module) -> dict[str, float]:
        if self.started is None or not self.steps:
            return {}
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - self.started
        out = {"perf/pairs_per_s": self.pairs / seconds, "perf/tokens_per_s": self.tokens / seconds,
               "perf/peak_mem_mb": peak_memory_mb(device)}
        peak = peak_tflops(device)
        if peak:
            n_params = sum(p.numel() for p in pl_module.policy.parameters())
            loss = pl_module.loss_fn
            extra_passes = int(loss.needs_reference) + int(loss.needs_marginal)
            flops = (6 + 2 * extra_passes) * n_params * out["perf/tokens_per_s"]  # this device's share
            out["perf/mfu"] = flops / (peak * 1e12)
        return out
