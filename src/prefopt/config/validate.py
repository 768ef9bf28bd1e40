"""Checking the composed config before anything loads: keys, types and ranges of every plain group.

Components with a `_target_` (loss, data.source) are checked against their constructors by
`prefopt.config.components.build_component`; this file covers the rest (data, model, optim, eval, checkpoint,
trainer and the top level). Each problem is a `ConfigError` naming the key, the value and what is
allowed. Called first thing by `prefopt.run.runner`; exercised by `pytest tests/test_validate.py`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prefopt.errors import ConfigError

Check = tuple[Callable[[Any], bool], str]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


ANY: Check = (lambda v: True, "anything")
STR: Check = (lambda v: isinstance(v, str), "a string")
OPT_STR: Check = (lambda v: v is None or isinstance(v, str), "a string or null")
BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
BOOL_AUTO: Check = (lambda v: isinstance(v, bool) or v == "auto", "true, false or auto")
POS_INT: Check = (lambda v: _int(v) and v > 0, "an integer > 0")
NONNEG_INT: Check = (lambda v: _int(v) and v >= 0, "an integer >= 0")
OPT_POS_INT: Check = (lambda v: v is None or (_int(v) and v > 0), "an integer > 0 or null")
POS_NUM: Check = (lambda v: _num(v) and v > 0, "a number > 0")
NONNEG_NUM: Check = (lambda v: _num(v) and v >= 0, "a number >= 0")
RATIO: Check = (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)")
UNIT: Check = (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]")
BETAS: Check = (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v),
                "two numbers in [0, 1)")
DTYPE: Check = (lambda v: v in ("float32", "float16", "bfloat16"), "one of float32, float16, bfloat16")
NODE: Check = (lambda v: v is None or isinstance(v, dict), "a mapping or null")
STR_LIST: Check = (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings")

SCHEMA: dict[str, dict[str, Check]] = {
    "": {"seed": NONNEG_INT, "threads": POS_INT, "tags": STR_LIST, "objective": STR, "method": OPT_STR, "ckpt_path": OPT_STR,
         "loss": NODE, "model": NODE, "data": NODE, "trainer": NODE, "logger": NODE, "optim": NODE,
         "eval": NODE, "checkpoint": NODE, "paths": NODE, "sweep": NODE, "logp_cache": BOOL,
         "share_prompt": BOOL_AUTO},
    "data": {"name": STR, "path": OPT_STR, "max_length": POS_INT, "max_prompt_length": POS_INT,
             "batch_size": POS_INT, "eval_batch_size": POS_INT, "strict": BOOL, "source": NODE,
             "effective_batch_size": OPT_POS_INT, "group_by_length": BOOL, "max_tokens_per_batch": OPT_POS_INT},
    "model": {"name": STR, "path": OPT_STR, "lr": POS_NUM, "dtype": DTYPE, "vocab_size": POS_INT,
              "tiny": NODE, "gguf": NODE, "attn_implementation": OPT_STR, "gradient_checkpointing": BOOL,
              "lora": NODE, "disable_dropout": BOOL},
    "optim": {"lr": POS_NUM, "weight_decay": NONNEG_NUM, "adam_betas": BETAS, "warmup_ratio": RATIO,
              "min_lr_ratio": UNIT, "optimizer": NODE, "scheduler": NODE},  # the two: prefopt/train/optim.py
    "eval": {"batch_size": POS_INT, "n_samples_logged": NONNEG_INT, "generate": BOOL, "cache_start": BOOL,
             "generate_max_prompts": POS_INT, "generate_max_new_tokens": POS_INT, "generate_temperature": NONNEG_NUM},
    "checkpoint": {"enabled": BOOL, "every_n_train_steps": NONNEG_INT,
                   "keep": ((lambda v: _int(v) and (v > 0 or v == -1)), "an integer > 0, or -1 to keep all")},
    "logger": {"csv": BOOL, "wandb": NODE},
    "paths": {"cache_dir": STR, "lock_timeout_s": NONNEG_NUM},
}


def _check_group(values: dict[str, Any], group: str, rules: dict[str, Check]) -> None:
    prefix = f"{group}." if group else ""
    for key, value in values.items():
        if key not in rules:
            where = f"the `{group}` group" if group else "the top level"
            raise ConfigError(f"{prefix}{key} is not a setting of {where}; valid keys: {', '.join(rules)}")
        ok, allowed = rules[key]
        if not ok(value):
            raise ConfigError(f"{prefix}{key}={value!r} is not allowed; it must be {allowed}")


def _check_trainer(values: dict[str, Any]) -> None:
    import lightning as L

    valid = [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]
    for key in values:
        if key not in valid and key != "_target_":
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument; see `python -c "
                              f"\"import lightning; help(lightning.Trainer)\"` for the valid ones")
    steps = values.get("max_steps", -1)
    if not (_int(steps) and (steps > 0 or steps == -1)):
        raise ConfigError(f"trainer.max_steps={steps!r} is not allowed; it must be an integer > 0 (or -1: epochs)")


def _missing(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???` (unresolved interpolations are left alone)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    found = []
    for key, value in items:
        found += [f"{prefix}{key}"] if value == "???" else _missing(value, f"{prefix}{key}.")
    return found


def check_required(cfg: DictConfig) -> None:
    """A mandatory value (`???` in its yaml, e.g. data.path of data=jsonl) left unset, named in one line,
    before anything resolves the config (which would fail with OmegaConf's traceback)."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        also = f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{missing[0]} is required and has no value: add {missing[0]}=... to the command{also}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first unset mandatory value, unknown key, wrong type or out-of-range value."""
    check_required(cfg)
    tree = OmegaConf.to_container(cfg, resolve=True)
    for group, rules in SCHEMA.items():
        _check_group(tree.get(group) or {} if group else tree, group, rules)
    _check_trainer(tree.get("trainer") or {})
    data = tree.get("data") or {}
    if data.get("max_prompt_length") is not None and data.get("max_length") is not None:
        if data["max_prompt_length"] >= data["max_length"]:
            raise ConfigError(
                f"data.max_prompt_length={data['max_prompt_length']} must be below data.max_length="
                f"{data['max_length']} (prompt + response tokens), or no response token would fit"
            )
