"""The study report: from a multirun folder to sensitivity.md, sensitivity.csv, grid.csv, runs.csv,
curves.csv, tuning_cost.csv (expected best after k random trials, per method and k) and the PNG figures,
all generated (never edited by hand).

    python src/analyze.py MULTIRUN_DIR [--out DIR]        # the CLI around `analyze`

`analyze` also logs a headline (each method's best with its interval and learning rate, the verdicts
that hold), every figure it does not draw with the reason (`figure_plan`; the report lists them too),
and the verdicts that rest on fewer seeds than the calibration's (marked in the report and pairwise.csv).
A study without `sweep.name` is titled by its folder. `scores` (`--scores FILE`) attaches scores judged
elsewhere (AlpacaEval's leaderboard.csv, or run,metric,value) as metrics to rank by (`--score`); the report
says what was attached. Exercised by `pytest tests/test_analyze.py tests/test_scores.py
tests/test_tuning_cost.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from prefopt.analysis.plots import plot_reward_vs_kl, plot_score_vs_param, plot_training_curves, plot_tuning_cost
from prefopt.analysis.runs import CURVE_METRICS, StudySettings, completed, learning_rates, load_study
from prefopt.analysis.stats import (
    CALIBRATED_SEEDS, format_value, grid_table, method_summary, pairwise_differences, seed_noise, tuning_curves,
)
from prefopt.analysis.statistics import BEST, BY_NAME, STATISTICS, label
from prefopt.log import PLAIN, get_logger

log = get_logger()



def analyze(
    source: str | Path,
    out_dir: str | Path | None = None,
    score: str | None = None,
    tolerance: float | None = None,
    x: str | None = None,
    methods: list[str] | None = None,
    price: float | None = None,
    scores: list[str | Path] | None = None,
    carry: list[str] | None = None,
) -> dict[str, Path]:
    """Analyse the runs under `source` (a multirun folder, or a runs.csv written here) and write the
    report into `out_dir` (default: the folder itself). `methods`: only those methods; `price`: the price
    of drift (0: unpriced); `scores`: files of scores judged elsewhere (prefopt.analysis.scores), ranked by
    when `score` names one; `carry`: other studies' runs appended (runs.with_carried). Logs the headline,
    each figure not drawn and why, and each verdict on fewer seeds than the calibration's. Returns
    {name: path} written."""
    source = Path(source)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    out.mkdir(parents=True, exist_ok=True)
    runs, curves, settings = load_study(source, methods, scores=scores, carry=carry, score=score,
                                         tolerance=tolerance, price=price)
    _log_attached(settings)
    if completed(runs).empty:
        raise ValueError(f"no completed run under {source}; failed: {_failures(runs)}")
    if settings.focus and settings.focus not in set(completed(runs)["method"]):
        settings.focus = None  # `methods` left the study's focus out: compare every pair (the report says so)
    summary = method_summary(runs, settings)
    pairs = pairwise_differences(runs, settings)
    grid = grid_table(runs, settings)
    tuning = tuning_curves(runs, settings)
    tables = {"runs.csv": runs, "grid.csv": grid, "sensitivity.csv": summary, "pairwise.csv": pairs,
              "tuning_cost.csv": tuning}
    if not curves.empty:
        tables["curves.csv"] = curves
    written = {}
    for name, table in tables.items():
        written[name] = out / name
        table.to_csv(written[name], index=False)
    figures, skipped = draw_figures(runs, curves, grid, settings, out, x, tuning)
    written.update(figures)
    command = _command(source, out_dir, methods, price, score, scores)
    text = markdown_report(runs, settings, summary, pairs, grid, figures=list(figures), command=command,
                           skipped=skipped)
    written["sensitivity.md"] = out / "sensitivity.md"
    written["sensitivity.md"].write_text(text)
    _log_outcome(summary, pairs, settings, skipped)
    return written


def _command(source: Path, out_dir: Any, methods: list[str] | None, price: float | None, score: str | None,
             scores: list[str | Path] | None) -> str:
    """The command line that makes this report (the report quotes it)."""
    parts = [f"python src/analyze.py {source}", f"--out {out_dir}" if out_dir is not None else "",
             f"--methods {','.join(methods)}" if methods else "", f"--price {price:g}" if price is not None else "",
             f"--scores {' '.join(str(f) for f in scores)}" if scores else "", f"--score {score}" if score else ""]
    return " ".join(p for p in parts if p)


def _log_attached(settings: StudySettings) -> None:
    """What `--scores` attached; a warning when the study does not rank by any of it."""
    if not settings.attached:
        return
    log.info("attached %s", settings.attached)
    if f"`{settings.reward or settings.score}`" not in settings.attached:
        log.warning("the study ranks by %s, not by the attached scores: pass --score <one of them>", settings.score)


def _log_outcome(summary: pd.DataFrame, pairs: pd.DataFrame, settings: StudySettings, skipped: dict[str, str]) -> None:
    """The headline to stdout; the figures not drawn and the verdicts on too few seeds as warnings."""
    for line in headline(summary, pairs, settings):
        log.info(line, extra=PLAIN)
    for name, reason in skipped.items():
        log.warning("not drawn: %s: %s", name, reason)
    warned = pairs[pairs["warning"].fillna("") != ""] if "warning" in pairs else pairs.iloc[:0]
    if len(warned):
        log.warning("%d verdict(s) rest on %s", len(warned), _seed_warning(warned))


def figure_plan(
    runs: pd.DataFrame, curves: pd.DataFrame, grid: pd.DataFrame, settings: StudySettings, x: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The figures `analyze` draws ({file name: kind}: "score", "reward_vs_kl", "tuning", "training") and
    those it does not ({file name: the reason}), in the report's order."""
    drawn, skipped = {}, {}
    swept = _swept(grid)
    x = x or _x_axis(grid)
    if x is None:
        skipped["score_vs_beta.png"] = "no config key varies within a method (a single grid point each)"
    else:
        drawn[f"score_vs_{x.rsplit('.', 1)[-1]}.png"] = "score"
        if "loss.beta" not in swept and x != "loss.beta":
            skipped["score_vs_beta.png"] = ("loss.beta is not swept (one value per method); "
                                            f"the score is drawn against {x}")
    metrics = [m for m in (settings.reward or settings.score, settings.price_metric) if m not in runs.columns]
    if metrics:
        skipped["reward_vs_kl.png"] = f"no run logged {' or '.join(metrics)}"
    else:
        drawn["reward_vs_kl.png"] = "reward_vs_kl"
    if len(grid) and grid.groupby("method").size().max() > 1:
        drawn["tuning_cost.png"] = "tuning"
    else:
        skipped["tuning_cost.png"] = "every method has a single grid point: nothing to tune"
    logged = [m for m in CURVE_METRICS if m in curves.columns and curves[m].notna().any()]
    if logged:
        drawn["training_margin_delta.png"] = "training"
    else:
        skipped["training_margin_delta.png"] = (f"no run logged {' or '.join(CURVE_METRICS)} over training "
                                                "(csv/metrics.csv beside its results.json)")
    return drawn, skipped


