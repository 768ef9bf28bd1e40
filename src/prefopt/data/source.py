"""A preference dataset the user points at (`data=jsonl|ultrafeedback`, `data.path=...`) as a Task.

It reads and normalizes the rows (formats.py, rows.py), takes the eval rows from `eval_split` or,
without one, holds out a seeded `eval_fraction` of the rows, and offers the texts as a corpus for
building a tokenizer when the model needs one (model=tiny); it declares no `needs` of its own, so the model
config alone says what starts (prefopt.models.choose). It has no oracle: runs on it report
preference metrics (reward accuracy, margins), not gold rewards. Its info's `pin` (source settings that
read the same rows again: the first N rows, as many as it read) goes into every checkpoint, so a resume
reads the rows its checkpoint trained on even after rows were appended to the file (prefopt.train.resume).
Exercised by `pytest tests/data/test_file_source.py` and `python src/run.py data=jsonl data.path=FILE`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Optional

from prefopt.data.errors import DataError
from prefopt.data.formats import load_preference_rows
from prefopt.contracts.task import Task, TaskArtifacts


def row_texts(rows: list[dict]) -> Iterator[str]:
    """Every text in the rows: string fields, and the content of every message."""
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            value = row[key]
            if isinstance(value, str):
                yield value
            else:
                yield from (m["content"] for m in value)


def split_off(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, eval) of n rows with round(n * fraction) for eval, at least 1 when n >= 2 and
    fraction > 0, never all of them; both lists in the original order."""
    if not 0 <= fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {fraction}")
    n_eval = 0 if n < 2 or fraction == 0 else min(max(1, round(n * fraction)), n - 1)
    held = set(random.Random(seed).sample(range(n), n_eval))
    return [i for i in range(n) if i not in held], sorted(held)


class PreferenceFileSource(Task):
    """Rows from a .jsonl/.json/.parquet file, a `datasets` folder or a hub id (see formats.py)."""

    name = "file"

    def __init__(
        self,
        path: str,
        split: Optional[str] = "train",
        eval_split: Optional[str] = None,
        eval_fraction: float = 0.05,
        max_rows: Optional[int] = None,
        seed: int = 0,
        max_eval_rows: Optional[int] = None,
        strict: bool = False,
    ):
        if not path:
            raise DataError("data.path is not set: point it at a .jsonl/.json/.parquet file, a folder or a hub id")
        self.path, self.split, self.eval_split = str(path), split, eval_split
        self.eval_fraction, self.max_rows, self.max_eval_rows, self.seed = eval_fraction, max_rows, max_eval_rows, seed
        self.strict = strict

    def build(self, start: Any, model_cfg: Any, cache_root: Path) -> TaskArtifacts:
        rows, drops = load_preference_rows(self.path, self.split, self.max_rows, self.strict)
        drops = {"train": drops}
        pin = {"max_rows": len(rows) + sum(drops["train"].values())}  # raw rows read: the first ones
        if self.eval_split is not None:
            eval_rows, drops["eval"] = load_preference_rows(self.path, self.eval_split, self.max_eval_rows, self.strict)
            pin["max_eval_rows"] = len(eval_rows) + sum(drops["eval"].values())
            train_rows = rows
        else:
            train_idx, eval_idx = split_off(len(rows), self.eval_fraction, self.seed)
            train_rows, eval_rows = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
            eval_rows = eval_rows[: self.max_eval_rows] if self.max_eval_rows is not None else eval_rows
        every = train_rows + eval_rows
        return TaskArtifacts(
            train_rows=train_rows,
            eval_rows=eval_rows,
            corpus=lambda: row_texts(every),
            info={
                "rows": {"train": len(train_rows), "eval": len(eval_rows)},
                "drops": drops,
                "path": self.path,
                "split": self.split,
                "eval_split": self.eval_split,
                "pin": pin,
            },
        )
