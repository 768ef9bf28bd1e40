"""The sensitivity statistics and the verdicts between methods: the seed is the unit of replication.

A method's runs form a table y[g, s]: grid point g (its swept config values, seed excluded) × seed s.
Each compared statistic is computed *per seed* and then averaged over seeds, so seeds are the
replicates, and two methods run on the same seeds are compared seed by seed (paired):

- selection: the method's best point b is the grid point with the highest seed-mean. Its window W is
  the points within `settings.window` decades of b on each window axis (default ±½ decade of
  loss.beta and of optim.lr), every other swept key at b's value: the same span for every method;
  *complete* when the grid reaches the full span on each side of b.
- `best` = y[b, s]; `mean_regret` = y[b, s] - mean over W of y[g, s] (what a user loses who lands
  anywhere in the window); `regret_default` = y[b, s] - y[default, s] (the loss class's own default β,
  the study's default for other swept keys).
- `tuning_cost` = the expected best score after k trials drawn at random (without replacement) from the
  method's grid, on seed s's scores ("Show Your Work", Dodge et al. 2019): with seed s's N scores sorted
  ascending v_(1..N), E[max of k] = Σ_i v_(i) · C(i-1, k-1) / C(N, k) (`expected_max`). k is the study's
  `tuning_k` (`sweep.tuning_k`), else the midpoint (N+1)//2 of the smallest grid of the study, the same k
  for every method so that two methods are compared at the same tuning budget (higher: cheaper to tune).
- descriptive only: `k_within_tolerance` (the smallest k whose expected best, on the seed-mean scores,
  is within the tolerance of the best seed-mean; `tuning_curves` gives the whole curve per method, k = 1
  … grid size, mean and 95% band over the per-seed curves), `share_within_tol` (share of W whose
  seed-mean is within the tolerance of the best),
  `seed_sd` (pooled within-point sd), the window and the grid-edge flags.

Selection is on all seeds, so every comparison is conditional on the grids: a grid maximum is biased
upward, by the same amount for two methods with the same grid and surface (the simulated null), more
for a flat surface than for a sharp peak (at most about σ/√n · E[max of the tied points' noise]).
Leave-one-seed-out selection removes that bias but makes the per-seed values positively correlated:
on the simulated null its t-test rejected 13% at a nominal 5%, so it is not used.

Intervals: mean ± t(0.975, n-1)·sd/√n over the n seeds. Verdicts: for each pair (A, B) and statistic,
the paired differences d_s = T_s(A) - T_s(B) over the seeds both have, a two-sided one-sample t-test
of mean d = 0, and Holm's step-down over every tested comparison in the table (the family): `verdict`
is True when the Holm-adjusted p is below `settings.alpha`. A seed-level sign-flip permutation test
would need no normality, but with 5 seeds it has 32 sign patterns, so its smallest two-sided p is
1/16: it could not reject at 5% even before the multiplicity correction. Seed-level scores are means
over hundreds of evaluation prompts (close to normal); tests/test_stats_calibration.py checks the
family-wise error and the power on simulated studies with the committed study's seed noise, at
CALIBRATED_SEEDS (5) seeds a point: a tested comparison on fewer seeds carries a `warning` beside its
verdict (fewer seeds: a wider t, less power, and a normality assumption the calibration did not check).
Exercised by `pytest tests/test_analyze.py tests/test_stats_calibration.py tests/test_tuning_cost.py` (numbers
worked by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtr, stdtrit  # Student's t CDF and its inverse (ufuncs: fast)

from prefopt.analysis.runs import StudySettings, completed, default_point, learning_rates, swept_keys
from prefopt.analysis.statistics import BEST, MEAN_REGRET, NAMES, REGRET_DEFAULT, TUNING_COST, WINDOW_STATS

TESTED = NAMES  # per-seed statistics, with intervals and tests (prefopt.analysis.statistics)
EXTRA_METRICS = ("eval/oracle_reward_start", "eval/win_rate", "eval/kl", "eval/length")
SPAN_SLACK = 0.06  # decades: 1-3-10 grids step by 0.477 and 0.523 decades; both count as half a decade
PAIR_COLUMNS = ["a", "b", "stat", "diff", "lo", "hi", "n_seeds", "p", "p_holm", "verdict", "note", "warning"]
CALIBRATED_SEEDS = 5  # the seeds a point of tests/test_stats_calibration.py's simulated studies (its SEEDS)


@dataclass
class MethodGrid:
    """One method's grid: the points (dicts of swept values), the (points × seeds) score table with
    NaN where a run is missing, the seeds (columns), the index of the default point, and the window
    axes the method has no such setting for (`absent`: SimPER has no `loss.beta`), which cannot cut
    its window."""

    method: str
    keys: list[str]
    points: list[dict[str, Any]]
    table: np.ndarray
    seeds: list[Any]
    default_index: int | None
    absent: frozenset = frozenset()

    @property
    def scores(self) -> list[np.ndarray]:
        """Each point's available seed scores."""
        return [row[np.isfinite(row)] for row in self.table]

    @property
    def means(self) -> np.ndarray:
        """Each point's seed-mean over the seeds it has (NaN for none)."""
        counts = np.isfinite(self.table).sum(axis=1)
        return np.where(counts > 0, np.nansum(self.table, axis=1) / np.maximum(counts, 1), np.nan)