def draw_figures(
    runs: pd.DataFrame, curves: pd.DataFrame, grid: pd.DataFrame, settings: StudySettings, out: Path,
    x: str | None = None, tuning: pd.DataFrame | None = None,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw the figures of `figure_plan` into `out`: ({name: path} drawn, {name: reason} not drawn);
    `tuning` is tuning_curves' table (computed here when not given)."""
    import matplotlib.pyplot as plt

    drawn, skipped = figure_plan(runs, curves, grid, settings, x)
    x = x or _x_axis(grid)
    for name, kind in drawn.items():
        if kind == "score":
            plot_score_vs_param(grid, x=x, score_label=_score_label(settings), path=out / name,
                                lrs=learning_rates(runs))
        elif kind == "tuning":
            table = tuning if tuning is not None else tuning_curves(runs, settings)
            plot_tuning_cost(table, score_label=_score_label(settings), tolerance=settings.tolerance, path=out / name)
        elif kind == "reward_vs_kl":
            plot_reward_vs_kl(runs, score=settings.reward or settings.score, kl=settings.price_metric,
                              price=settings.price, path=out / name)
        else:
            plot_training_curves(curves, runs, path=out / name)
    plt.close("all")
    return {name: out / name for name in drawn}, skipped


def headline(summary: pd.DataFrame, pairs: pd.DataFrame, settings: StudySettings) -> list[str]:
    """A few lines for the console: each method's best score with its 95% interval, where and at
    which learning rate, and the differences that hold at the family-wise error rate."""
    width = max(len(str(m)) for m in summary["method"])
    lines = [f"{settings.name}: best {settings.score} per method (95% t-interval over seeds)"]
    for _, r in summary.iterrows():
        lr = "" if "lr=" in str(r["best_point"]) else f", lr {r['lr']}"  # a swept lr is in the best point
        lines.append(f"  {r['method']:<{width}}  {_ci(r, BEST.name)}  at {r['best_point']}{lr} "
                     f"({r['seeds_per_point']} seed{'s' if r['seeds_per_point'] != 1 else ''} a point)")
    if pairs.empty or not pairs["verdict"].notna().any():
        return lines + ["verdicts: none tested" + (" (one method)" if pairs.empty else " (see the report)")]
    holding = _holding(pairs)
    lines.append(f"verdicts that hold (Holm, family-wise {settings.alpha:g}):" + ("" if holding else " none"))
    return lines + [f"  {line}" for line in holding]


def _score_label(settings: StudySettings) -> str:
    """The score's name on a figure: the metric, or "<metric> − <price>·<KL metric>" when priced."""
    if not settings.price:
        return settings.score
    return f"{settings.reward} − {settings.price:g}·{settings.price_metric.rsplit('/', 1)[-1]}"


def _swept(grid: pd.DataFrame) -> list[str]:
    """The grid's config columns that vary."""
    return [c for c in grid.columns if "." in c and "/" not in c and grid[c].nunique() > 1]


def _x_axis(grid: pd.DataFrame) -> str | None:
    """loss.beta when it varies, else the first swept key that does."""
    swept = _swept(grid)
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
    skipped: dict[str, str] | None = None,
) -> str:
    """The text of sensitivity.md: what was run, the definitions, the per-method table with 95%
    intervals and learning rates, the grid-edge and window flags, the tested differences with their
    family, verdicts and few-seed warnings, the grid, the figures (and those not drawn, with `skipped`'s
    reasons) and the failed runs."""
    done = completed(runs)
    n_failed = len(runs) - len(done)
    parts = [
        f"# Sensitivity study: {settings.name}",
        "",
        f"Generated by `{command}` from {len(runs)} runs ({len(done)} completed, {n_failed} not; "
        f"{_timing(done)}). Do not edit by hand.",
        "",
        f"Setup: {_setup(done)}.",
        "",
        *([f"Scores judged elsewhere: {settings.attached}.", ""] if settings.attached else []),
        _definitions(settings),
        "",
        _noise_line(runs, settings),
    ]
    if "eval/oracle_reward_start" in done and (settings.reward or settings.score) == "eval/oracle_reward":
        priced = " and priced score (its KL is 0)" if settings.price else ""
        parts += ["", f"Starting policy: {_num(done['eval/oracle_reward_start'].mean())} "
                      f"(the SFT policy's oracle reward{priced} on the same prompts)."]
    parts += ["", "## Per method", "", _summary_table(summary, settings)]
    parts += ["", "## Grid edges and windows", "", _edges(summary)]
    parts += ["", "## Differences between methods", "", _family(pairs, settings)]
    if not pairs.empty:
        parts += ["", _table(["A", "B", "statistic", "A − B", "95% interval", "seeds", "p (Holm)", "verdict"], [
            [r.a, r.b, label(r.stat), _num(r.diff), f"[{_num(r.lo)}, {_num(r.hi)}]",
             str(r.n_seeds), _num(r.p_holm), _verdict(r.verdict, r.note, _warning(r))] for r in pairs.itertuples()])]
        for text in (_seed_paragraph(pairs), _verdicts(pairs)):
            parts += ["", text] if text else []

    parts += ["", "## Grid", "", _grid_markdown(grid, settings.score)]
    parts += _figures_markdown(figures, skipped or {})
    if n_failed:
        parts += ["", "## Runs that did not complete", ""] + [f"- `{line}`" for line in _failures(runs)]
    return "\n".join(parts) + "\n"


