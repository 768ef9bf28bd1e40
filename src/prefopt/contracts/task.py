"""The task contract (no prefopt imports): what a preference-data source is and hands the run.

`Task`: a source constructed from `cfg.data.source`, cheap until `build(start, model_cfg, cache_root)`;
`TaskArtifacts`: what it builds; `StartNeeds`: what it declares about the policy a run on it starts from;
`Start`: what the run starts from, chosen once by `prefopt.models.choose.choose_start` and kept in the run
plan (`prefopt.config.plan`). The embedded tasks (prefopt.tasks) and the user-file source
(prefopt.data.source) implement `Task`. Exercised by `pytest tests/tasks tests/data/test_file_source.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

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


@dataclass(frozen=True)
class Start:
    """What the run starts from.

    kind: "task" (the SFT model the task builds, from scratch with `architecture`), "path" (`model.path`:
        a HF folder or hub id), "gguf" (`model.gguf`, converted once) or "tiny" (a fresh tiny model of
        `architecture` with a tokenizer trained on the data's text).
    architecture: `build_tiny` settings for "task" and "tiny" (model.tiny with the task's keys over it).
    """

    kind: str
    architecture: Optional[dict[str, Any]] = None


class Task(ABC):
    """A preference-data source. Constructed from `cfg.data.source`; cheap until `build`."""

    name: str = "task"
    needs: StartNeeds = StartNeeds()  # the model config's own policy starts runs on it (user files)

    @abstractmethod
    def build(self, start: Start, model_cfg: Any, cache_root: Path) -> TaskArtifacts:
        """Build (or load from the cache) everything the run needs, for the run's `start` (a `Start`, chosen
        once by `prefopt.models.choose.choose_start`; the task never chooses it again)."""
