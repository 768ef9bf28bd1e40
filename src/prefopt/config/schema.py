"""The schema of every plain config group: which keys exist, their types and their allowed ranges.

One dataclass per group (top level, data, model, optim, eval, checkpoint, logger, paths), listed in
`GROUPS`. A field's annotation is its type (`Optional[...]`: null is
allowed); `setting(...)` adds its range (`gt`/`ge`/`lt`/`le`), its `choices`, a list's `length`, or an
odd `check`; the sentence a user reads ("an integer > 0") is derived from them by `describe`. `advised`
is softer: the usual (low, high) of a value, outside which the run starts with a warning
(`advised_range`, read by prefopt.config.validate.advice). Defaults live in the yaml (conf/), never
here: every field is `???`.

The yaml files do not extend these dataclasses in their defaults lists: merging them would add every
key an option leaves out (model.gguf to model=tiny, data.path to data=sort, ...) to the composed config,
which changes the configs runs record and resume compares, and Hydra would stop at the first mistake.
Instead `prefopt.config.validate` walks the composed config against them and reports every problem at
once. Components with a `_target_` (loss, data.source, optim.optimizer/scheduler) are checked against
their constructors, the trainer against `lightning.Trainer`. Exercised by `pytest tests/test_schema.py`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from omegaconf import MISSING

Bound = Optional[float]


def setting(*, gt: Bound = None, ge: Bound = None, lt: Bound = None, le: Bound = None, choices: tuple[Any, ...] = (),
            length: int | None = None, check: tuple[Callable[[Any], bool], str] | None = None,
            advised: tuple[float, float] | None = None) -> Any:
    """A schema field: no default (the yaml has it), with its range, choices, list length or own check, and
    the (low, high) it is usually set within (`advised`: outside it, a warning rather than an error)."""
    spec = dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices, length=length, check=check, advised=advised)
    return field(default=MISSING, metadata={k: v for k, v in spec.items() if v is not None and v != ()})


# ---------------------------------------------------------------------------------------------- the groups


@dataclass
class DataSchema:
    name: str = setting()
    path: Optional[str] = setting()
    max_length: int = setting(gt=0)
    max_prompt_length: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    eval_batch_size: int = setting(gt=0)
    strict: bool = setting()
    source: Optional[Dict[str, Any]] = setting()  # its `_target_`'s constructor is its schema
    effective_batch_size: Optional[int] = setting(gt=0)
    group_by_length: bool = setting()
    max_tokens_per_batch: Optional[int] = setting(gt=0)
    pack: Any = setting(choices=(True, False, "auto"))
    token_buckets: Any = setting(check=(  # prefopt/scoring/buckets.py
        lambda v: v in ("auto", True, False) or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
        "auto, true, false or an integer > 0"))


@dataclass
class ModelSchema:
    name: str = setting()
    path: Optional[str] = setting()
    lr: float = setting(gt=0)
    dtype: str = setting(choices=("float32", "float16", "bfloat16"))
    vocab_size: int = setting(gt=0)
    tiny: Optional[Dict[str, Any]] = setting()
    gguf: Optional[Dict[str, Any]] = setting()
    attn_implementation: Optional[str] = setting(check=(  # prefopt.models.load.ATTENTION_CHOICES
        lambda v: v in ("auto", "sdpa", "eager", "flex", "flex_attention", "flash_attention_2", "flash_attention_3")
        or "/" in v, "one of auto, sdpa, eager, flex, flex_attention, flash_attention_2, flash_attention_3, "
                     "a hub kernel (org/name)"))
    gradient_checkpointing: bool = setting()
    lora: Optional[Dict[str, Any]] = setting()
    disable_dropout: bool = setting()
    chunked_head: Any = setting(choices=(True, False, "auto"))  # prefopt/scoring/chunked_head.py
    compile: Any = setting(choices=(False, True, "reduce-overhead"))  # prefopt/train/compiling.py


@dataclass
class OptimSchema:
    # AdamW fine-tuning runs from 5e-7 (7-8B DPO: conf/model/mistral7b.yaml) to ~1e-3 (the tiny model);
    # above 1e-2 the tiny model's loss blows up (1e3 reached 5e7), below 1e-8 the weights barely move
    lr: float = setting(gt=0, advised=(1e-8, 1e-2))
    weight_decay: float = setting(ge=0)
    adam_betas: List[float] = setting(ge=0, lt=1, length=2)
    warmup_ratio: float = setting(ge=0, lt=1)
    min_lr_ratio: float = setting(ge=0, le=1)
    optimizer: Optional[Dict[str, Any]] = setting()  # prefopt/train/optim.py checks their targets
    scheduler: Optional[Dict[str, Any]] = setting()


@dataclass
class EvalSchema:
    batch_size: int = setting(gt=0)
    n_samples_logged: int = setting(ge=0)
    generate: bool = setting()
    cache_start: bool = setting()
    generate_prompts_file: Optional[str] = setting()  # checked by prefopt.eval.prompts_file (validate.py)
    generate_max_prompts: int = setting(gt=0)
    generate_max_new_tokens: int = setting(gt=0)
    generate_temperature: float = setting(ge=0)
    every_n_steps: int = setting(ge=0)
    during_training_prompts: int = setting(gt=0)
    share_timeout_s: float = setting(gt=0)


@dataclass
class CheckpointSchema:
    enabled: bool = setting()
    every_n_train_steps: int = setting(ge=0)
    keep: int = setting(check=(lambda v: v > 0 or v == -1, "an integer > 0, or -1 to keep all"))


@dataclass
class LoggerSchema:
    csv: bool = setting()
    wandb: Optional[Dict[str, Any]] = setting()


@dataclass
class GpuJobsSchema:
    """conf/hydra/launcher/gpu_jobs.yaml: several sweep jobs per GPU (prefopt/config/gpu_jobs.py)."""

    jobs_per_gpu: int = setting(gt=0)
    gpus: Any = setting(check=(lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                               "a number of GPUs >= 0, or auto (every visible GPU)"))


@dataclass
class PathsSchema:
    cache_dir: str = setting()
    lock_timeout_s: float = setting(ge=0)


@dataclass
class RunSchema:
    """The top level of conf/train.yaml."""

    seed: int = setting(ge=0)
    threads: int = setting(gt=0)
    tags: List[str] = setting()
    objective: str = setting()
    method: Optional[str] = setting()
    ckpt_path: Optional[str] = setting()
    loss: Optional[Dict[str, Any]] = setting()  # its `_target_`'s constructor is its schema (prefopt/losses)
    model: Optional[ModelSchema] = setting()
    data: Optional[DataSchema] = setting()
    trainer: Optional[Dict[str, Any]] = setting()  # lightning.Trainer's arguments
    logger: Optional[LoggerSchema] = setting()
    judge: Optional[Dict[str, Any]] = setting()  # its `_target_`'s constructor is its schema (prefopt/eval/judge.py)
    optim: Optional[OptimSchema] = setting()
    eval: Optional[EvalSchema] = setting()
    checkpoint: Optional[CheckpointSchema] = setting()
    paths: Optional[PathsSchema] = setting()
    sweep: Optional[Dict[str, Any]] = setting()
    logp_cache: bool = setting()
    share_prompt: Any = setting(choices=(True, False, "auto"))
    check_finite_every_n_steps: int = setting(ge=1)  # prefopt/train/guards.py
    gpu_jobs: Optional[GpuJobsSchema] = setting()  # only with hydra/launcher=gpu_jobs


GROUPS: dict[str, type] = {"": RunSchema, "data": DataSchema, "model": ModelSchema, "optim": OptimSchema,
                           "eval": EvalSchema, "checkpoint": CheckpointSchema, "logger": LoggerSchema,
                           "paths": PathsSchema, "gpu_jobs": GpuJobsSchema}


# ------------------------------------------------------------------------------- reading a field's spec


@dataclass(frozen=True)
class Spec:
    """A field's type and limits, read from its annotation and `setting(...)` metadata."""

    base: Any  # int, float, bool, str, dict, list, Any, or a schema dataclass
    optional: bool
    item: Any  # a list's element type
    meta: typing.Mapping[str, Any]


