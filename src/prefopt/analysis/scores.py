"""Scores computed elsewhere (an external judge) attached to a study's runs as metric columns of runs.csv:
`python src/analyze.py STUDY --scores FILE [FILE ...] --score eval/alpaca_lc_win_rate`.

A FILE is either
- AlpacaEval's leaderboard.csv: one row per generator, named in its first, unnamed column (or a `name` or
  `generator` column), with `win_rate` and `length_controlled_winrate`, `standard_error`,
  `lc_standard_error`, `discrete_win_rate`, `n_total`, `avg_length` where present. A row is the run whose
  generations.json carries that `generator` (prefopt.eval.export.generator_name; runs.csv column
  `generator`); its columns become `eval/alpaca_*` (ALPACA_METRICS), the win rates and their standard
  errors as fractions (AlpacaEval's 25.3 → 0.253), the scale of `eval/win_rate`, so `sweep.tolerance`
  means the same for them;
- or a long table with columns `run,metric,value`: `run` is the run's `run` (its folder relative to the
  study, quoted when it has commas), its generator name or its folder's path; `metric` the column to fill
  (`eval/` is put before a name without a `/`, which would otherwise read as a config key).

Each row must match exactly one run, and no run may be matched twice for one metric: otherwise one
ValueError line lists the rows. An attached column replaces one of the same name (analysing a runs.csv
again with the same file gives the same table). Used by prefopt.analysis.runs.load_study; exercised by
`pytest tests/test_scores.py`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

ALPACA_METRICS = {  # leaderboard column -> (runs.csv column, factor)
    "length_controlled_winrate": ("eval/alpaca_lc_win_rate", 0.01),
    "lc_standard_error": ("eval/alpaca_lc_standard_error", 0.01),
    "win_rate": ("eval/alpaca_win_rate", 0.01),
    "standard_error": ("eval/alpaca_standard_error", 0.01),
    "discrete_win_rate": ("eval/alpaca_discrete_win_rate", 0.01),
    "n_total": ("eval/alpaca_n_total", 1.0),
    "avg_length": ("eval/alpaca_avg_length", 1.0),
}
LONG_COLUMNS = ("run", "metric", "value")
NAME_COLUMNS = ("Unnamed: 0", "name", "generator")  # where a leaderboard names its generator
EXPECTED = ("expected AlpacaEval's leaderboard.csv (the generator in its first, unnamed column or in `name` or "
            "`generator`, and `win_rate`, `length_controlled_winrate`, ...) or a CSV with columns run,metric,value")


def read_scores(path: str | Path) -> pd.DataFrame:
    """The scores in one file as a long table: `key` (a run's name as the file gives it), `metric`,
    `value`, `where` (`file:line`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--scores {path}: no such file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise ValueError(f"--scores {path}: not a readable CSV; {EXPECTED}") from None
    if not isinstance(table.index, pd.RangeIndex):  # rows with more fields than the header
        raise ValueError(f"--scores {path}: some rows have more fields than the header; quote a name with commas "
                         '("dpo/beta=0.1,seed=0")')
    table.columns = [str(c).strip() for c in table.columns]
    where = [f"{path}:{i + 2}" for i in range(len(table))]  # line 1 is the header
    if set(LONG_COLUMNS) <= set(table.columns):
        return _long(table, where, path)
    name = next((c for c in NAME_COLUMNS if c in table.columns), None)
    if "win_rate" in table.columns and name:
        return _alpaca(table, name, where)
    raise ValueError(f"--scores {path}: {EXPECTED}; it has columns {list(table.columns)}")


def _long(table: pd.DataFrame, where: list[str], path: Path) -> pd.DataFrame:
    """A run,metric,value table: values must be numbers; `eval/` before a metric name without a `/`."""
    values = pd.to_numeric(table["value"], errors="coerce")
    bad = [w.rsplit(":", 1)[1] for w, v, raw in zip(where, values, table["value"]) if pd.isna(v) and pd.notna(raw)]
    if bad:
        raise ValueError(f"--scores {path}: `value` is not a number on line(s) {', '.join(bad)}")
    metric = table["metric"].astype(str).str.strip()
    metric = metric.where(metric.str.contains("/"), "eval/" + metric)
    return pd.DataFrame({"key": table["run"].astype(str).str.strip(), "metric": metric, "value": values,
                         "where": where})


def _alpaca(table: pd.DataFrame, name: str, where: list[str]) -> pd.DataFrame:
    """An AlpacaEval leaderboard, one long row per (generator, known column); win rates as fractions."""
    parts = []
    for column, (metric, factor) in ALPACA_METRICS.items():
        if column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce") * factor
            parts.append(pd.DataFrame({"key": table[name].astype(str).str.strip(), "metric": metric,
                                       "value": values, "where": where}))
    return pd.concat(parts, ignore_index=True)


def run_names(runs: pd.DataFrame, source: str | Path) -> dict[str, list[int]]:
    """Every name a row may give a run by -> the runs' index labels: its `run`, its `generator`, and (for
    a study folder) its folder's absolute path."""
    folder = Path(source).resolve() if Path(source).is_dir() else None
    names: dict[str, list[int]] = defaultdict(list)
    for index, row in runs.iterrows():
        own = {str(row["run"])}
        if isinstance(row.get("generator"), str) and row["generator"]:
            own.add(row["generator"])
        if folder is not None:
            own.add(str(folder / str(row["run"])))
        for name in own:
            names[name].append(index)
    return names


def _match(key: str, names: dict[str, list[int]]) -> list[int]:
    """The runs a row's `key` names: as it is, else as a path from the current directory."""
    if key in names:
        return names[key]
    return names.get(str(Path(key).expanduser().resolve()), []) if key else []


def _few(items: list[str], n: int = 5) -> str:
    """At most `n` items, then how many in all."""
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _problems(scores: pd.DataFrame, hits: list[list[int]], runs: pd.DataFrame) -> list[str]:
    """What stops the scores from being attached, one clause each: rows naming no run, rows naming
    several, runs named twice for one metric."""
    unmatched = list(dict.fromkeys(k for k, h in zip(scores["key"], hits) if not h))
    several = list(dict.fromkeys(f"{k} ({len(h)} runs)" for k, h in zip(scores["key"], hits) if len(h) > 1))
    single = [(h[0], m, w) for h, m, w in zip(hits, scores["metric"], scores["where"]) if len(h) == 1]
    seen: dict[tuple[int, str], list[str]] = defaultdict(list)
    for index, metric, where in single:
        seen[(index, metric)].append(where)
    twice = list(dict.fromkeys(f"{runs.at[i, 'run']} ({', '.join(w)})" for (i, _), w in seen.items() if len(w) > 1))
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} name(s) match no run of this study: {_few(unmatched)} (a run is named "
                        f"by its `run`, e.g. {runs['run'].iloc[0]}, or the `generator` in its generations.json)")
    if several:
        problems.append(f"{len(several)} name(s) match several runs: {_few(several)}")
    if twice:
        problems.append(f"{len(twice)} run(s) are scored twice: {_few(twice)}")
    return problems


def attach_scores(runs: pd.DataFrame, files: list[str | Path], source: str | Path) -> tuple[pd.DataFrame, str]:
    """`runs` with each metric of the score `files` as a column (NaN for a run the files do not score),
    replacing a column of the same name; and a sentence saying what was attached. Raises ValueError
    (one line) when a row matches no run or several, or a run is scored twice for one metric."""
    scores = pd.concat([read_scores(f) for f in files], ignore_index=True)
    names = run_names(runs, source)
    hits = [_match(k, names) for k in scores["key"]]
    problems = _problems(scores, hits, runs)
    if problems:
        raise ValueError(f"--scores {', '.join(str(f) for f in files)}: " + "; ".join(problems))
    scores = scores.assign(index=[h[0] for h in hits])
    table = scores.pivot(index="index", columns="metric", values="value").reindex(runs.index)
    metrics = list(dict.fromkeys(scores["metric"]))
    runs = pd.concat([runs.drop(columns=metrics, errors="ignore"), table[metrics]], axis=1)
    scored = int(table.notna().any(axis=1).sum())
    kind = " (AlpacaEval win rates as fractions)" if any(m.startswith("eval/alpaca_") for m in metrics) else ""
    files_text = ", ".join(f"`{f}`" for f in files)
    return runs, (f"{', '.join(f'`{m}`' for m in metrics)}{kind} from {files_text}, for {scored} of "
                  f"{len(runs)} runs")