def method_grids(runs: pd.DataFrame, settings: StudySettings) -> list[MethodGrid]:
    """Group the completed runs with a score by method, grid point and seed."""
    done = completed(runs)
    if settings.score not in done.columns:
        raise KeyError(f"no run has the metric {settings.score!r}; metrics: "
                       f"{sorted(c for c in runs.columns if '/' in c)}")
    done = done[done[settings.score].notna()]
    grids = []
    for method in sorted(done["method"].unique()):
        rows = done[done["method"] == method]
        keys = swept_keys(runs, method)
        seeds = sorted(rows["seed"].unique().tolist())
        points, table = [], []
        for values, group in rows.groupby(keys, sort=True, dropna=False) if keys else [((), rows)]:
            values = values if isinstance(values, tuple) else (values,)
            points.append(dict(zip(keys, values)))
            by_seed = group.groupby("seed")[settings.score].mean()
            table.append([by_seed.get(s, np.nan) for s in seeds])
        default = default_point(runs, method, keys, settings) if keys else None  # one point: no regret
        index = next((i for i, p in enumerate(points) if default is not None and _same_point(p, default)), None)
        absent = frozenset(k for k in settings.window if k not in rows or rows[k].isna().all())
        grids.append(MethodGrid(method, keys, points, np.array(table, dtype=float), seeds, index, absent))
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


