"""The study's figures (matplotlib, no display needed): score vs β per method with seed error bars (each
panel titled with the method's learning rate), gold reward vs KL for every run (the DPO paper's
frontier), the expected best after k random trials of each method's grid (the cost of tuning), and
RMiPO's margin and δ over training.

Every figure uses one scale per axis key (β is on a log axis in every panel or in none), draws the
logged points themselves (training curves are seed means of the logged steps, unsmoothed unless
`smooth` asks for it, and then say so) and lays out with matplotlib's constrained layout so that
titles and legends fit inside the saved image.

Each function takes the tables of prefopt.analysis (runs, grid, curves), draws one figure, saves it
when given a path, and returns it. The backend is left to matplotlib (inline in a notebook; the CLI
picks Agg). Exercised by `pytest tests/test_analyze.py tests/test_tuning_cost.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prefopt.analysis.runs import completed
from prefopt.analysis.stats import format_value

LABELS = {"loss.beta": "β", "optim.lr": "learning rate", "eval/oracle_reward": "oracle reward",
          "eval/kl": "KL(π ‖ π_start) (nats)", "train/margin/mean": "margin g (mean over batch)",
          "train/pmi/delta": "δ = PMI_w − PMI_l (mean)"}


def label(key: str) -> str:
    return LABELS.get(key, key)


def _log_axis(values: pd.Series) -> bool:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return len(values) > 1 and (values > 0).all() and values.max() / values.min() >= 10


def _save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _series_label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{label(k)}={format_value(row[k])}" for k in keys) or "all runs"


def plot_score_vs_param(
    grid: pd.DataFrame, x: str = "loss.beta", score_label: str = "oracle reward", path: str | Path | None = None,
    lrs: dict[str, str] | None = None,
) -> plt.Figure:
    """One panel per method: seed-mean score against `x`, one line per value of the other swept keys,
    error bars = seed sd; the dashed line is the starting policy's score. `lrs` ({method: learning
    rate}, prefopt.analysis.runs.learning_rates) puts each method's learning rate in its panel's title."""
    methods = list(dict.fromkeys(grid["method"]))
    cols = min(4, max(1, int(np.ceil(np.sqrt(len(methods))))))
    rows = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.4), sharey=True, squeeze=False,
                             layout="constrained")
    log_x = x in grid and _log_axis(grid[x])  # one scale for every panel
    others = [c for c in grid.columns if c not in (x, "method", "seeds", "score_mean", "score_sd", "is_default")
              and "/" not in c]
    for ax, method in zip(axes.flat, methods):
        rows_m = grid[grid["method"] == method]
        keys = [k for k in others if rows_m[k].notna().any() and rows_m[k].nunique() > 1]
        title = f"{method}, lr {lrs[method]}" if lrs and method in lrs else method
        if x not in rows_m or rows_m[x].isna().all():
            ax.set_title(f"{title} (no {label(x)} axis)", fontsize=10)
            continue
        for _, series in rows_m.groupby(keys, sort=True) if keys else [(None, rows_m)]:
            series = series.sort_values(x)
            xs = pd.to_numeric(series[x])
            ax.errorbar(xs, series["score_mean"], yerr=series["score_sd"].fillna(0), marker="o", capsize=3,
                        label=_series_label(series.iloc[0], keys))
            default = series[series["is_default"]]
            if len(default):
                ax.scatter(pd.to_numeric(default[x]), default["score_mean"], s=160, facecolors="none",
                           edgecolors="black", zorder=5, label="default")
        if "eval/oracle_reward_start" in rows_m:
            ax.axhline(rows_m["eval/oracle_reward_start"].mean(), color="grey", ls="--", lw=1, label="start policy")
        if log_x:
            _grid_ticks(ax, pd.to_numeric(rows_m[x]).dropna().unique())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(label(x))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("score: mean ± sd over seeds")  # the score is named in the title
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(f"{label(score_label)} vs {label(x)}")
    return _save(fig, path)


MARKERS = ("o", "^", "s", "D", "v", "P")


def _grid_ticks(ax: plt.Axes, values: np.ndarray) -> None:
    """Log x-axis ticked at the grid's own values, written as in a config (no crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(values)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v)))
    ax.xaxis.set_minor_locator(NullLocator())


