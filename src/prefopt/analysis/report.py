"""The study report: from a multirun folder to sensitivity.md, sensitivity.csv, grid.csv, runs.csv,
curves.csv and the PNG figures, all generated (never edited by hand).

    python src/analyze.py MULTIRUN_DIR [--out DIR]        # the CLI around `analyze`

Exercised by `pytest tests/test_analyze.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from prefopt.analysis.plots import plot_reward_vs_kl, plot_score_vs_param, plot_training_curves
from prefopt.analysis.runs import StudySettings, completed, load_study
from prefopt.analysis.stats import format_value, grid_table, method_summary, pairwise_differences

SUMMARY_COLUMNS = ["method", "best", "median", "worst", "range", "share_within_tol", "regret_default",
                   "seed_sd", "points", "seeds_per_point", "best_point", "default_point"]


def analyze(
    source: str | Path,
    out_dir: str | Path | None = None,
    score: str | None = None,
    tolerance: float | None = None,
    x: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    methods: list[str] | None = None,
) -> dict[str, Path]:
    """Analyse the runs under `source` (a multirun folder, or a runs.csv written here) and write the
    report into `out_dir` (default: the folder itself); `methods` keeps only those methods (loss
    config names). Returns {name: path} of what was written."""
    source = Path(source)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    out.mkdir(parents=True, exist_ok=True)
    runs, curves, settings = load_study(source, methods, score=score, tolerance=tolerance)
    if completed(runs).empty:
        raise ValueError(f"no completed run under {source}; failed: {_failures(runs)}")
    summary = method_summary(runs, settings, n_boot=n_boot, seed=seed)
    pairs = pairwise_differences(runs, settings, n_boot=n_boot, seed=seed)
    grid = grid_table(runs, settings)
    x = x or _x_axis(grid)

    written = {
        "runs.csv": out / "runs.csv",
        "grid.csv": out / "grid.csv",
        "sensitivity.csv": out / "sensitivity.csv",
        "pairwise.csv": out / "pairwise.csv",
    }
    runs.to_csv(written["runs.csv"], index=False)
    grid.to_csv(written["grid.csv"], index=False)
    summary.to_csv(written["sensitivity.csv"], index=False)
    pairs.to_csv(written["pairwise.csv"], index=False)
    if not curves.empty:
        written["curves.csv"] = out / "curves.csv"
        curves.to_csv(written["curves.csv"], index=False)

    figures = {}
    if x is not None:
        name = f"score_vs_{x.rsplit('.', 1)[-1]}.png"
        plot_score_vs_param(grid, x=x, score_label=settings.score, path=out / name)
        figures[name] = out / name
    plot_reward_vs_kl(runs, score=settings.score, path=out / "reward_vs_kl.png")
    figures["reward_vs_kl.png"] = out / "reward_vs_kl.png"
    if plot_training_curves(curves, runs, path=out / "training_margin_delta.png") is not None:
        figures["training_margin_delta.png"] = out / "training_margin_delta.png"
    written.update(figures)

    command = f"python src/analyze.py {source}" + (f" --out {out_dir}" if out_dir is not None else "") + (
        f" --methods {','.join(methods)}" if methods else "")
    text = markdown_report(runs, settings, summary, pairs, grid, figures=list(figures), command=command)
    written["sensitivity.md"] = out / "sensitivity.md"
    written["sensitivity.md"].write_text(text)
    import matplotlib.pyplot as plt

    plt.close("all")
    return written


def _x_axis(grid: pd.DataFrame) -> str | None:
    """loss.beta when it varies, else the first swept key that does."""
    swept = [c for c in grid.columns if "." in c and "/" not in c and grid[c].nunique() > 1]
    return "loss.beta" if "loss.beta" in swept else (swept[0] if swept else None)


def _failures(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["status"] != "completed"]
    return [f"{r.run}: {r.error}" for r in bad.itertuples()]


def _num(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _ci(row: pd.Series, name: str) -> str:
    if pd.isna(row[name + "_lo"]):
        return _num(row[name])
    return f"{_num(row[name])} [{_num(row[name + '_lo'])}, {_num(row[name + '_hi'])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(
    runs: pd.DataFrame,
    settings: StudySettings,
    summary: pd.DataFrame,
    pairs: pd.DataFrame,
    grid: pd.DataFrame,
    figures: list[str] = (),
    command: str = "python src/analyze.py",
) -> str:
    """The text of sensitivity.md: what was run, the per-method table with 95% intervals, the
    differences that exceed seed noise, the grid, the figures and the failed runs."""
    done = completed(runs)
    n_failed = len(runs) - len(done)
    score = settings.score
    parts = [
        f"# Sensitivity study: {settings.name}",
        "",
        f"Generated by `{command}` from {len(runs)} runs ({len(done)} completed, {n_failed} not; "
        f"{_num(done['wall_time_s'].sum() / 60, 1)} minutes of run time in total). Do not edit by hand.",
        "",
        f"Setup: {_setup(done)}.",
        "",
        f"Score: `{score}` (seed mean at each grid point). A grid point is *near the best* when its score is "
        f"within {settings.tolerance:g} of the method's best. *Regret at default*: best minus the score at "
        "the loss's own default β (and the study's default for other swept keys: "
        f"{_describe_defaults(settings)}). Brackets: bootstrap 95% intervals (seeds resampled within "
        "each grid point). Seed sd: pooled standard deviation over seeds at a grid point.",
    ]
    if "eval/oracle_reward_start" in done and score == "eval/oracle_reward":
        parts += ["", f"Starting policy: {_num(done['eval/oracle_reward_start'].mean())} "
                      f"(the SFT policy's oracle reward on the same prompts)."]
    rows = []
    for _, r in summary.iterrows():
        rows.append([f"**{r['method']}**", _ci(r, "best"), _ci(r, "median"), _ci(r, "worst"), _ci(r, "range"),
                     _ci(r, "share_within_tol"), _ci(r, "regret_default"), _num(r["seed_sd"]),
                     f"{r['points']}×{r['seeds_per_point']}", r["best_point"], r["default_point"] or "–"])
    parts += ["", "## Per method", "",
              _table(["method", "best", "median", "worst", "range", f"share within {settings.tolerance:g}",
                      "regret at default", "seed sd", "points×seeds", "best point", "default point"], rows)]

    parts += ["", "## Differences between methods", "",
              "A − B for each statistic, with its bootstrap 95% interval. **yes**: the interval excludes 0, "
              "i.e. the difference exceeds seed noise."]
    if pairs.empty:
        parts += ["", "(one method only: nothing to compare)"]
    else:
        shown = pairs[pairs["stat"].isin(["best", "median", "range", "regret_default"])]
        parts += ["", _table(["A", "B", "statistic", "A − B", "95% interval", "exceeds noise"], [
            [r.a, r.b, r.stat, _num(r.diff), f"[{_num(r.lo)}, {_num(r.hi)}]", _verdict(r.exceeds_noise)]
            for r in shown.itertuples()])]
        parts += ["", _verdicts(pairs)]

    parts += ["", "## Grid", "", _grid_markdown(grid, score)]
    if figures:
        parts += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    if n_failed:
        parts += ["", "## Runs that did not complete", ""] + [f"- `{line}`" for line in _failures(runs)]
    return "\n".join(parts) + "\n"


SETUP_KEYS = ("data.name", "model.name", "trainer.max_steps", "data.batch_size", "optim.warmup_ratio",
              "data.source.judge_bias", "data.source.n_eval_prompts")


def _setup(done: pd.DataFrame) -> str:
    """The settings every run shares, from SETUP_KEYS."""
    items = [f"`{k}`={format_value(done[k].iloc[0])}" for k in SETUP_KEYS
             if k in done and done[k].astype(str).nunique() == 1]
    return ", ".join(items) or "–"


def _describe_defaults(settings: StudySettings) -> str:
    return ", ".join(f"`{k}`={v}" for k, v in settings.defaults.items()) or "none"


def _verdict(exceeds: Any) -> str:
    if exceeds is None or pd.isna(exceeds):
        return "n/a (one seed)"
    return "**yes**" if exceeds else "no"


def _verdicts(pairs: pd.DataFrame) -> str:
    """Plain sentences for the robustness comparisons (median and range) that exceed seed noise."""
    lines = []
    robust = pairs[pairs["stat"].isin(["median", "range"]) & (pairs["exceeds_noise"] == True)]  # noqa: E712
    for r in robust.itertuples():
        if r.stat == "median":
            higher, lower = (r.a, r.b) if r.diff > 0 else (r.b, r.a)
            lines.append(f"- median over the grid: {higher} > {lower} by {_num(abs(r.diff))}")
        else:
            narrow, wide = (r.b, r.a) if r.diff > 0 else (r.a, r.b)
            lines.append(f"- range over the grid: {narrow} is narrower than {wide} by {_num(abs(r.diff))}")
    if not lines:
        return "No difference in median or range exceeds seed noise."
    return "Differences in median and range that exceed seed noise:\n\n" + "\n".join(lines)


def _grid_markdown(grid: pd.DataFrame, score: str) -> str:
    extras = [c for c in ("eval/win_rate", "eval/kl", "eval/length") if c in grid.columns]
    keys = [c for c in grid.columns if "." in c and "/" not in c and grid[c].nunique() > 1]
    header = ["method", *[k.rsplit(".", 1)[-1] for k in keys], f"{score} mean ± sd", "seeds",
              *[e.split("/")[-1] for e in extras]]
    rows = []
    for _, r in grid.iterrows():
        mark = " (default)" if r["is_default"] else ""
        rows.append([r["method"] + mark, *[format_value(r[k]) for k in keys],
                     f"{_num(r['score_mean'])} ± {_num(r['score_sd'])}", str(r["seeds"]),
                     *[_num(r[e], 2) for e in extras]])
    return _table(header, rows)
