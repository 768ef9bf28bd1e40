"""The loss interface: what a preference loss receives, what it returns, and the shared helpers.

A loss turns per-pair log-probs (`PairLogps`) into per-pair losses, detached rewards and scalar
metrics (`LossOutput`). It declares what it needs (`needs_reference`, `needs_marginal`) so that the
training module can fill exactly those fields, and it never needs to be known by name.
Every constructor argument is a config key; an unknown key or a bad value raises an error that
names the key, the value and what is allowed.

Exercised by: `.venv/bin/python -m pytest tests/losses -q`.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from prefopt.errors import ConfigError


@dataclass
class PairLogps:
    """Per-pair sequence log-probs for a batch of B pairs; every tensor is (B,).

    chosen/rejected: summed log π_θ(y|x) over the response tokens; *_tokens: how many were scored.
    ref_*: summed log π_ref(y|x) (only for losses that need a reference).
    marginal_*: summed log π(y) with no prompt, and its token counts (only for losses that need it).
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    marginal_chosen: Tensor | None = None
    marginal_rejected: Tensor | None = None
    marginal_chosen_tokens: Tensor | None = None
    marginal_rejected_tokens: Tensor | None = None


@dataclass
class LossOutput:
    """Per-pair `losses` and detached `chosen_rewards`/`rejected_rewards` (each (B,)), and
    `metrics`: name -> detached scalar tensor (batch means)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def length_average(summed: Tensor, n_tokens: Tensor) -> Tensor:
    """summed / max(n_tokens, 1): a 0-token response gives its sum (0) rather than NaN."""
    return summed / n_tokens.clamp(min=1).to(summed.dtype)


def smoothed_sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1-ε)·logσ(z) - ε·logσ(-z): the label-smoothed (conservative) logistic loss, stable for any z."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def check(owner: str, key: str, value: Any, ok: Callable[[float], bool], allowed: str) -> None:
    """Raise ConfigError naming owner, key, value and what is allowed unless `value` is a finite
    real number for which `ok(value)` holds."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and ok(value)):
        raise ConfigError(f"{owner}: {key}={value!r} is not allowed; {key} must be {allowed}")


class PreferenceLoss(ABC):
    """Base of every preference loss. Subclasses set `name`, `needs_reference`, `needs_marginal`,
    validate their constructor arguments, and implement `compute`. They hold no state between calls.

    `marginal_source` says which model the marginal log-probs come from: "policy" (the live policy)
    or "reference" (the frozen starting policy, cacheable). Only meaningful when `needs_marginal`.
    `marginal_context`: what the marginal rows put before the response (the data side builds them from
    it, prefopt.scoring.marginal.MarginalRows): "none" (the response alone, its first token as context, the
    other n-1 scored) or "start_token" (the start token and the source's `no_prompt_marker`, all n scored). Only
    meaningful when `needs_marginal`.
    `needs_progress`: the loss follows a schedule over training (a run of unknown length refuses it).
    `beta_range`: (low, high), the β values this loss is usually trained with; a `loss.beta` outside them
    is a warning when the run starts (prefopt.config.validate), not an error. None: no advice.
    `stall_loss`: the loss at a zero logit (what a sigmoid loss gives while the policy equals the
    reference, or at β -> 0); a training loss that stays there has not learnt anything and
    prefopt.train.stall says so. None: the loss has no such value.
    """

    name: str = "base"
    needs_reference: bool = False
    needs_marginal: bool = False
    marginal_source: str = "policy"
    marginal_context: str = "none"
    needs_progress: bool = False  # its settings follow `progress`: the run must know its length in steps
    beta_range: tuple[float, float] | None = None
    stall_loss: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _checked_init(cls.__init__)  # type: ignore[method-assign]

    @classmethod
    def valid_keys(cls) -> list[str]:
        """The constructor argument names, i.e. the config keys this loss accepts."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
        return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments' values (defaults filled in), keyed by name."""
        return dict(getattr(self, "_hparams", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def __call__(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        """Check that the fields this loss needs are filled, then compute the loss.

        `progress` is the share of training done (0 at the first step, 1 at the last), for losses whose
        settings follow a schedule; the others ignore it.
        """
        needed = []
        if self.needs_reference:
            needed += ["ref_chosen", "ref_rejected"]
        if self.needs_marginal:
            needed += ["marginal_chosen", "marginal_rejected"]
        missing = [f for f in needed if getattr(logps, f) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs PairLogps fields {missing}, which are None")
        return self.compute(logps, progress)

    @abstractmethod
    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        """Per-pair losses, detached rewards and scalar metrics for a batch."""


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a loss __init__: reject unknown keyword keys naming the valid ones, record hparams."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: PreferenceLoss, *args: Any, **kwargs: Any) -> None:
        valid = [n for n, p in sig.parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD]
        unknown = sorted(k for k in kwargs if k not in valid)
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}: unknown key(s) {unknown}; valid keys are {valid}"
            )
        init(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._hparams = {k: v for k, v in bound.arguments.items() if k != "self"}

    return wrapper
