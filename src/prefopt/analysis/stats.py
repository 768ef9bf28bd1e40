"""The sensitivity statistics: seed-mean score per grid point, per-method summaries, bootstrap intervals.

For a method with grid points g (its swept config values, seed excluded) and seed-mean scores μ_g:
best = max μ_g, median, worst = min μ_g, range = best - worst, share within tolerance =
#{g : μ_g >= best - tol} / #g, regret at default = best - μ_default (the loss's own default β and the
study's default for other swept keys), seed sd = pooled within-point standard deviation over seeds.
Bootstrap: resample the seeds of every grid point with replacement, recompute the statistic; the
2.5 and 97.5 percentiles give its 95% interval. A difference between two methods exceeds seed noise
when the 95% interval of (statistic of A - statistic of B), from independent resamples, excludes 0.
Exercised by `pytest tests/test_analyze.py` (numbers worked out by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from prefopt.analysis.runs import StudySettings, completed, default_point, swept_keys

STATS = ("best", "median", "worst", "range", "share_within_tol", "regret_default")
COMPARED = ("best", "median", "worst", "range", "regret_default")  # the pairwise comparisons
EXTRA_METRICS = ("eval/oracle_reward_start", "eval/win_rate", "eval/kl", "eval/length")


@dataclass
class MethodGrid:
    """One method's grid: the points (dicts of swept values), each point's seed scores, the default."""

    method: str
    keys: list[str]
    points: list[dict[str, Any]]
    scores: list[np.ndarray]
    default_index: int | None


def method_grids(runs: pd.DataFrame, settings: StudySettings) -> list[MethodGrid]:
    """Group the completed runs with a score by method and grid point."""
    done = completed(runs)
    if settings.score not in done.columns:
        raise KeyError(f"no run has the metric {settings.score!r}; metrics: "
                       f"{sorted(c for c in runs.columns if '/' in c)}")
    done = done[done[settings.score].notna()]
    grids = []
    for method in sorted(done["method"].unique()):
        rows = done[done["method"] == method]
        keys = swept_keys(runs, method)
        points, scores = [], []
        for values, group in rows.groupby(keys, sort=True, dropna=False) if keys else [((), rows)]:
            values = values if isinstance(values, tuple) else (values,)
            points.append(dict(zip(keys, values)))
            scores.append(group[settings.score].to_numpy(dtype=float))
        default = default_point(runs, method, keys, settings)
        index = next((i for i, p in enumerate(points) if default is not None and _same_point(p, default)), None)
        grids.append(MethodGrid(method, keys, points, scores, index))
    return grids


def _same_point(point: dict[str, Any], target: dict[str, Any]) -> bool:
    for key, value in target.items():
        try:
            if not np.isclose(float(point[key]), float(value)):
                return False
        except (TypeError, ValueError):
            if str(point[key]) != str(value):
                return False
    return True


def statistics(means: np.ndarray, tolerance: float, default_index: int | None) -> dict[str, np.ndarray]:
    """The summary statistics of seed-mean scores; `means` is (P,) or (B, P) for B bootstrap draws."""
    means = np.atleast_2d(means)
    best = means.max(axis=1)
    out = {
        "best": best,
        "median": np.median(means, axis=1),
        "worst": means.min(axis=1),
        "range": best - means.min(axis=1),
        "share_within_tol": (means >= best[:, None] - tolerance - 1e-12).mean(axis=1),
        "regret_default": best - means[:, default_index] if default_index is not None else np.full(len(best), np.nan),
    }
    return out


def bootstrap_means(grid: MethodGrid, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, P) seed-means, each grid point's seeds resampled with replacement."""
    columns = []
    for scores in grid.scores:
        idx = rng.integers(0, len(scores), size=(n_boot, len(scores)))
        columns.append(scores[idx].mean(axis=1))
    return np.stack(columns, axis=1)


def pooled_seed_sd(grid: MethodGrid) -> float:
    """sqrt of the mean within-point variance (ddof=1) over points with at least two seeds."""
    variances = [np.var(s, ddof=1) for s in grid.scores if len(s) > 1]
    return float(np.sqrt(np.mean(variances))) if variances else float("nan")


