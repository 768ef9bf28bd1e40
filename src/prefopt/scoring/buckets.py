"""Token-count buckets: the widths a batch's token dimension is padded up to, so that CUDA graphs see few shapes.

`model.compile=reduce-overhead` compiles the decoder layers with CUDA graphs, one graph per input shape
(prefopt.train.compiling); a batch as long as its longest row gives nearly every batch a new token count.
`data.token_buckets` pads the token dimension of every row tensor the collator builds (padded rows,
shared prompt and responses, packed rows, tree rows, marginal rows) up to the next bucket:
- false: no buckets (each tensor as long as its longest row);
- true: powers of two from BUCKET_FLOOR (64, 128, 256, ...);
- an integer N > 0: the next multiple of N;
- auto (the default): true under `model.compile=reduce-overhead`, else false.
A width is capped at `data.max_length` when the longest row fits under it (the padded rows never
exceed it, so a sweep adds at most that one shape). The padding is right padding with the layouts' own
fills (pad id, mask 0, score 0, segment / pair / row -1) and the collator's plans index the padded
widths, so log-probs, losses and gradients are those of the unbucketed batch (to rounding: 1e-6 in fp32).
`TokenBuckets` is the width function the collator hands each layout's `tensors` (`width=`) and the
marginal rows; `token_buckets` reads the settings, once, for prefopt.scoring.layout.choose_layout.
Exercised by `pytest tests/test_token_buckets.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefopt.errors import ConfigError

BUCKET_FLOOR = 64  # the smallest power-of-two bucket


@dataclass(frozen=True)
class TokenBuckets:
    """Width of a token dimension whose longest row has `n` tokens: the next power of two from
    BUCKET_FLOOR (`multiple` None) or the next multiple of `multiple`, at most `cap` when `n` fits under it."""

    multiple: int | None = None
    cap: int | None = None

    def bucket(self, n: int) -> int:
        """The smallest bucket holding `n` tokens, uncapped."""
        if self.multiple is not None:
            return max(1, -(-n // self.multiple)) * self.multiple
        width = BUCKET_FLOOR
        while width < n:
            width *= 2
        return width

    def __call__(self, n: int) -> int:
        width = self.bucket(n)
        return min(width, self.cap) if self.cap is not None and n <= self.cap else width


def token_buckets(setting: Any, compile_setting: Any = False, max_length: int | None = None) -> TokenBuckets | None:
    """The run's `TokenBuckets` from `data.token_buckets` (module docstring), `model.compile` (auto: on
    under reduce-overhead) and `data.max_length` (the cap); None: no buckets. A one-line ConfigError
    for a value it does not take."""
    if setting == "auto":
        setting = compile_setting == "reduce-overhead"
    if setting is False:
        return None
    cap = int(max_length) if max_length else None
    if setting is True:
        return TokenBuckets(cap=cap)
    if isinstance(setting, int) and setting > 0:
        return TokenBuckets(multiple=setting, cap=cap)
    raise ConfigError(f"data.token_buckets={setting!r} is not allowed; it must be auto, true (powers of two from "
                      f"{BUCKET_FLOOR}), false or an integer > 0 (multiples of it)")