def plot_reward_vs_kl(
    runs: pd.DataFrame, score: str = "eval/oracle_reward", kl: str = "eval/kl", marker_by: str = "optim.lr",
    path: str | Path | None = None, price: float | None = None,
) -> plt.Figure:
    """Every completed run as a point (KL to the starting policy, gold reward), coloured by method,
    shaped by `marker_by` when it varies; the star is the starting policy (KL 0, its own reward). With a
    `price` (reward per unit of KL), dotted lines of slope `price` join points of equal priced score."""
    done = completed(runs).dropna(subset=[score, kl])
    shapes = sorted(done[marker_by].dropna().unique()) if marker_by in done and done[marker_by].nunique() > 1 else []
    fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
    for i, (method, rows) in enumerate(done.groupby("method", sort=True)):
        colour = f"C{i % 10}"
        for value, part in rows.groupby(marker_by, sort=True) if shapes else [(None, rows)]:
            marker = MARKERS[shapes.index(value) % len(MARKERS)] if shapes else "o"
            ax.scatter(part[kl], part[score], s=22, alpha=0.75, color=colour, marker=marker)
        ax.scatter([], [], color=colour, marker="o", label=method)
    for value in shapes:
        ax.scatter([], [], color="grey", marker=MARKERS[shapes.index(value) % len(MARKERS)],
                   label=f"{label(marker_by)}={format_value(value)}")
    if "eval/oracle_reward_start" in done:
        ax.scatter([0.0], [done["eval/oracle_reward_start"].mean()], marker="*", s=250, color="black",
                   label="start policy", zorder=5)
    if price is not None and price > 0 and len(done):
        _iso_price_lines(ax, done[kl], done[score], price)
    ax.set_xlabel(label(kl))
    ax.set_ylabel(label(score))
    ax.set_title("gold reward vs KL, one point per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _iso_price_lines(ax: plt.Axes, kl: pd.Series, reward: pd.Series, price: float) -> None:
    """Dotted lines reward = c + price·KL through the data's range: along each, the priced score is c."""
    x = np.array([0.0, float(kl.max()) * 1.05])
    priced = reward - price * kl
    for level in np.linspace(priced.min(), priced.max(), 5):
        ax.plot(x, level + price * x, ls=":", lw=0.8, color="grey", zorder=0)
    ax.plot([], [], ls=":", lw=0.8, color="grey", label=f"equal priced score (slope {price:g})")
    ax.set_ylim(min(reward.min(), priced.min()) - 0.02, reward.max() + 0.02)


def plot_tuning_cost(
    tuning: pd.DataFrame, score_label: str = "oracle reward", tolerance: float | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """The cost of tuning (prefopt.analysis.stats.tuning_curves' table): one line per method, the expected
    best score after k trials drawn at random from its grid (mean over the per-seed curves, shaded: 95%
    t-band over seeds), k = 1 … its grid size; a tick on each line marks the k whose expected best on
    the seed-mean scores is first within `tolerance` of the best."""
    fig, ax = plt.subplots(figsize=(7, 4.6), layout="constrained")
    for i, (method, rows) in enumerate(tuning.groupby("method", sort=True)):
        colour = f"C{i % 10}"
        rows = rows.sort_values("k")
        ax.plot(rows["k"], rows["expected_best"], marker="o", ms=3, color=colour, label=method)
        if rows["lo"].notna().any():
            ax.fill_between(rows["k"], rows["lo"], rows["hi"], color=colour, alpha=0.15, lw=0)
        if tolerance is not None and len(rows):
            curve = rows["seed_mean_curve"].to_numpy()
            k = int(rows["k"].iloc[int(np.argmax(curve >= curve[-1] - tolerance - 1e-12))])
            y = float(rows.loc[rows["k"] == k, "expected_best"].iloc[0])
            ax.plot([k], [y], marker="|", ms=14, mew=2, color=colour)
    if tolerance is not None:
        ax.plot([], [], marker="|", ms=10, mew=2, ls="", color="grey", label=f"within {tolerance:g} of the best")
    ax.set_xlabel("k: grid points tried, drawn at random without replacement")
    ax.set_ylabel(f"expected best {label(score_label)}")
    ax.set_title("cost of tuning: expected best after k random trials (mean, 95% band over seeds)", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(
    curves: pd.DataFrame, runs: pd.DataFrame, metrics: tuple[str, ...] = ("train/margin/mean", "train/pmi/delta"),
    hue: str = "loss.beta", path: str | Path | None = None, smooth: int = 1,
) -> plt.Figure | None:
    """Rows: `metrics`; columns: the methods that logged them; one line per (`hue`, other swept key)
    value through the seed means of the logged points (markers), and with `smooth` > 1 a rolling mean
    over that many points (named in the title). None without curves."""
    metrics = tuple(m for m in metrics if m in curves.columns and curves[m].notna().any())
    if curves.empty or not metrics:
        return None
    meta_cols = ["run", "method", *(c for c in (hue, "optim.lr") if c in runs.columns)]
    table = curves.merge(runs[meta_cols], on="run", how="inner")
    methods = sorted(table["method"].unique())
    fig, axes = plt.subplots(len(metrics), len(methods), figsize=(5 * len(methods), 3.2 * len(metrics) + 0.8),
                             squeeze=False, sharex=True, sharey="row", layout="constrained")
    for j, method in enumerate(methods):
        rows_m = table[table["method"] == method]
        group_keys = [k for k in (hue, "optim.lr") if k in rows_m and rows_m[k].nunique() > 1]
        styles = _line_styles(rows_m, group_keys)
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for values, series in _groups(rows_m, group_keys):
                mean = series.groupby("step")[metric].mean().dropna()
                if mean.empty:
                    continue
                shown = mean.rolling(smooth, min_periods=1).mean() if smooth > 1 else mean
                ax.plot(mean.index, shown, **styles[values], marker="o", ms=3,
                        label=_series_label(series.iloc[0], group_keys))
            if rows_m[metric].isna().all():
                ax.text(0.5, 0.5, f"{method} does not log\n{metric}", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
            ax.set_title(f"{method}: {label(metric)}", fontsize=10)
            ax.grid(alpha=0.3)
            if i == len(metrics) - 1:
                ax.set_xlabel("training step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    how = f"rolling mean of {smooth} logged points" if smooth > 1 else "each point a logged step"
    fig.suptitle(f"over training (mean over seeds; {how})")
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    return _save(fig, path)


def _groups(rows: pd.DataFrame, keys: list[str]):
    """(values tuple, rows) per combination of `keys`; one group `()` when there are no keys."""
    if not keys:
        return [((), rows)]
    return [(v if isinstance(v, tuple) else (v,), g) for v, g in rows.groupby(keys, sort=True)]


def _line_styles(rows: pd.DataFrame, keys: list[str]) -> dict[tuple, dict[str, Any]]:
    """Colour by the first key's value, line style by the second's."""
    first = sorted(rows[keys[0]].dropna().unique()) if keys else []
    second = sorted(rows[keys[1]].dropna().unique()) if len(keys) > 1 else []
    cmap = plt.get_cmap("viridis")
    dashes = ["-", "--", ":", "-."]
    styles = {}
    for values, _ in _groups(rows, keys):
        colour = cmap(0.85 * first.index(values[0]) / max(1, len(first) - 1)) if values else None
        style = dashes[second.index(values[1]) % len(dashes)] if len(values) > 1 else "-"
        styles[values] = {"color": colour, "ls": style}
    return styles
