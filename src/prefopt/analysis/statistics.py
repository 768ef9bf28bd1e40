"""The study's statistics, each named once: the registry the computation, the settings and the report read.

A `Statistic` is one per-seed number of a method's grid (computed by prefopt.analysis.stats.per_seed,
then given a t-interval over seeds and compared between methods): its `name` (the key in
`sweep.compare`, the summary's `<name>`, `<name>_lo`, `<name>_hi` columns and pairwise.csv's `stat`),
how the report words it (`label` in sentences, `column` in the summary table), whether more is better,
what a holding difference says of the better method (`note`), whether a study compares it unless
`sweep.compare` says otherwise, whether it needs both methods' windows complete to be compared, and
whether it is measured at a number of trials (`tuning_k`).
A new statistic: a `Statistic` here, its per-seed value in `stats.per_seed`, its column in
`report._summary_table`. Exercised by `pytest tests/test_analyze.py tests/test_contributing.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Statistic:
    """One statistic of the study (see the module docstring)."""

    name: str
    label: str
    column: str
    higher_is_better: bool
    note: str = ""
    compared_by_default: bool = True
    needs_windows: bool = False
    at_k_trials: bool = False  # measured after `tuning_k` random trials (the report says which k)


BEST = Statistic("best", "best", "best", higher_is_better=True)
MEAN_REGRET = Statistic("mean_regret", "mean regret in the window", "mean regret in window", higher_is_better=False,
                        note="is the less sensitive", needs_windows=True)
REGRET_DEFAULT = Statistic("regret_default", "regret at default", "regret at default", higher_is_better=False,
                           note="is the less sensitive")
TUNING_COST = Statistic("tuning_cost", "expected best after k random trials", "expected best after k trials",
                        higher_is_better=True, note="is the cheaper to tune", compared_by_default=False,
                        at_k_trials=True)
STATISTICS: tuple[Statistic, ...] = (BEST, MEAN_REGRET, REGRET_DEFAULT, TUNING_COST)  # the report's order
BY_NAME = {stat.name: stat for stat in STATISTICS}
NAMES = tuple(BY_NAME)  # every statistic, with intervals and tests
DEFAULT_COMPARE = tuple(stat.name for stat in STATISTICS if stat.compared_by_default)
WINDOW_STATS = tuple(stat.name for stat in STATISTICS if stat.needs_windows)  # comparable only with both windows whole


def label(name: str) -> str:
    """How the report words statistic `name` (the name itself for one not registered)."""
    return BY_NAME[name].label if name in BY_NAME else name
