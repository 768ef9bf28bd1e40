"""Loading a sweep into tables: one row per run (method, seed, metrics, flattened config), and curves.

A multirun folder holds one folder per job with `results.json` (written by prefopt.run.runner) and Hydra's
`.hydra/hydra.yaml`, whose `runtime.choices.loss` names the loss config (`dpo`, `simpo_margin_low`,
...): that name is the run's *method*. Columns: `run` (folder relative to the multirun folder),
`status`, `error`, `method`, `seed`, `wall_time_s`, `finished_at` (Unix seconds), `generator` (the run's name in its
generations.json, when it wrote one), every logged metric under its own name (those with
a `/`: `eval/oracle_reward`, `train/loss`, ...; `train_loss` and the like are progress-bar copies and
are left out) and every config key flattened with dots (`loss.beta`, `optim.lr`, `sweep.tolerance`,
...) except the machine's own `paths.*`. `analyze` saves the table as runs.csv; `load_runs` reads either;
`load_study(..., scores=[FILE])` attaches scores judged elsewhere (prefopt.analysis.scores) as more metrics.
A study without `sweep.name` (a plain multirun) is named by its folder (`study_title`); `resolve_study` finds
the folder or runs.csv a notebook is pointed at (`PREFOPT_STUDY`) from the directory the command ran in.
Exercised by `pytest tests/test_analyze.py tests/test_scores.py`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from prefopt.analysis.scores import attach_scores
from prefopt.analysis.statistics import DEFAULT_COMPARE
from prefopt.train.loggers import flatten
from prefopt.run.results import read_results

RESERVED = ("run", "status", "error", "method", "seed", "wall_time_s", "finished_at", "generator")
DEFAULT_SCORE = "eval/oracle_reward"
DEFAULT_TOLERANCE = 0.02
DEFAULT_WINDOW = {"loss.beta": 0.5, "optim.lr": 0.5}  # decades either side of a method's best
DEFAULT_PRICE_METRIC = "eval/kl"
CURVE_METRICS = ("train/margin/mean", "train/pmi/delta")


@dataclass
class StudySettings:
    """How a study is scored and compared (conf/sweep/<study>.yaml, key `sweep`): the metric, the
    "near the best" tolerance, the untuned value of each swept key that is not a loss argument (loss
    arguments default to the loss class's own defaults), the sensitivity window (decades either side
    of the best, per axis), the compared statistics, the focus method (None: every pair), the
    family-wise error rate, natural bounds of swept keys ([low, high], None for none), and the price of
    drift: with `price` set, grid points are ranked by `score − price · price_metric` (priced_score),
    the gold reward minus a fixed charge per nat of KL to the starting policy, the same for every method;
    `tuning_k`: the number of random trials at which the `tuning_cost` statistic is compared."""

    name: str = "study"
    score: str = DEFAULT_SCORE
    tolerance: float = DEFAULT_TOLERANCE
    defaults: dict[str, Any] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WINDOW))
    compare: tuple[str, ...] = DEFAULT_COMPARE
    focus: str | None = None
    alpha: float = 0.05
    bounds: dict[str, Any] = field(default_factory=dict)
    price: float | None = None
    price_metric: str = DEFAULT_PRICE_METRIC
    reward: str | None = None  # the unpriced metric (`score` before pricing; None: `score`), for the reward-vs-KL plot
    attached: str | None = None  # what `--scores` attached, as the report states it (None: nothing)
    tuning_k: int | None = None  # trials at which `tuning_cost` is compared (None: the smallest grid's midpoint)


def priced_score(runs: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """Add the drift-priced score column (`<score>-<price>*<price_metric>`, e.g.
    `eval/oracle_reward-0.001*eval/kl`) and point `settings.score` at it; nothing when no price is set.
    Maximising E[r] − τ·KL is the KL-regularised objective the DPO family derives from, and its best is
    the point of a method's reward–KL frontier where the frontier's slope is τ (the Lagrangian form of a
    KL budget), so every method is judged at the same exchange rate of reward for drift."""
    settings.reward = settings.score
    if not settings.price:  # None or 0: unpriced
        return runs
    if settings.price < 0:
        raise ValueError(f"sweep.price must be >= 0 (reward per unit of {settings.price_metric}), got {settings.price}")
    for metric in (settings.score, settings.price_metric):
        if metric not in runs.columns:
            raise KeyError(f"sweep.price needs the metric {metric!r}, which no run logged; metrics: "
                           f"{sorted(c for c in runs.columns if '/' in c)}")
    name = f"{settings.score}-{settings.price:g}*{settings.price_metric}"
    priced = (runs[settings.score] - settings.price * runs[settings.price_metric]).rename(name)
    runs = pd.concat([runs.drop(columns=[name], errors="ignore"), priced], axis=1)  # (one block: no fragmentation)
    settings.score = name
    return runs


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """The config as dotted keys (prefopt.train.loggers.flatten); lists become their string form (a CSV cell)."""
    return {k: str(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(tree).items()}


def loss_class(target: str) -> type | None:
    """The class a `loss._target_` names, or None if it cannot be imported."""
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception:  # noqa: BLE001 - any import failure means "unknown"
        return None


def _method(run_dir: Path, config: dict[str, Any]) -> str:
    """The config's `method` (a label a study's point may set, e.g. `rmipo_marginal_reference`), else
    the loss config's name from Hydra's record of the job, else the loss class's `name`."""
    if config.get("method"):
        return str(config["method"])
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        choice = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.loss")
        if choice:
            return str(choice)
    target = str((config.get("loss") or {}).get("_target_", "unknown"))
    cls = loss_class(target)
    return str(getattr(cls, "name", None) or target.rsplit(".", 1)[-1].lower())


