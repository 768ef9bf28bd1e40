"""What the embedded tasks share: `Built` (a cache build that says whether it ran), `mean`, the pair-sampling
checks and `load_pairs_split`.

The interface every preference-data source implements (`Task`, `TaskArtifacts`, `StartNeeds`) is a contract,
in `prefopt.contracts.task`; it is re-exported here for the code that imports it from this module. The run
plan (`prefopt.config.plan`) constructs `cfg.data.source` and chooses the start once; the run calls
`build(start, model_cfg, cache_root)` once per sweep worker. Exercised by `pytest tests/tasks
tests/data/test_file_source.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from prefopt.contracts.task import Oracle, Row, StartNeeds, Task, TaskArtifacts  # noqa: F401 (re-exported)
from prefopt.errors import CacheError


class Built:
    """A cache build function (for `prefopt.store.cache.cached_dir`) that remembers whether it ran, so the
    log says "built in 12s" only when this run built the artifact and "cached (<folder>)" otherwise."""

    def __init__(self, build: Callable[[Path], Any]) -> None:
        self.build, self.ran = build, False

    def __call__(self, out: Path) -> Any:
        self.ran = True
        return self.build(out)

    def origin(self, seconds: float, folder: Path) -> str:
        return f"built in {seconds:.0f}s" if self.ran else f"cached ({folder})"


def mean(xs: list[float]) -> float:
    """Arithmetic mean; NaN for no values (a statistic of an empty sample, recorded as such)."""
    return sum(xs) / len(xs) if xs else float("nan")


def check_pair_sampling(samples_per_prompt: int, eval_fraction: float) -> None:
    """The constructor checks every task that samples its own pairs shares."""
    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be at least 2, got {samples_per_prompt}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")


def load_pairs_split(pairs_file: Path, eval_fraction: float,
                     expected: int | None = None) -> tuple[list[Row], list[Row]]:
    """Rows of a cached pairs.jsonl, split by prompt: the pairs of the last `eval_fraction` of the
    prompts (in file order) are the eval rows, so no prompt is in both splits. `expected`: the pair
    count its builder recorded; a file that is unreadable or holds another count is a CacheError."""
    try:
        with open(pairs_file, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
    except (OSError, ValueError) as e:
        raise CacheError(f"{pairs_file} is unreadable ({type(e).__name__}: {e}); delete its folder to "
                         "rebuild it") from None
    if expected is not None and len(rows) != expected:
        raise CacheError(f"{pairs_file} holds {len(rows)} pairs, but {expected} were built; delete its folder "
                         "to rebuild it")
    prompts_in_order = list(dict.fromkeys(r["prompt"] for r in rows))
    n_held = round(eval_fraction * len(prompts_in_order))
    held = set(prompts_in_order[len(prompts_in_order) - n_held:]) if n_held else set()
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]