def _price_sentence(settings: StudySettings) -> str:
    """What the priced score is and why (empty without a price)."""
    if not settings.price:
        return ""
    return (f" (`{settings.reward}` minus {settings.price:g} per nat of `{settings.price_metric}`, the KL to the "
            "starting policy: the KL-regularised objective E[r] − τ·KL with one τ for every method; its best "
            "is where a method's reward–KL frontier has slope τ, so no method wins by drifting further; "
            "the figure reward_vs_kl.png draws lines of equal priced score)")


def _definitions(settings: StudySettings) -> str:
    window = " and ".join(f"±{v:g} decade of `{k}`" for k, v in settings.window.items())
    return (
        f"Score: `{settings.score}`{_price_sentence(settings)}. The seed is the unit of replication: each statistic is computed on "
        "each seed and averaged over seeds. *Best*: the score at the grid point with the highest seed-mean "
        "(chosen on all seeds, so every comparison is conditional on the grids: a grid maximum is biased "
        "upward, a little more for a flat surface than for a sharp peak). "
        f"*Window*: the points within {window} of the best point (other swept keys at its values), the same "
        "span for every method. *Mean regret in the window*: best minus the mean score over the window "
        "(what a user loses who lands anywhere within it; lower: less sensitive). *Regret at default*: best "
        "minus the score at the loss's own default β (and the study's default for other swept keys: "
        f"{_describe_defaults(settings)}). Brackets: 95% t-intervals over seeds. *Share within "
        f"{settings.tolerance:g}*: share of the window's points whose seed-mean is within that of the best. "
        "Seed sd: pooled standard deviation over seeds at a point. *Expected best after k random trials* (the "
        "cost of tuning, \"Show Your Work\", Dodge et al. 2019): the expected maximum of k grid points drawn "
        "at random without replacement, on each seed's scores (sorted ascending v_(1..N): "
        "Σ v_(i)·C(i−1, k−1)/C(N, k)), at the same k for every method (k in the table; `sweep.tuning_k`, else "
        "the midpoint of the smallest grid); higher: cheaper to tune. *k within "
        f"{settings.tolerance:g}*: the fewest random trials whose expected best (on the seed-mean scores) is "
        "within that of the best; tuning_cost.png draws the whole curve, k = 1 … grid size."
    )


