"""The study report on W&B: `python src/analyze.py DIR --wandb` logs what `analyze` wrote as one
`job_type=study` run in the runs' project and group, so the dashboard holds the verdicts beside the
runs: the per-method table (`study/methods`), the pairwise comparisons (`study/pairwise`), the grid
(`study/grid`), the expected best after k random trials per method and k (`study/tuning_cost`; the
figure `plots/tuning_cost`), the per-run table with any scores attached by `--scores` (`study/runs`), the report text
(`study/report`) and each figure (`plots/<name>`); the run's config names the score files.

Offline unless `WANDB_MODE=online` (`wandb sync <out>/wandb/offline-run-*` uploads it). The run's id
is fixed by the report folder, so analysing again replaces the study run instead of adding one.
Exercised by `pytest tests/test_wandb_records.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from prefopt.train.loggers import run_id
from prefopt.run.results import read_results

TABLES = {"sensitivity.csv": "study/methods", "pairwise.csv": "study/pairwise", "grid.csv": "study/grid",
          "runs.csv": "study/runs", "tuning_cost.csv": "study/tuning_cost"}


def runs_identity(source: str | Path) -> dict[str, Any]:
    """{project, group, entity} the runs under `source` logged to (their results.json `info.wandb`);
    for runs without W&B or a runs.csv: project `prefopt`, group the folder's name."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    for path in sorted(folder.rglob("results.json")) if source.is_dir() else []:
        record = read_results(path) or {}
        wandb_info = (record.get("info") or {}).get("wandb")
        if wandb_info:
            settings = ((record.get("config") or {}).get("logger") or {}).get("wandb") or {}
            return {"project": wandb_info.get("project") or "prefopt", "group": wandb_info.get("group"),
                    "entity": settings.get("entity")}
    return {"project": "prefopt", "group": folder.resolve().name, "entity": None}


def _table(path: Path) -> Any:
    import wandb

    frame = pd.read_csv(path)
    frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == object})  # one type per column
    return wandb.Table(dataframe=frame)


def log_study(source: str | Path, written: dict[str, Path], name: str = "study",
              scores: list[str | Path] | None = None) -> Path:
    """Log the report files in `written` (name -> path, as `analyze` returns) as one study run, `scores`
    (the `--scores` files) in its config; returns the run's local folder."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    out = Path(written["sensitivity.csv"]).parent
    where = runs_identity(source)
    run = wandb.init(project=where["project"], entity=where["entity"], group=where["group"], job_type="study",
                     name=f"{name}-{where['group']}", id=run_id(out) + "-study", resume="allow", dir=str(out),
                     config={"source": str(source), "report": str(out), "scores": [str(f) for f in scores or []]},
                     mode="online" if os.environ["WANDB_MODE"] == "online" else "offline")
    row: dict[str, Any] = {key: _table(written[file]) for file, key in TABLES.items() if file in written}
    for file, path in written.items():
        if file.endswith(".png"):
            row[f"plots/{Path(file).stem}"] = wandb.Image(str(path))
    if "sensitivity.md" in written:
        row["study/report"] = wandb.Html(f"<pre>{Path(written['sensitivity.md']).read_text()}</pre>")
    run.log(row)
    run.summary.update({"status": "completed"})
    folder = Path(run.dir).parent
    run.finish()
    return folder