def _finished_at(path: Path, record: dict[str, Any]) -> float:
    """When the run ended (Unix seconds): results.json's `finished_at`, or for runs written before it
    was recorded, the file's modification time (the file is written once, as the run ends)."""
    return round(float(record.get("finished_at") or path.stat().st_mtime), 1)


def _generator(run_dir: Path, record: dict[str, Any]) -> str | None:
    """The run's name on a leaderboard: results.json `info.generations.generator`, or for runs written
    before it was recorded there, the first record of its generations.json; None without generations."""
    recorded = ((record.get("info") or {}).get("generations") or {}).get("generator")
    if recorded:
        return str(recorded)
    path = run_dir / "generations.json"
    try:
        first = json.loads(path.read_text())[0] if path.is_file() else {}
    except (OSError, ValueError, IndexError, KeyError):
        return None
    return str(first["generator"]) if isinstance(first, dict) and first.get("generator") else None


def load_runs(source: str | Path) -> pd.DataFrame:
    """Every run of a multirun folder (any depth), or the runs.csv that `analyze` wrote."""
    source = Path(source)
    if source.is_file():
        return pd.read_csv(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist: pass a multirun folder (python src/run.py -m ...)")
    files = sorted(source.rglob("results.json"))
    if not files:
        raise FileNotFoundError(
            f"no results.json under {source}: pass the folder a multirun wrote (hydra.sweep.dir)"
        )
    rows = []
    for path in files:
        run = str(path.parent.relative_to(source))
        record = read_results(path)
        if record is None:
            rows.append({"run": run, "status": "unreadable", "error": f"cannot parse {path}", "method": "?"})
            continue
        config = record.get("config") or {}
        row: dict[str, Any] = {
            "run": run,
            "status": record.get("status", "unknown"),
            "error": record.get("error"),
            "method": _method(path.parent, config),
            "seed": record.get("seed", config.get("seed")),
            "wall_time_s": record.get("wall_time_s"),
            "finished_at": _finished_at(path, record),
        }
        generator = _generator(path.parent, record)
        if generator:
            row["generator"] = generator
        row.update({k: v for k, v in (record.get("metrics") or {}).items() if "/" in k})
        row.update({k: v for k, v in flat_config(config).items() if k not in RESERVED and not k.startswith("paths.")})
        rows.append(row)
    return pd.DataFrame(rows)


def config_columns(runs: pd.DataFrame) -> list[str]:
    """Flattened config keys: the columns that are neither reserved nor metrics (metrics contain '/')."""
    return [c for c in runs.columns if c not in RESERVED and "/" not in c]


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "completed"]


def swept_keys(runs: pd.DataFrame, method: str | None = None) -> list[str]:
    """Config keys whose value differs between the completed runs (of `method`): the axes of that
    method's grid, e.g. ["loss.beta", "optim.lr"]; the seed and the study's own bookkeeping (`sweep.*`,
    e.g. the grid positions sweep.beta_step) are not axes. Nor is a copy of an axis: a key equal to
    a shallower one in every run (`optim.optimizer.lr`, which conf/train.yaml sets to `${optim.lr}`), nor a
    key missing from some runs with one value in the others: a setting added to the config after those
    runs (e.g. runs of a study carried into one run later, `analyze --carry`)."""
    done = completed(runs)
    if method is not None:
        done = done[done["method"] == method]
    keys, columns = [], []
    for key in sorted(config_columns(done), key=lambda k: k.count(".")):  # stable: config order within a depth
        if key == "seed" or key.startswith("sweep."):
            continue
        column = done[key].astype(str)
        if done[key].dropna().astype(str).nunique() < 2:  # one value, or one value and "not yet a setting"
            continue
        if not any(column.equals(seen) for seen in columns):
            keys.append(key)
            columns.append(column)
    return keys


