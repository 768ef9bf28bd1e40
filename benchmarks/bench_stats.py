"""95% intervals for benchmark means and paired ratios (t-intervals; log scale for ratios).

`mean_interval(xs)`: mean of per-round means with a t-interval. `ratio_interval(a, b)`: the ratio of
paired measurements a_i / b_i (same round) as exp(mean log ratio) with a t-interval on the logs, so
drift in machine load that hits a round hits both sides of its ratio. Used by
`python benchmarks/throughput.py`; checked by `pytest tests/test_bench_stats.py`.
"""

from __future__ import annotations

import math
import statistics

from scipy.stats import t as student_t


def _t(n: int) -> float:
    return float(student_t.ppf(0.975, n - 1))


def mean_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): 95% t-interval of the mean of `xs` (>= 2 values)."""
    mean = statistics.fmean(xs)
    half = _t(len(xs)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def ratio_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(ratio, low, high) of paired a_i / b_i: exp of the mean log ratio and its 95% t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired ratio needs as many values on both sides, got {len(a)} and {len(b)}")
    logs = [math.log(x / y) for x, y in zip(a, b)]
    mean, low, high = mean_interval(logs)
    return math.exp(mean), math.exp(low), math.exp(high)