def _noise_line(runs: pd.DataFrame, settings: StudySettings) -> str:
    noise = seed_noise(runs, settings)
    if not noise["points"] or pd.isna(noise["total_sd"]):
        return "Seed noise: not measured (one seed per point)."
    return (f"Seed noise ({noise['points']} points × {noise['seeds']} seeds): sd {_num(noise['total_sd'])} per "
            f"run, of which a seed effect shared by all points of a seed (same data order and sampling) "
            f"{_num(noise['seed_effect_sd'])} and a residual {_num(noise['residual_sd'])}; comparisons on "
            "the same seeds are paired, so the shared part cancels.")


def _stat_cell(r: Any, stat: Any) -> str:
    """A summary row's cell of `stat`: its value and interval, with what qualifies it (a truncated window,
    the k of a tuning cost)."""
    cell = _ci(r, stat.name)
    if stat.needs_windows and not r["window_complete"]:
        cell += " (window truncated)"
    return cell + (f" (k={r['tuning_k']})" if stat.at_k_trials else "")


def _summary_table(summary: pd.DataFrame, settings: StudySettings) -> str:
    rows = []
    for _, r in summary.iterrows():
        rows.append([f"**{r['method']}**", *(_stat_cell(r, stat) for stat in STATISTICS),
                     f"{r['k_within_tolerance']} of {r['points']}",
                     _num(r["share_within_tol"]), _num(r["seed_sd"]), f"{r['points']}×{r['seeds_per_point']}",
                     r["best_point"], r["default_point"] or "–", str(r.get("lr", "–"))])
    return _table(["method", *(stat.column for stat in STATISTICS),
                   f"k within {settings.tolerance:g}", f"share within {settings.tolerance:g}", "seed sd",
                   "points×seeds", "best point", "default point", "lr (optim.lr)"], rows)