def study_settings(runs: pd.DataFrame, unnamed: str = "study", **overrides: Any) -> StudySettings:
    """The settings from the runs' `sweep.*` config (set by conf/sweep/<study>.yaml); a keyword that
    is not None wins over them; `unnamed` names a study whose runs have no `sweep.name`."""
    def first(column: str) -> Any:
        if column not in runs.columns:
            return None
        values = runs[column].dropna()
        return values.iloc[0] if len(values) else None

    def section(prefix: str) -> dict[str, Any]:
        found = {c[len(prefix):]: first(c) for c in runs.columns if c.startswith(prefix)}
        return {k: v for k, v in found.items() if v is not None}

    names = list(dict.fromkeys(runs["sweep.name"].dropna().astype(str))) if "sweep.name" in runs else []
    settings = StudySettings(
        name=" + ".join(names) or unnamed,
        score=str(first("sweep.score") or DEFAULT_SCORE),
        tolerance=float(first("sweep.tolerance") if first("sweep.tolerance") is not None else DEFAULT_TOLERANCE),
        defaults=section("sweep.defaults."),
        window={k: float(v) for k, v in section("sweep.window.").items()} or dict(DEFAULT_WINDOW),
        compare=tuple(_listed(first("sweep.compare")) or DEFAULT_COMPARE),
        focus=str(first("sweep.focus")) if first("sweep.focus") is not None else None,
        alpha=float(first("sweep.alpha") if first("sweep.alpha") is not None else 0.05),
        bounds={k: _listed(v) for k, v in section("sweep.bounds.").items()},
        price=float(first("sweep.price")) if first("sweep.price") is not None else None,
        price_metric=str(first("sweep.price_metric") or DEFAULT_PRICE_METRIC),
        tuning_k=int(first("sweep.tuning_k")) if first("sweep.tuning_k") is not None else None,
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def _listed(value: Any) -> list[Any]:
    """A list config value as flat_config wrote it ("['tuned', 'mean_regret']", "[0, None]"), parsed."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    import ast

    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        parsed = [part.strip() for part in str(value).strip("[]").split(",") if part.strip()]
    return list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]


def default_point(runs: pd.DataFrame, method: str, keys: list[str], settings: StudySettings) -> dict | None:
    """The grid point an untuned user of `method` would run: each `loss.<arg>` at the loss class's
    default, every other swept key at `settings.defaults`; None when some key has no default."""
    rows = runs[runs["method"] == method]
    targets = rows["loss._target_"].dropna() if "loss._target_" in rows else pd.Series(dtype=str)
    cls = loss_class(str(targets.iloc[0])) if len(targets) else None
    params = inspect.signature(cls.__init__).parameters if cls else {}
    point = {}
    for key in keys:
        if key.startswith("loss.") and key[5:] in params:
            value = params[key[5:]].default
            if value is inspect.Parameter.empty:
                return None
        elif key in settings.defaults:
            value = settings.defaults[key]
        else:
            return None
        point[key] = value
    return point


def load_curves(source: str | Path, runs: pd.DataFrame, metrics: tuple[str, ...] = CURVE_METRICS) -> pd.DataFrame:
    """Per-step training metrics (`metrics`) of the completed runs that logged them: columns `run`,
    `step` and the metrics; from each run's csv/metrics.csv, or from the curves.csv `analyze` wrote."""
    source = Path(source)
    if source.is_file():
        return pd.read_csv(source)
    frames = []
    for run in completed(runs)["run"]:
        path = source / run / "csv" / "metrics.csv"
        if not path.exists():
            continue
        table = pd.read_csv(path)
        present = [m for m in metrics if m in table.columns]
        if not present or "step" not in table.columns:
            continue
        summary = table.filter(like="eval/").notna().any(axis=1)  # the end-of-run summary row (logged at step 0)
        table = table.loc[~summary, ["step", *present]].dropna(subset=present, how="all")
        frames.append(table.assign(run=run))
    if not frames:
        return pd.DataFrame(columns=["run", "step", *metrics])
    curves = pd.concat(frames, ignore_index=True)
    return curves[["run", "step", *[c for c in curves.columns if c not in ("run", "step")]]]


def load_study(
    source: str | Path, methods: list[str] | None = None, scores: list[str | Path] | None = None,
    carry: list[str] | None = None, **overrides: Any
) -> tuple[pd.DataFrame, pd.DataFrame, StudySettings]:
    """(runs, curves, settings) of a multirun folder or of a runs.csv written by `analyze` (its
    curves.csv beside it), with the runs of each `carry` source appended (`with_carried`), the metrics
    of the `scores` files attached (prefopt.analysis.scores), keeping only `methods` when given;
    `overrides` (score=..., tolerance=...) win over the sweep's settings, which come from `source`."""
    source = Path(source)
    runs = load_runs(source)
    curves_source = source.parent / "curves.csv" if source.is_file() else source
    curves = load_curves(curves_source, runs) if curves_source.exists() else pd.DataFrame()
    for spec in carry or ():
        runs, curves = with_carried(runs, curves, spec, source)
    attached = None
    if scores:
        runs, attached = attach_scores(runs, list(scores), source)  # before `methods`: every row has its run
    if methods:
        unknown = sorted(set(methods) - set(runs["method"]))
        if unknown:
            raise ValueError(f"no runs of method(s) {unknown} under {source}; methods: {sorted(set(runs['method']))}")
        runs = runs[runs["method"].isin(methods)].reset_index(drop=True)
    if not curves.empty:
        curves = curves[curves["run"].isin(runs["run"])].reset_index(drop=True)
    settings = study_settings(runs, unnamed=study_title(source), **overrides)
    settings.attached = attached
    return priced_score(runs, settings), curves, settings


def with_carried(runs: pd.DataFrame, curves: pd.DataFrame, spec: str, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`runs` and `curves` with the runs of another study appended: `spec` is `SOURCE` (a multirun folder
    or a runs.csv) or `SOURCE:METHOD,METHOD` (only those methods of it), e.g. a committed study's runs
    of the methods whose code has not changed since. A method absent from SOURCE, or a run name already
    in `source`, is a ValueError naming them."""
    path_text, _, names = str(spec).rpartition(":") if ":" in str(spec) else (str(spec), "", "")
    path, methods = Path(path_text), [m for m in names.split(",") if m]
    extra = load_runs(path)
    if methods:
        unknown = sorted(set(methods) - set(extra["method"]))
        if unknown:
            raise ValueError(f"--carry {spec}: no runs of method(s) {unknown} in {path}; "
                             f"methods there: {sorted(set(extra['method']))}")
        extra = extra[extra["method"].isin(methods)]
    clash = sorted(set(extra["run"]) & set(runs["run"]))
    if clash:
        raise ValueError(f"--carry {spec}: {len(clash)} run(s) are in {source} as well, e.g. {clash[0]}: "
                         "carry only the other methods (SOURCE:METHOD,METHOD)")
    curves_path = path.parent / "curves.csv" if path.is_file() else path
    extra_curves = load_curves(curves_path, extra) if curves_path.exists() else pd.DataFrame()
    if not extra_curves.empty:
        extra_curves = extra_curves[extra_curves["run"].isin(extra["run"])]
    frames = [c for c in (curves, extra_curves) if not c.empty]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return pd.concat([runs, extra], ignore_index=True), curves


HYDRA_TIME = re.compile(r"\d{2}-\d{2}-\d{2}")  # Hydra's default sweep folder: multirun/<date>/<H-M-S>


def study_title(source: str | Path) -> str:
    """The name of a study without `sweep.name`: its folder's (a runs.csv's folder), with the date
    folder above when the folder is Hydra's default time of day (`2024-05-01/12-00-00`)."""
    folder = Path(source).resolve()
    folder = folder.parent if folder.suffix == ".csv" else folder
    if HYDRA_TIME.fullmatch(folder.name) and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or "study"


def learning_rates(runs: pd.DataFrame) -> dict[str, str]:
    """Each method's `optim.lr` as the report states it: "0.0001", or "several: 3e-05, 0.0001" when its
    completed runs use more than one; "–" where the runs do not record it."""
    done = completed(runs)
    rates = {}
    for method, rows in done.groupby("method", sort=True):
        values = sorted(set(pd.to_numeric(rows["optim.lr"], errors="coerce").dropna())) if "optim.lr" in rows else []
        shown = [f"{v:g}" for v in values]
        rates[method] = "–" if not shown else shown[0] if len(shown) == 1 else "several: " + ", ".join(shown)
    return rates


def resolve_study(value: str | Path | None, default: Path) -> Path:
    """The study a notebook is pointed at (`PREFOPT_STUDY`): `default` when unset; an absolute path as
    it is; a relative one from the directory the command ran in (the shell's `PWD`: a notebook's kernel
    runs in notebooks/), else the current directory, else the repository root (`default`'s). Raises
    FileNotFoundError naming the places looked in."""
    if value is None or not str(value).strip():
        return default
    path = Path(str(value).strip()).expanduser()
    if path.is_absolute():
        return path
    root = next((p for p in default.parents if (p / "src" / "prefopt").is_dir()), Path.cwd())
    bases = [Path(os.environ["PWD"])] if os.environ.get("PWD") else []
    bases = list(dict.fromkeys([*bases, Path.cwd(), root]))
    for base in bases:
        if (base / path).exists():
            return (base / path).resolve()
    raise FileNotFoundError(f"PREFOPT_STUDY={value}: not found in {', '.join(str(b) for b in bases)}; "
                            "give a multirun folder or a runs.csv, relative to where the command runs or absolute")