def spec_of(schema: type, key: str) -> Spec:
    hint = typing.get_type_hints(schema)[key]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    item = typing.get_args(hint)[0] if origin is list else None
    meta = {f.name: f.metadata for f in dataclasses.fields(schema)}[key]
    return Spec(base=origin, optional=optional, item=item, meta=meta)


def advised_range(schema: type, key: str) -> tuple[float, float] | None:
    """The (low, high) a field is usually set within, or None."""
    return spec_of(schema, key).meta.get("advised")


def subschema(schema: type, key: str) -> type | None:
    """The dataclass of a nested group (`data` of the top level), or None."""
    base = spec_of(schema, key).base
    return base if dataclasses.is_dataclass(base) else None


# ---------------------------------------------------------------------------------- checking one value

_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), dict: ("a mapping", "mappings")}
_COUNTS = {1: "one", 2: "two", 3: "three"}


def _of_type(value: Any, base: Any) -> bool:
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if base in (bool, str, dict, list):
        return isinstance(value, base)
    if dataclasses.is_dataclass(base):
        return isinstance(value, dict)
    return True  # Any


_BOUNDS = (("gt", operator.gt, ">"), ("ge", operator.ge, ">="), ("lt", operator.lt, "<"), ("le", operator.le, "<="))


def _in_range(value: Any, meta: typing.Mapping[str, Any]) -> bool:
    return all(key not in meta or test(value, meta[key]) for key, test, _ in _BOUNDS)


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    """" > 0", " >= 0", " in [0, 1)": the field's bounds in words (an interval when it has two)."""
    low = next((k for k in ("gt", "ge") if k in meta), None)
    high = next((k for k in ("lt", "le") if k in meta), None)
    if low and high:
        return f" in {'(' if low == 'gt' else '['}{meta[low]:g}, {meta[high]:g}{')' if high == 'lt' else ']'}"
    return "".join(f" {sign} {meta[key]:g}" for key, _, sign in _BOUNDS if key in meta)


