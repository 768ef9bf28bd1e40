"""Turning a sweep into the sensitivity study: load runs, compute per-method statistics, plot, report.

    python src/analyze.py multirun/beta_sensitivity_<date_time>       # the CLI (writes there)
    notebooks/sensitivity.ipynb                                      # the same functions, interactively

`load_study` (`load_runs`, `load_curves`, `study_settings`) reads every `results.json` under a multirun
folder (or the `runs.csv` this package wrote);
`grid_table`, `method_summary`, `pairwise_differences` and `tuning_curves` (the expected best after k random
trials, `expected_max`) compute the numbers; `plot_*` draw them;
`analyze` does all of it, writes sensitivity.md, sensitivity.csv and the PNGs and logs the `headline`;
`resolve_study` finds the study a notebook is pointed at (`PREFOPT_STUDY`); `attach_scores` / `read_scores`
add scores judged elsewhere (AlpacaEval's leaderboard.csv, or run,metric,value) to the runs (`--scores`).
"""

from prefopt.analysis.plots import plot_reward_vs_kl, plot_score_vs_param, plot_training_curves, plot_tuning_cost
from prefopt.analysis.report import analyze, figure_plan, headline, markdown_report
from prefopt.analysis.runs import (
    StudySettings, learning_rates, load_curves, load_runs, load_study, resolve_study, study_settings, swept_keys,
)
from prefopt.analysis.scores import attach_scores, read_scores
from prefopt.analysis.stats import expected_max, grid_table, method_summary, pairwise_differences, tuning_curves

__all__ = [
    "StudySettings",
    "analyze",
    "attach_scores",
    "expected_max",
    "figure_plan",
    "grid_table",
    "headline",
    "learning_rates",
    "load_curves",
    "load_runs",
    "load_study",
    "markdown_report",
    "method_summary",
    "pairwise_differences",
    "plot_reward_vs_kl",
    "plot_score_vs_param",
    "plot_training_curves",
    "plot_tuning_cost",
    "read_scores",
    "resolve_study",
    "study_settings",
    "swept_keys",
    "tuning_curves",
]