def _log10(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return float(np.log10(value)) if value > 0 else None


def window_indices(grid: MethodGrid, centre: int, window: dict[str, float]) -> np.ndarray:
    """The points within `window[key]` decades of point `centre` on each window axis, every other
    swept key at the centre's value."""
    c = grid.points[centre]
    keep = []
    for i, p in enumerate(grid.points):
        inside = True
        for key in grid.keys:
            if key in window and _log10(p[key]) is not None and _log10(c[key]) is not None:
                inside &= abs(_log10(p[key]) - _log10(c[key])) <= window[key] + SPAN_SLACK
            else:
                inside &= _same_point({key: p[key]}, {key: c[key]})
        if inside:
            keep.append(i)
    return np.array(keep, dtype=int)


def window_complete(grid: MethodGrid, centre: int, window: dict[str, float]) -> tuple[bool, str]:
    """Whether the grid reaches `window[key]` decades on both sides of point `centre` for every window
    axis, and a description: "beta 0.3–3 × lr 3e-05–0.0003 (9 points)", "(truncated: ...)"."""
    c = grid.points[centre]
    missing, spans = [], []
    for key, decades in window.items():
        short = key.rsplit(".", 1)[-1]
        if key in grid.absent:  # not a setting of this method: no axis to reach
            continue
        if key not in grid.keys or _log10(c[key]) is None:
            missing.append(f"{short} not swept")
            continue
        logs = [_log10(p[key]) for p in grid.points if _log10(p[key]) is not None]
        lo, hi = _log10(c[key]) - decades, _log10(c[key]) + decades
        if min(logs) > lo + SPAN_SLACK:
            missing.append(f"{short} below {10 ** lo:.2g}")
        if max(logs) < hi - SPAN_SLACK:
            missing.append(f"{short} above {10 ** hi:.2g}")
        inside = [v for v in logs if lo - SPAN_SLACK <= v <= hi + SPAN_SLACK]
        spans.append(f"{short} {format_value(10 ** min(inside))}–{format_value(10 ** max(inside))}")
    if not spans:
        return False, f"none ({', '.join(missing)})"
    count = len(window_indices(grid, centre, window))
    text = " × ".join(spans) + f" ({count} point{'s' if count != 1 else ''})"
    return not missing, text + (f"; truncated: {', '.join(missing)}" if missing else "")


def edge_flags(grid: MethodGrid, centre: int, bounds: dict[str, Any] | None = None) -> list[str]:
    """For each numeric swept key, whether point `centre` is at the lowest or highest value of the
    method's grid, e.g. ["beta at upper edge (1)"]; a value at a natural bound (`bounds[key]` =
    [low, high]) is said so instead of flagged as an edge to extend."""
    flags = []
    for key in grid.keys:
        try:
            values = sorted({float(p[key]) for p in grid.points})
            value = float(grid.points[centre][key])
        except (TypeError, ValueError):
            continue  # a categorical axis (marginal=policy|reference) has no edge
        if len(values) < 2:
            continue
        low, high = (list(bounds.get(key) or [None, None]) + [None, None])[:2] if bounds else (None, None)
        short = key.rsplit(".", 1)[-1]
        for side, edge, bound in (("lower", values[0], low), ("upper", values[-1], high)):
            if np.isclose(value, edge):
                natural = bound is not None and np.isclose(value, float(bound))
                flags.append(f"{short} at natural {side} bound ({format_value(value)})" if natural
                             else f"{short} at {side} edge ({format_value(value)})")
    return flags


def per_seed(grid: MethodGrid, window: dict[str, float], k: int | None = None) -> dict[str, np.ndarray]:
    """Each TESTED statistic for each seed of `grid.seeds`, at the best point and window chosen on the
    seed-means (NaN where a needed run is missing); `tuning_cost` is the expected best after `k` trials
    (default: the midpoint of this grid)."""
    best = int(np.nanargmax(grid.means))
    inside = window_indices(grid, best, window)
    y = grid.table
    default = y[grid.default_index] if grid.default_index is not None else np.full(len(grid.seeds), np.nan)
    k = k or midpoint([grid])
    cost = np.array([_at(expected_max(y[:, s]), k) for s in range(len(grid.seeds))])
    return {BEST.name: y[best], MEAN_REGRET.name: y[best] - y[inside].mean(axis=0),
            REGRET_DEFAULT.name: y[best] - default, TUNING_COST.name: cost}


def expected_max(values: np.ndarray) -> np.ndarray:
    """E[max of k draws without replacement] from the finite `values`, for k = 1 … N (Dodge et al. 2019):
    sorted ascending v_(1..N), E[max of k] = Σ_i v_(i) · C(i-1, k-1) / C(N, k), since v_(i) is the
    maximum of a k-subset exactly when the subset holds it and k-1 of the i-1 values below it. Ties
    need no care (equal values, equal maxima). Empty for no finite value."""
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    return _max_weights(len(v)) @ v


@lru_cache(maxsize=None)
def _max_weights(n: int) -> np.ndarray:
    """The (k × i) weights C(i-1, k-1) / C(n, k) of expected_max, exact integers divided once."""
    weights = np.array([[comb(i, k - 1) / comb(n, k) for i in range(n)] for k in range(1, n + 1)]).reshape(n, n)
    weights.flags.writeable = False
    return weights


def _at(curve: np.ndarray, k: int) -> float:
    """curve[k-1], NaN beyond its length (a seed missing runs has a shorter grid)."""
    return float(curve[k - 1]) if 1 <= k <= len(curve) else float("nan")


def midpoint(grids: list[MethodGrid]) -> int:
    """The default tuning budget: (N+1)//2 trials, N the smallest grid among `grids`."""
    return max(1, (min(len(g.points) for g in grids) + 1) // 2)


def tuning_k(grids: list[MethodGrid], settings: StudySettings) -> int:
    """The k at which `tuning_cost` is compared: `settings.tuning_k`, else midpoint(grids)."""
    return int(settings.tuning_k) if settings.tuning_k else midpoint(grids)


def k_within_tolerance(grid: MethodGrid, tolerance: float) -> int:
    """The smallest k whose expected best (over the seed-mean scores) is within `tolerance` of the best
    seed-mean (the curve's value at k = N)."""
    curve = expected_max(grid.means)
    return int(np.argmax(curve >= curve[-1] - tolerance - 1e-12)) + 1


def tuning_curves(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """One row per (method, k), k = 1 … grid size: the expected best after k random trials, on each
    seed's scores, as mean, 95% t-interval (`lo`, `hi`) and count over seeds (`n_seeds`; a seed missing
    runs has a shorter curve), and on the seed-mean scores (`seed_mean_curve`, whose last value is the
    method's best)."""
    rows = []
    for grid in method_grids(runs, settings):
        per = [expected_max(grid.table[:, s]) for s in range(len(grid.seeds))]
        on_means = expected_max(grid.means)
        for k in range(1, len(grid.points) + 1):
            mean, lo, hi, n = t_interval(np.array([_at(c, k) for c in per]))
            rows.append({"method": grid.method, "k": k, "expected_best": mean, "lo": lo, "hi": hi, "n_seeds": n,
                         "seed_mean_curve": _at(on_means, k)})
    return pd.DataFrame(rows, columns=["method", "k", "expected_best", "lo", "hi", "n_seeds", "seed_mean_curve"])


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n) of the finite values: mean ± t((1+level)/2, n-1)·sd/√n; NaN bounds when n < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stdtrit(n - 1, (1 + level) / 2) * values.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def paired_t_p(diffs: np.ndarray) -> float:
    """Two-sided p of the one-sample t-test of mean(diffs) = 0 (NaN below 2 values; a constant
    difference gives 1 when it is 0 and 0 otherwise)."""
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < 2:
        return float("nan")
    sd = diffs.std(ddof=1)
    if sd <= 1e-12 * max(1.0, abs(diffs.mean())):
        return 1.0 if abs(diffs.mean()) <= 1e-12 else 0.0
    t = diffs.mean() / (sd / np.sqrt(len(diffs)))
    return float(2 * stdtr(len(diffs) - 1, -abs(t)))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted in the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def pooled_seed_sd(grid: MethodGrid) -> float:
    """sqrt of the mean within-point variance (ddof=1) over points with at least two seeds."""
    variances = [np.var(s, ddof=1) for s in grid.scores if len(s) > 1]
    return float(np.sqrt(np.mean(variances))) if variances else float("nan")


def seed_noise(runs: pd.DataFrame, settings: StudySettings) -> dict[str, float]:
    """The study's seed noise split into a seed effect shared by every grid point of a seed (same data
    order and sampling) and the residual: y[g, s] = μ_g + u_s + e_gs, estimated by the two-way
    decomposition over the points that have every seed. Returns {"seed_effect_sd", "residual_sd",
    "total_sd", "points", "seeds"} (NaN where fewer than 2 points or seeds)."""
    tables = []
    for grid in method_grids(runs, settings):
        full = grid.table[np.isfinite(grid.table).all(axis=1)]
        if len(full):
            tables.append(pd.DataFrame(full, columns=grid.seeds))
    table = pd.concat(tables, ignore_index=True).dropna(axis=1).to_numpy() if tables else np.empty((0, 0))
    points, seeds = table.shape if table.size else (0, 0)
    if points < 2 or seeds < 2:
        return {"seed_effect_sd": float("nan"), "residual_sd": float("nan"), "total_sd": float("nan"),
                "points": points, "seeds": seeds}
    centred = table - table.mean(axis=1, keepdims=True)
    effect = centred.mean(axis=0)
    residual_var = float(((centred - effect) ** 2).sum() / ((points - 1) * (seeds - 1)))
    effect_var = max(0.0, float(effect.var(ddof=1)) - residual_var / points)
    return {"seed_effect_sd": float(np.sqrt(effect_var)), "residual_sd": float(np.sqrt(residual_var)),
            "total_sd": float(np.sqrt(effect_var + residual_var)), "points": points, "seeds": seeds}


def method_summary(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """One row per method: each TESTED statistic with its t-interval (`<stat>_lo`, `<stat>_hi`; NaN
    with one seed), `share_within_tol`, the best and default points, the window and whether it is
    complete, the grid-edge flags, the number of points, runs and seeds, the learning rate (`lr`: its
    one value, or "several: ..."), and the pooled seed sd."""
    rows = []
    rates = learning_rates(runs)
    grids = method_grids(runs, settings)
    k = tuning_k(grids, settings)
    for grid in grids:
        means = grid.means
        centre = int(np.nanargmax(means))
        row: dict[str, Any] = {"method": grid.method, "swept": ", ".join(grid.keys), "points": len(grid.points),
                               "runs": int(sum(len(s) for s in grid.scores)),
                               "seeds_per_point": int(min(len(s) for s in grid.scores)),
                               "lr": rates.get(grid.method, "–")}
        for name, values in per_seed(grid, settings.window, k).items():
            mean, lo, hi, _ = t_interval(values)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = mean, lo, hi
        row[BEST.name] = float(means[centre])  # the seed-mean, also where some seed misses a run
        inside = window_indices(grid, centre, settings.window)
        row["share_within_tol"] = float((means[inside] >= means[centre] - settings.tolerance - 1e-12).mean())
        row["tuning_k"] = k
        row["k_within_tolerance"] = k_within_tolerance(grid, settings.tolerance)
        row["seed_sd"] = pooled_seed_sd(grid)
        row["best_point"] = _describe(grid.points[centre])
        row["default_point"] = _describe(grid.points[grid.default_index]) if grid.default_index is not None else ""
        row["window_complete"], row["window"] = window_complete(grid, centre, settings.window)
        row["edges"] = "; ".join(edge_flags(grid, centre, settings.bounds))
        rows.append(row)
    return pd.DataFrame(rows)


def compared_pairs(methods: list[str], focus: str | None) -> list[tuple[str, str]]:
    """Every pair of methods, or (focus, other) for each other method when a focus is given."""
    if focus:
        if focus not in methods:
            raise ValueError(f"sweep.focus={focus!r} is not a method of this study; methods: {methods}")
        return [(focus, m) for m in methods if m != focus]
    return list(combinations(methods, 2))


def pairwise_differences(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """One row per (a, b, stat) for the compared pairs (`settings.focus`) and statistics
    (`settings.compare`): the paired mean difference a - b over their common seeds, its unadjusted
    95% t-interval, n_seeds, the t-test's p, the Holm-adjusted p over the whole table, `verdict`
    (True: the difference holds at family-wise error `settings.alpha`; None: not tested, see `note`)
    and `warning` (a tested row on fewer than CALIBRATED_SEEDS seeds)."""
    return compare_grids(method_grids(runs, settings), settings)


def compare_grids(grids: list[MethodGrid], settings: StudySettings) -> pd.DataFrame:
    """pairwise_differences on grids already built (the calibration test simulates them directly)."""
    unknown = sorted(set(settings.compare) - set(TESTED))
    if unknown:
        raise ValueError(f"sweep.compare has {unknown}; statistics that can be compared: {list(TESTED)}")
    by_method = {g.method: g for g in grids}
    seeds = {m: dict(zip(g.seeds, range(len(g.seeds)))) for m, g in by_method.items()}
    k = tuning_k(grids, settings) if grids else 1
    values = {m: per_seed(g, settings.window, k) for m, g in by_method.items()}
    complete = {m: window_complete(g, int(np.nanargmax(g.means)), settings.window)[0] for m, g in by_method.items()}
    rows = []
    for a, b in compared_pairs(sorted(by_method), settings.focus):
        common = [s for s in by_method[a].seeds if s in seeds[b]]
        for name in settings.compare:
            diffs = np.array([values[a][name][seeds[a][s]] - values[b][name][seeds[b][s]] for s in common])
            diffs = diffs[np.isfinite(diffs)]
            if not len(diffs):
                continue  # e.g. regret at a default that is not on a grid
            mean, lo, hi, n = t_interval(diffs)
            note = ""
            if n < 2:
                note = "one seed"
            elif name in WINDOW_STATS and not (complete[a] and complete[b]):
                note = "window truncated: " + ", ".join(m for m in (a, b) if not complete[m])
            rows.append({"a": a, "b": b, "stat": name, "diff": mean, "lo": lo, "hi": hi, "n_seeds": n,
                         "p": paired_t_p(diffs) if not note else float("nan"), "note": note,
                         "warning": "" if note else few_seeds(n)})
    table = pd.DataFrame(rows, columns=[c for c in PAIR_COLUMNS if c not in ("p_holm", "verdict")])
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    table["verdict"] = pd.Series([None if np.isnan(q) else bool(q < settings.alpha) for q in table["p_holm"]],
                                 index=table.index, dtype=object)
    return table[PAIR_COLUMNS]


def few_seeds(n: int) -> str:
    """The warning beside a verdict on `n` seeds, fewer than the calibration's ("" for enough)."""
    if n >= CALIBRATED_SEEDS:
        return ""
    return (f"{n} seeds: fewer than the {CALIBRATED_SEEDS} whose error rate and power were checked "
            "(tests/test_stats_calibration.py)")


def grid_table(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """One row per (method, grid point): swept values, seeds, mean and sd of the score, and the seed
    means of the other evaluation metrics (the unpriced reward when the score is priced, start reward,
    win rate, KL, length)."""
    done = completed(runs)
    extras = ((settings.reward,) if settings.reward not in (None, settings.score) else ()) + EXTRA_METRICS
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
            for metric in extras:
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