def _edges(summary: pd.DataFrame) -> str:
    lines = []
    for _, r in summary.iterrows():
        edges = r["edges"] if isinstance(r["edges"], str) and r["edges"] else ""
        interior = "single point" if r["points"] == 1 else "best is interior"
        flag = f"**best on the grid's edge: {edges}** (extend the grid)" if "edge" in edges else (edges or interior)
        window = r["window"] if r["window_complete"] else f"**{r['window']}**"
        lines.append(f"- {r['method']}: {flag}; window {window}")
    return "\n".join(lines)


def _family(pairs: pd.DataFrame, settings: StudySettings) -> str:
    if pairs.empty:
        return "(one method only: nothing to compare)"
    tested = int(pairs["p"].notna().sum())
    who = f"{settings.focus} against each other method" if settings.focus else "every pair of methods"
    stats = ", ".join(label(s) for s in settings.compare)
    return (
        f"A − B: the mean over the seeds both ran of the paired difference, with its 95% t-interval "
        f"(unadjusted). The family is every tested row below: {who} × ({stats}), {tested} comparisons. "
        f"Each row's paired t-test (n − 1 degrees of freedom) gives a p; Holm's step-down adjusts them so "
        f"that the chance of any false verdict in the family is at most {settings.alpha:g}. **yes**: the "
        "Holm-adjusted p is below it. Not tested (n/a): a single seed, or a window-based statistic where "
        "a method's window is truncated by its grid. A t-test rather than a seed-level sign-flip "
        "permutation test: with 5 seeds the permutation test's smallest two-sided p is 1/16, so it could "
        "never reject; the t-test's error rate at these seed counts is checked on simulated studies "
        "with this project's seed noise (tests/test_stats_calibration.py)."
    )


def _warning(row: Any) -> str:
    """A pairwise row's few-seeds warning ("" for none; an older pairwise.csv has no such column)."""
    value = getattr(row, "warning", "")
    return value if isinstance(value, str) else ""


def _verdict(verdict: Any, note: Any = "", warning: str = "") -> str:
    if verdict is None or pd.isna(verdict):
        return f"n/a ({note})" if isinstance(note, str) and note else "n/a"
    return ("**yes**" if verdict else "no") + (" ⚠ few seeds" if warning else "")


def _seed_warning(warned: pd.DataFrame) -> str:
    """The seed counts of the rows that carry a warning, and what they fall short of."""
    counts = ", ".join(str(n) for n in sorted(set(warned["n_seeds"])))
    return (f"{counts} seeds, fewer than the {CALIBRATED_SEEDS} for which the verdicts' error rate and power "
            "were checked (tests/test_stats_calibration.py)")


def _seed_paragraph(pairs: pd.DataFrame) -> str:
    """The warning under the table when some tested verdict rests on fewer seeds than the calibration's."""
    warned = pairs[pairs["warning"].fillna("") != ""] if "warning" in pairs else pairs.iloc[:0]
    if warned.empty:
        return ""
    return (f"**⚠ few seeds: {len(warned)} of these verdicts rest on {_seed_warning(warned)}.** With fewer seeds "
            "the t-test's normality matters more and its power is lower: read them as provisional, and run "
            f"{CALIBRATED_SEEDS} seeds a point (seed=0,1,2,3,4) before quoting them.")