def accepts(spec: Spec, value: Any) -> bool:
    """Whether `value` (plain Python, resolved) is allowed by the field's type and limits."""
    if value is None:
        return spec.optional
    meta = spec.meta
    if "choices" in meta:
        return any(type(value) is type(c) and value == c for c in meta["choices"])
    if not _of_type(value, spec.base):
        return False
    if spec.base is list:
        items_ok = all(_of_type(v, spec.item or Any) and _in_range(v, meta) for v in value)
        return items_ok and meta.get("length") in (None, len(value))
    if "check" in meta:
        return bool(meta["check"][0](value))
    return _in_range(value, meta)


def describe(spec: Spec) -> str:
    """What the field allows, in words: "an integer > 0", "a number in [0, 1)", "a string or null"."""
    meta = spec.meta
    if "check" in meta:
        text = meta["check"][1]
    elif "choices" in meta:
        words = ["true" if c is True else "false" if c is False else str(c) for c in meta["choices"]]
        bools = any(isinstance(c, bool) for c in meta["choices"])
        text = f"{', '.join(words[:-1])} or {words[-1]}" if bools else f"one of {', '.join(words)}"
    elif spec.base is list:
        noun = _NOUNS.get(spec.item, ("anything", "values"))[1]
        count = meta.get("length")
        text = (f"{_COUNTS.get(count, count)} {noun}" if count else f"a list of {noun}") + _range_text(meta)
    elif spec.base in _NOUNS or dataclasses.is_dataclass(spec.base):
        text = _NOUNS.get(spec.base, _NOUNS[dict])[0] + _range_text(meta)
    else:
        text = "anything"
    return f"{text} or null" if spec.optional else text
