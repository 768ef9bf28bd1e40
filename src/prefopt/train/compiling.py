"""`model.compile`: torch.compile of the policy's decoder layers and of the loss, and the compile time printed.

false (default): eager. true: each decoder layer module (every module whose class name ends in
"DecoderLayer": Llama, Mistral, Qwen2, Gemma, ...) and the loss's `compute` are compiled with inductor,
dynamic shapes (one graph for all batch lengths); the layout code around them (index plans, head,
masks) stays eager. reduce-overhead: the same in torch.compile's "reduce-overhead" mode (CUDA graphs, for
small models whose step is bound by kernel launches); CUDA graphs need CUDA, so on a machine without
one this is a one-line ConfigError. Under reduce-overhead `data.token_buckets=auto` pads every batch's
token dimension to a bucket (prefopt.scoring.buckets: few shapes, so few graphs) and AdamW is made
capturable on CUDA parameters (prefopt.train.optim.adamw_options). Compilation happens lazily in the first step: `CompileTimer` prints
how long the first step took against the second, once per process (a sweep worker's later runs reuse
the compiled code where shapes and weights' layout allow, so the cost is amortised across the sweep).
Exercised by `pytest tests/test_compile.py`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.errors import ConfigError
from prefopt.log import get_logger

log = get_logger()
SETTINGS = (False, True, "reduce-overhead")


def compile_mode(setting: Any) -> str | None:
    """torch.compile's mode for a `model.compile` value (None: no compilation); a ConfigError line for
    a value it does not take, or for reduce-overhead without CUDA."""
    if setting not in SETTINGS:
        raise ConfigError(f"model.compile={setting!r} is not allowed; it must be one of false, true, reduce-overhead")
    if setting == "reduce-overhead" and not torch.cuda.is_available():
        raise ConfigError("model.compile=reduce-overhead needs a CUDA GPU (CUDA graphs) and none is here; "
                          "use model.compile=true or false")
    return None if setting is False else ("reduce-overhead" if setting == "reduce-overhead" else "default")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: modules whose class name ends in "DecoderLayer"."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_policy(model: torch.nn.Module, setting: Any) -> torch.nn.Module:
    """Compile each decoder layer of `model` in place (`nn.Module.compile`) per `model.compile`; a model
    without recognisable layers is compiled whole. Returns `model`."""
    mode = compile_mode(setting)
    if mode is None:
        return model
    layers = decoder_layers(model) or [model]
    dynamic = None if mode == "reduce-overhead" else True  # CUDA graphs: one graph per token-count bucket
    for layer in layers:
        layer.compile(mode=mode, dynamic=dynamic)
    log.info(f"model.compile={setting}: {len(layers)} decoder layers compiled (mode {mode}); "
             "the first step compiles them")
    return model


def compile_loss(loss: Any, setting: Any) -> Any:
    """The loss with its `compute` compiled per `model.compile` (in place; returns `loss`)."""
    mode = compile_mode(setting)
    if mode is not None:
        loss.compute = torch.compile(loss.compute, mode=mode, dynamic=True if mode == "default" else None)
    return loss


class CompileTimer(Callback):
    """Prints, once, the first training step's time (compilation included) against the second's."""

    def __init__(self, setting: Any) -> None:
        self.setting = setting
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if len(self.times) < 2:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.times) >= 2:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # twice a run, to time the steps
        self.times.append(time.perf_counter() - self._start)
        if len(self.times) == 2:
            first, second = self.times
            log.info(f"model.compile={self.setting}: first step {first:.1f} s (compilation included), "
                     f"second {second:.3f} s: compiling cost about {max(0.0, first - second):.1f} s")
