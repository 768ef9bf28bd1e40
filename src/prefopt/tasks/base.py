"""The interface every preference-data source implements (embedded tasks and user files).

`run.py` instantiates `cfg.data.source` and calls `build(model_cfg, cache_root)` once per run. A task
with an oracle also returns held-out prompts and a reward function, which `prefopt.eval.evaluate` uses at the
end of the run; a plain preference file returns rows only. A task declares what it needs of the starting
policy in `needs` (a `StartNeeds`); `prefopt.models.choose.choose_start` reads it with the model config.
Exercised by `pytest tests/tasks tests/data/test_file_source.py`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from prefopt.errors import CacheError

Row = dict[str, Any]  # {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
Oracle = Callable[[list[str], list[str]], list[float]]  # (prompts, responses) -> gold rewards


@dataclass
class TaskArtifacts:
    """What a source hands the run.

    policy: HF folder (model + tokenizer) of the starting policy the task built (its SFT model, when
        `prefopt.models.choose.choose_start` chose the task's own start), else None.
    train_rows / eval_rows: preference rows in the prompt/chosen/rejected format.
    corpus: texts to build a tokenizer from when the model needs one built (model=tiny on user data).
    eval_prompts: held-out prompt strings for the generation evaluation (empty without an oracle).
    oracle: gold reward of (prompt, response) strings, or None.
    generation: sampling settings for evaluation (max_new_tokens, temperature, ...).
    info: facts recorded in results.json (artifact keys, drop counts, data sizes).
    marginal_prefix: text that stands for "no prompt" to this task's policy, put after the start token
        in RMiPO's marginal pass (the sort policy saw prompt-less examples as BOS '>' response).
    responses_end_with_eos: False when string responses are continuations cut at a length (IMDb), so
        no EOS is appended and scored that the sampler never produced.
    """

    train_rows: list[Row]
    eval_rows: list[Row]
    policy: Optional[Path] = None
    corpus: Optional[Callable[[], Iterable[str]]] = None
    eval_prompts: list[str] = field(default_factory=list)
    oracle: Optional[Oracle] = None
    generation: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    marginal_prefix: str = ""
    responses_end_with_eos: bool = True


@dataclass(frozen=True)
class StartNeeds:
    """What a task declares about the policy a run on it starts from. `prefopt.models.choose.choose_start`
    reads it with the model config and decides what loads; nothing else decides.

    builds_start: for a tiny model config (`model.tiny`) the task builds its own tokenizer and SFT starting
        policy and returns its folder as `TaskArtifacts.policy` (sort, imdb).
    takes_pretrained: a pretrained model (`model.path`, `model.gguf`) can start runs on this task (False:
        sort, whose character tokenizer only its own policy reads).
    architecture: keys the task sets over `model.tiny` for the model it trains (imdb: a larger one).
    instead: the end of the one-line error for a model config the task does not take: what would work.
    """

    builds_start: bool = False
    takes_pretrained: bool = True
    architecture: dict[str, Any] = field(default_factory=dict)
    instead: str = ""


class Task(ABC):
    """A preference-data source. Constructed from `cfg.data.source`; cheap until `build`."""

    name: str = "task"
    needs: StartNeeds = StartNeeds()  # the model config's own policy starts runs on it (user files)

    @abstractmethod
    def build(self, model_cfg: Any, cache_root: Path) -> TaskArtifacts:
        """Build (or load from the cache) everything the run needs."""


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