def method_summary(
    runs: pd.DataFrame, settings: StudySettings, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """One row per method: the statistics, their bootstrap 95% intervals (`<stat>_lo`, `<stat>_hi`; NaN
    when some grid point has a single seed),
    the best and default points, the number of points, runs and seeds, and the pooled seed sd."""
    rng = np.random.default_rng(seed)
    rows = []
    for grid in method_grids(runs, settings):
        means = np.array([s.mean() for s in grid.scores])
        point = statistics(means, settings.tolerance, grid.default_index)
        boot = statistics(bootstrap_means(grid, n_boot, rng), settings.tolerance, grid.default_index)
        row: dict[str, Any] = {"method": grid.method, "swept": ", ".join(grid.keys), "points": len(grid.points),
                               "runs": int(sum(len(s) for s in grid.scores)),
                               "seeds_per_point": int(min(len(s) for s in grid.scores))}
        replicated = row["seeds_per_point"] >= 2
        for name in STATS:
            row[name] = float(point[name][0])
            finite = replicated and np.isfinite(boot[name]).any()
            lo, hi = np.nanpercentile(boot[name], [2.5, 97.5]) if finite else (np.nan, np.nan)
            row[f"{name}_lo"], row[f"{name}_hi"] = float(lo), float(hi)
        row["seed_sd"] = pooled_seed_sd(grid)
        row["best_point"] = _describe(grid.points[int(np.argmax(means))])
        row["default_point"] = _describe(grid.points[grid.default_index]) if grid.default_index is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def pairwise_differences(
    runs: pd.DataFrame, settings: StudySettings, n_boot: int = 2000, seed: int = 0, stats: tuple[str, ...] = COMPARED
) -> pd.DataFrame:
    """For every pair of methods and statistic: A - B, its bootstrap 95% interval, and whether the
    interval excludes 0 (`exceeds_noise`; None when a grid point of A or B has a single seed, so
    that no seed noise was measured)."""
    rng = np.random.default_rng(seed + 1)
    grids = method_grids(runs, settings)
    point, boot = {}, {}
    for grid in grids:
        means = np.array([s.mean() for s in grid.scores])
        point[grid.method] = statistics(means, settings.tolerance, grid.default_index)
        boot[grid.method] = statistics(bootstrap_means(grid, n_boot, rng), settings.tolerance, grid.default_index)
    replicated = {g.method: min(len(s) for s in g.scores) >= 2 for g in grids}
    rows = []
    for a, b in combinations([g.method for g in grids], 2):
        for name in stats:
            diff = float(point[a][name][0] - point[b][name][0])
            draws = boot[a][name] - boot[b][name]
            if not np.isfinite(draws).any():
                continue
            if not (replicated[a] and replicated[b]):  # one seed somewhere: no noise to compare with
                rows.append({"a": a, "b": b, "stat": name, "diff": diff, "lo": np.nan, "hi": np.nan,
                             "exceeds_noise": None})
                continue
            lo, hi = np.percentile(draws, [2.5, 97.5])
            rows.append({"a": a, "b": b, "stat": name, "diff": diff, "lo": float(lo), "hi": float(hi),
                         "exceeds_noise": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows, columns=["a", "b", "stat", "diff", "lo", "hi", "exceeds_noise"])


def grid_table(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """One row per (method, grid point): swept values, seeds, mean and sd of the score, and the seed
    means of the other evaluation metrics (start reward, win rate, KL, length)."""
    done = completed(runs)
    rows = []
    for grid in method_grids(runs, settings):
        method_rows = done[(done["method"] == grid.method) & done[settings.score].notna()]
        for i, (values, scores) in enumerate(zip(grid.points, grid.scores)):
            mask = np.ones(len(method_rows), dtype=bool)
            for key, value in values.items():
                mask &= (method_rows[key].astype(str) == str(value)).to_numpy()
            row = {"method": grid.method, **values, "seeds": len(scores), "score_mean": float(scores.mean()),
                   "score_sd": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan"),
                   "is_default": i == grid.default_index}
            for metric in EXTRA_METRICS:
                if metric in method_rows.columns:
                    row[metric] = float(method_rows.loc[mask, metric].mean())
            rows.append(row)
    return pd.DataFrame(rows)


def _describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in point.items()) or "(single point)"


def format_value(value: Any) -> str:
    """A swept value as written in a config: 0.1, 3e-05, 10; "–" for a missing one."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)