def _holding(pairs: pd.DataFrame) -> list[str]:
    """One line per difference that holds at the family-wise error rate, its few-seeds warning beside it."""
    lines = []
    for r in pairs[pairs["verdict"] == True].itertuples():  # noqa: E712
        higher, lower = (r.a, r.b) if r.diff > 0 else (r.b, r.a)
        size = _num(abs(r.diff))
        stat = BY_NAME[r.stat]
        better, sign, worse = (higher, ">", lower) if stat.higher_is_better else (lower, "<", higher)
        line = f"{stat.label}: {better} {sign} {worse} by {size}" + (f" ({better} {stat.note})" if stat.note else "")
        warned = f" (⚠ only {r.n_seeds} seeds; calibrated for {CALIBRATED_SEEDS})" if _warning(r) else ""
        lines.append(line + warned)
    return lines


def _verdicts(pairs: pd.DataFrame) -> str:
    """Plain sentences for the differences that hold at the family-wise error rate; nothing when no
    row was tested (every verdict n/a)."""
    if not pairs["verdict"].notna().any():
        return ""
    lines = _holding(pairs)
    if not lines:
        return "No difference holds at the family-wise error rate."
    return "Differences that hold at the family-wise error rate:\n\n" + "\n".join(f"- {line}" for line in lines)


def _figures_markdown(figures: list[str], skipped: dict[str, str]) -> list[str]:
    """The figures section: each drawn figure, then each one not drawn with the reason."""
    if not figures and not skipped:
        return []
    lines = ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    if skipped:
        lines += [""] if figures else []
        lines += [f"- not drawn: `{name}`: {reason}" for name, reason in skipped.items()]
    return lines


SETUP_KEYS = ("data.name", "model.name", "trainer.max_steps", "data.batch_size", "optim.warmup_ratio",
              "data.source.judge_bias", "data.source.n_eval_prompts")


SITTING_GAP_S = 600  # no run going on for this long (a run takes well under a minute): separate sittings


def sittings(done: pd.DataFrame) -> list[float]:
    """Wall time in seconds of each sitting of a sweep: runs grouped by when they ran (start = end minus
    the run's own time), a new sitting where no run was going on for SITTING_GAP_S (e.g. the runs of an
    earlier study carried into this one, or an extension run days later)."""
    spans = sorted(zip(done["finished_at"] - done["wall_time_s"], done["finished_at"]))
    groups: list[list[float]] = []
    for start, end in spans:
        if groups and start - groups[-1][1] <= SITTING_GAP_S:
            groups[-1][1] = max(groups[-1][1], end)
        else:
            groups.append([start, end])
    return [end - start for start, end in groups]


def _timing(done: pd.DataFrame) -> str:
    """Run time summed over runs, and the sweep's wall time when the runs record when they ended: from
    the earliest start (end minus the run's own time) to the last end, sitting by sitting (`sittings`)."""
    text = (f"{_num(done['wall_time_s'].sum() / 60, 1)} minutes of run time in total, the sum over runs: "
            "the wall time of a parallel sweep is about this divided by the number of jobs at once")
    if "finished_at" not in done or done["finished_at"].isna().all():
        return text
    parts = sittings(done.dropna(subset=["finished_at", "wall_time_s"]))
    if len(parts) == 1:
        return f"{text}; this sweep's wall time, first run's start to last run's end: {_num(parts[0] / 60, 1)} minutes"
    each = ", ".join(_num(p / 60, 1) for p in parts)
    return (f"{text}; this sweep's wall time, first run's start to last run's end in each of its {len(parts)} "
            f"sittings: {each} minutes ({_num(sum(parts) / 60, 1)} in all)")


def _setup(done: pd.DataFrame) -> str:
    """The settings every run shares, from SETUP_KEYS."""
    items = [f"`{k}`={format_value(done[k].iloc[0])}" for k in SETUP_KEYS
             if k in done and done[k].astype(str).nunique() == 1]
    return ", ".join(items) or "–"


def _describe_defaults(settings: StudySettings) -> str:
    return ", ".join(f"`{k}`={v}" for k, v in settings.defaults.items()) or "none"


def _grid_markdown(grid: pd.DataFrame, score: str) -> str:
    extras = [c for c in ("eval/oracle_reward", "eval/win_rate", "eval/kl", "eval/length") if c in grid.columns]
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
