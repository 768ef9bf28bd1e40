"""Checking the composed config before anything loads, reporting every problem at once.

`validate_config` walks the config against the schema of the plain groups (prefopt/config/schema.py:
unknown keys with the valid ones named, wrong types, values out of range), the trainer against
`lightning.Trainer`'s arguments, and the `_target_` components (loss, data.source, optim.optimizer and
scheduler) against their constructors; an unset `???` value is named too. All problems are raised
together as one `ConfigError`, one line each. Called first thing by `prefopt.run.runner` (before
preflight); `override_problems` by `src/run.py` on the command line, before Hydra composes;
`check_required` (unset values only) is the same check of `???` values on its own. Exercised by `pytest tests/test_validate.py tests/test_schema.py`.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt.config.components import component_problems, raise_problems
from prefopt.config.schema import RunSchema, accepts, describe, spec_of, subschema
from prefopt.errors import ConfigError

UNRESOLVED = type("Unresolved", (), {"__repr__": lambda self: "<unresolved>"})()  # `???` or an interpolation
# that cannot be resolved here (e.g. ${hydra:...} outside a Hydra job): not checked, `???` is reported apart


def _plain(node: Any, key: Any) -> Any:
    """node[key] resolved, as plain Python; UNRESOLVED (also inside lists and mappings) where it cannot be."""
    try:
        value = node[key]
    except OmegaConfBaseException:
        return UNRESOLVED
    if isinstance(value, DictConfig):
        return {k: _plain(value, k) for k in value.keys()}
    if isinstance(value, ListConfig):
        return [_plain(value, i) for i in range(len(value))]
    return value


def _resolved(tree: Any) -> bool:
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else ()
    return tree is not UNRESOLVED and all(_resolved(v) for v in items)


def _unknown(prefix: str, key: str, names: list[str]) -> str:
    where = f"the `{prefix[:-1]}` group" if prefix else "the top level"
    return f"{prefix}{key} is not a setting of {where}; valid keys: {', '.join(names)}"


def schema_problems(values: dict[str, Any], schema: type, prefix: str = "") -> list[str]:
    """Every unknown key, wrong type and out-of-range value of `values` (a group's resolved settings)."""
    names = [f.name for f in dataclasses.fields(schema)]
    problems = []
    for key, value in values.items():
        if key not in names:
            problems.append(_unknown(prefix, key, names))
        elif not _resolved(value) and not isinstance(value, dict):
            continue
        elif (sub := subschema(schema, key)) is not None and isinstance(value, dict):
            problems += schema_problems(value, sub, f"{prefix}{key}.")
        elif not accepts(spec := spec_of(schema, key), value):  # a `_target_` node: only that it is a mapping
            problems.append(f"{prefix}{key}={value!r} is not allowed; it must be {describe(spec)}")
    return problems


def trainer_problems(values: dict[str, Any]) -> list[str]:
    """Keys that are not lightning.Trainer arguments, and a max_steps that is neither > 0 nor -1."""
    import lightning as L

    valid = [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]
    problems = [f"trainer.{key} is not a lightning.Trainer argument; see `python -c "
                f"\"import lightning; help(lightning.Trainer)\"` for the valid ones"
                for key in values if key not in valid and key != "_target_"]
    steps = values.get("max_steps", -1)
    is_int = isinstance(steps, int) and not isinstance(steps, bool)
    if steps is not UNRESOLVED and not (is_int and (steps > 0 or steps == -1)):
        problems.append(f"trainer.max_steps={steps!r} is not allowed; it must be an integer > 0 (or -1: epochs)")
    return problems


def _length_problems(data: dict[str, Any]) -> list[str]:
    prompt, total = data.get("max_prompt_length"), data.get("max_length")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (prompt, total)) and prompt >= total:
        return [f"data.max_prompt_length={prompt} must be below data.max_length={total} (prompt + response "
                "tokens), or no response token would fit"]
    return []


def _optim_problems(cfg: DictConfig) -> list[str]:
    from prefopt.train.optim import optim_factories

    try:
        optim_factories(cfg.optim)
    except ConfigError as err:
        return [str(err)]
    return []


def _components(cfg: DictConfig, tree: dict[str, Any]) -> list[str]:
    """The `_target_` components, each against its constructor (skipped while a value is unresolved)."""
    problems, data = [], cfg.get("data") or {}
    for group, node, values in (("loss", cfg.get("loss"), tree.get("loss")),
                                ("data.source", data.get("source"), (tree.get("data") or {}).get("source"))):
        if isinstance(node, DictConfig) and _resolved(values):
            problems += component_problems(node, group)
    if isinstance(cfg.get("optim"), DictConfig) and _resolved(tree.get("optim")):
        problems += _optim_problems(cfg)
    return problems


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the config, one line each: unset values, then the groups in the config's order."""
    problems = missing_problems(cfg)
    tree = {key: _plain(cfg, key) for key in cfg.keys()}
    problems += schema_problems(tree, RunSchema)
    if isinstance(tree.get("trainer"), dict):
        problems += trainer_problems(tree["trainer"])
    if isinstance(tree.get("data"), dict):
        problems += _length_problems(tree["data"])
    return problems + _components(cfg, tree)


def validate_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every unset mandatory value, unknown key, wrong type and out-of-range
    value of the config (plain groups, trainer and `_target_` components)."""
    raise_problems(config_problems(cfg))


def _missing(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???` (unresolved interpolations are left alone)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    found = []
    for key, value in items:
        found += [f"{prefix}{key}"] if value == "???" else _missing(value, f"{prefix}{key}.")
    return found


def missing_problems(cfg: DictConfig) -> list[str]:
    """One line per mandatory value (`???` in its yaml, e.g. data.path of data=jsonl) left unset."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    return [f"{key} is required and has no value: add {key}=... to the command" for key in missing]


def check_required(cfg: DictConfig) -> None:
    """Unset mandatory values named, one line each, before anything resolves the config (which would fail
    with OmegaConf's traceback)."""
    raise_problems(missing_problems(cfg))


def override_problems(argv: list[str], conf_dir: str | Path) -> list[str]:
    """One line per command-line override of a plain group's key that the schema lacks (`data.bogus=1`),
    before Hydra composes (which would stop at the first with "could not override"). Group choices
    (`data=jsonl`, `experiment=...`), `hydra.*` and keys inside mappings or components are left to later."""
    groups = {p.name for p in Path(conf_dir).iterdir() if p.is_dir()}
    problems = []
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0]
        parts = key.split(".")
        if "=" not in arg or "/" in key or parts[0] == "hydra" or (len(parts) == 1 and parts[0] in groups):
            continue
        problems += _path_problems(parts, RunSchema)
    return list(dict.fromkeys(problems))


def _path_problems(parts: list[str], schema: type) -> list[str]:
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(schema)]
        if part not in names:
            return [_unknown("".join(f"{p}." for p in parts[:depth]), part, names)]
        if (sub := subschema(schema, part)) is None:
            return []
        schema = sub
    return []
