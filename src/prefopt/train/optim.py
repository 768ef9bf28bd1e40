"""The optimizer and learning-rate schedule of a run, as `_partial_` factories from `cfg.optim`.

conf/train.yaml's `optim.optimizer` (default `torch.optim.AdamW`) is called with the parameter groups
(matrices, and the rest with weight decay 0); `optim.scheduler` (default `warmup_cosine_schedule`: linear
warmup, cosine decay) with `(optimizer, total_steps=...)`. Both read `optim.lr`, `optim.weight_decay`,
... by interpolation, so those overrides keep working; another optimizer is a config change, e.g.
`optim.optimizer._target_=torch.optim.SGD '~optim.optimizer.betas'`. `optim_factories` checks the keys
against the targets' arguments before any model loads. Used by `prefopt.train.module.PreferenceModule` and
`prefopt.run.steps`. `follow_configured_lr`: a resumed run's `optim.lr` may differ from its checkpoint's
(prefopt.train.resume.RESUMABLE_KEYS); the restored optimizer and schedule are scaled to it.
`adamw_options`: the fused kernel where the module allows it, and `capturable` (optimizer state and step
count on the device, no host read a step) under `model.compile=reduce-overhead` on CUDA parameters only.
Exercised by `pytest tests/test_module.py tests/test_guards.py tests/test_optim.py`.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig

from prefopt.errors import ConfigError

Factory = Callable[..., Any]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup over `warmup` steps, then cosine decay to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                           min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: warmup over `warmup_ratio` of `total_steps`, cosine decay to `min_lr_ratio` × lr."""
    warmup = int(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup, min_lr_ratio)
    )


def default_factories(lr: float = 5e-4, weight_decay: float = 0.0, adam_betas: tuple[float, float] = (0.9, 0.95),
                      warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> tuple[Factory, Factory]:
    """(optimizer, scheduler) factories of conf/train.yaml's defaults (AdamW, warmup + cosine), for code that
    builds a PreferenceModule directly (tests, benchmarks/throughput.py); a run's come from `optim_factories`."""
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, betas=tuple(adam_betas), weight_decay=weight_decay)
    scheduler = functools.partial(warmup_cosine_schedule, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio)
    return optimizer, scheduler


def adamw_options(compile_setting: Any, fused: bool, device_types: Iterable[str],
                  stepped_elsewhere: bool = False) -> dict[str, bool | None]:
    """The AdamW keywords for the policy's parameters, from the settings alone: `fused` True where the
    fused kernel is allowed (else None: torch's default); `capturable` True under `model.compile=
    reduce-overhead` (CUDA graphs) when every parameter is on CUDA and torch steps the optimizer
    (`stepped_elsewhere`: DeepSpeed steps its own partitions), so the step count stays on the device;
    on the CPU, or without reduce-overhead, no `capturable` at all (the optimizer as before)."""
    options: dict[str, bool | None] = {"fused": True if fused else None}
    types = set(device_types)
    if compile_setting == "reduce-overhead" and types == {"cuda"} and not stepped_elsewhere:
        options["capturable"] = True
    return options


def takes(factory: Factory, name: str) -> bool:
    """Whether `factory` accepts keyword `name` and has not fixed it already (e.g. AdamW's `fused`)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params and name not in getattr(factory, "keywords", {})


def _factory(node: DictConfig, key: str) -> Factory:
    """`optim.<key>` as a functools.partial; unknown arguments and a missing `_partial_` named in one line."""
    from hydra.utils import get_method, instantiate

    where = f"optim.{key}"
    sub = node.get(key)
    if sub is None or not sub.get("_target_"):
        raise ConfigError(f"{where} needs a `_target_` (a callable) and `_partial_: true`; see conf/train.yaml")
    if sub.get("_partial_") is not True:
        raise ConfigError(f"{where}._partial_ must be true: the run calls it with the parameters it builds")
    try:
        target = get_method(sub._target_)
    except Exception as err:  # hydra raises its own ImportError flavours
        raise ConfigError(f"{where}._target_={sub._target_} cannot be imported: {err}") from None
    params = inspect.signature(target).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        for name in sub:
            if name not in ("_target_", "_partial_") and name not in params:
                raise ConfigError(f"{where}.{name} is not an argument of {sub._target_}; valid: {', '.join(params)}")
    return instantiate(sub, _convert_="all")  # plain lists, not OmegaConf's, into the optimizer


def optim_factories(node: DictConfig) -> tuple[Factory, Factory]:
    """(optimizer, scheduler) factories of `cfg.optim`, their keys checked against their targets."""
    return _factory(node, "optimizer"), _factory(node, "scheduler")


def follow_configured_lr(optimizer: torch.optim.Optimizer, scheduler: Any,
                         configured: list[float]) -> list[tuple[float, float]]:
    """After a resume restored a checkpoint's optimizer and scheduler, which carry the learning rate it
    was saved with, scale each parameter group's current lr by configured / saved base lr and make
    `configured` the schedule's base: the schedule goes on from the same step at the new peak.
    Returns the (saved, configured) base lrs of the groups that changed (none on a fresh start)."""
    bases = list(getattr(scheduler, "base_lrs", None) or [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups])
    last = getattr(scheduler, "_last_lr", None)
    changed = []
    for i, (group, old, new) in enumerate(zip(optimizer.param_groups, bases, configured)):
        if not old or math.isclose(old, new, rel_tol=1e-12):
            continue
        group["lr"] *= new / old
        group["initial_lr"] = new
        if getattr(scheduler, "base_lrs", None) is not None:
            scheduler.base_lrs[i] = new
        if last is not None and i < len(last):
            last[i] *= new / old
        changed.append((old, new))
    return changed
