"""Checking the composed config before anything loads, reporting every problem at once.

`validate_config` walks the config against the schema of the plain groups (prefopt/config/schema.py:
unknown keys with the valid ones named, wrong types, values out of range), the trainer against
`lightning.Trainer`'s arguments, and the `_target_` components (loss, data.source, optim.optimizer and
scheduler) against their constructors; an unset `???` value is named too. All problems are raised
together as one `ConfigError`, one line each. A value that is allowed but far from what is usually used
(`loss.beta` outside the loss's `beta_range`, a schema field outside its `advised` range such as
`optim.lr`) is a warning line instead (`advice`). Called first thing by `prefopt.run.runner` (before
preflight). On the command line, before Hydra composes, `precheck_problems` (called by `src/run.py`)
collects every problem at once: overrides of keys no plain group or the chosen loss has and group
options that do not exist (which would stop Hydra at the first), values the schema refuses
(`override_problems`), and, when the rest of the command composes, the composed config's own problems.
Exercised by `pytest tests/test_validate.py tests/test_schema.py`.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt.config.components import component_class, component_problems, group_override_problems, raise_problems
from prefopt.config.schema import RunSchema, accepts, advised_range, describe, spec_of, subschema
from prefopt.errors import ConfigError
from prefopt.log import get_logger

log = get_logger()

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


def _optim_problems(cfg: DictConfig, built: dict[str, Any] | None = None) -> list[str]:
    from prefopt.train.optim import optim_factories

    try:
        factories = optim_factories(cfg.optim)
    except ConfigError as err:
        return [str(err)]
    if built is not None:
        built["optim"] = factories
    return []


def _components(cfg: DictConfig, tree: dict[str, Any], built: dict[str, Any] | None = None) -> list[str]:
    """The `_target_` components, each against its constructor (skipped while a value is unresolved); what
    builds goes into `built` ("loss", "data.source", "optim": the (optimizer, scheduler) factories)."""
    problems, data = [], cfg.get("data") or {}
    for group, node, values in (("loss", cfg.get("loss"), tree.get("loss")),
                                ("data.source", data.get("source"), (tree.get("data") or {}).get("source"))):
        if isinstance(node, DictConfig) and _resolved(values):
            problems += component_problems(node, group, built)
    if isinstance(cfg.get("optim"), DictConfig) and _resolved(tree.get("optim")):
        problems += _optim_problems(cfg, built)
    return problems


def config_problems(cfg: DictConfig, built: dict[str, Any] | None = None) -> list[str]:
    """Every problem of the config, one line each: unset values, then the groups in the config's order.
    The components constructed to check them go into `built` (see `_components`)."""
    problems = missing_problems(cfg)
    tree = {key: _plain(cfg, key) for key in cfg.keys()}
    problems += schema_problems(tree, RunSchema)
    if isinstance(tree.get("trainer"), dict):
        problems += trainer_problems(tree["trainer"])
    if isinstance(tree.get("data"), dict):
        problems += _length_problems(tree["data"])
    if isinstance(tree.get("eval"), dict) and isinstance(tree["eval"].get("generate_prompts_file"), str):
        from prefopt.eval.prompts_file import prompts_file_problems

        problems += prompts_file_problems(tree["eval"]["generate_prompts_file"])
    return problems + _components(cfg, tree, built)


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Raise one ConfigError listing every unset mandatory value, unknown key, wrong type and out-of-range
    value of the config (plain groups, trainer and `_target_` components); then warn, one line each, of
    the values outside their usual range (`advice`). Returns the components it constructed to check them
    ("loss", "data.source", "optim"), which `prefopt.config.plan` keeps."""
    built: dict[str, Any] = {}
    raise_problems(config_problems(cfg, built))
    for line in advice(cfg):
        log.warning(line)
    return built


def _outside(key: str, value: Any, span: tuple[float, float], whose: str) -> list[str]:
    low, high = span
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_real or low <= value <= high:
        return []
    return [f"warning: {key}={value:g} is outside the usual range of {whose} ({low:g} to {high:g}); the run "
            f"goes on, but check the value (a {'small' if value < low else 'large'} value by mistake?)"]


def _advised(values: dict[str, Any], schema: type, prefix: str = "") -> list[str]:
    """Lines for the schema fields set outside their `advised` range (values already checked)."""
    names = {f.name for f in dataclasses.fields(schema)}
    lines = []
    for key, value in values.items():
        if key not in names:
            continue
        if (sub := subschema(schema, key)) is not None and isinstance(value, dict):
            lines += _advised(value, sub, f"{prefix}{key}.")
        elif (span := advised_range(schema, key)) is not None:
            lines += _outside(f"{prefix}{key}", value, span, "this setting")
    return lines


def advice(cfg: DictConfig) -> list[str]:
    """Warning lines for allowed values far from the usual: `loss.beta` outside the loss class's
    `beta_range`, and the schema fields outside their `advised` range (`optim.lr`)."""
    tree = {key: _plain(cfg, key) for key in cfg.keys()}
    lines = _advised(tree, RunSchema)
    node, values = cfg.get("loss"), tree.get("loss")
    if isinstance(node, DictConfig) and isinstance(values, dict) and "beta" in values:
        try:
            cls = component_class(node, "loss")
        except ConfigError:  # reported by config_problems
            return lines
        span = getattr(cls, "beta_range", None)
        lines = (_outside("loss.beta", values["beta"], span, cls.__name__) if span else []) + lines
    return lines


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


def _groups(conf_dir: Path) -> dict[str, Path]:
    """Each config group of conf/ and its folder."""
    return {p.name: p for p in conf_dir.iterdir() if p.is_dir()}


def _option_problems(group: str, folder: Path, values: list[Any] | None) -> list[str]:
    """One line per chosen option of `group` that has no yaml (`loss=dpoo`), naming the available ones."""
    missing = [v for v in values or [] if v is not None and not (folder / f"{v}.yaml").is_file()]
    options = ", ".join(sorted(f.stem for f in folder.glob("*.yaml")))
    return [f"{group}={v} is not a config of the `{group}` group; available: {options}" for v in missing]


def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _override_values(arg: str, parser: Any) -> list[Any] | None:
    """The value(s) an override sets, as Hydra parses them (each choice of a sweep `a,b`); None for a
    deletion, an interpolation, a range or glob sweep, or what Hydra cannot parse (it says so itself)."""
    from hydra.core.override_parser.types import ChoiceSweep

    try:
        override = parser.parse_override(arg)
        if override.is_delete():
            return None
        value = override.value()
    except Exception:  # noqa: BLE001 - Hydra's parser errors come in several types
        return None
    if isinstance(value, ChoiceSweep):
        values = list(value.list)
    elif override.is_sweep_override():
        return None
    else:
        values = [value]
    return None if any(isinstance(v, str) and "${" in v for v in values) else values


def _leaf(parts: list[str], schema: type) -> tuple[list[str], tuple[type, str] | None]:
    """(the unknown-key line, if a part of the dotted key is not a setting; the (schema, key) of the
    plain field the key names, if it names one)."""
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(schema)]
        if part not in names:
            return [_unknown("".join(f"{p}." for p in parts[:depth]), part, names)], None
        if depth == len(parts) - 1:
            return [], (schema, part)
        if (sub := subschema(schema, part)) is None:
            return [], None  # inside a mapping or a component: checked once composed
        schema = sub
    return [], None


def _value_lines(key: str, values: list[Any] | None, leaf: tuple[type, str] | None) -> list[str]:
    if leaf is None or values is None or subschema(*leaf) is not None:
        return []
    spec = spec_of(*leaf)
    return [f"{key}={v!r} is not allowed; it must be {describe(spec)}" for v in values if not accepts(spec, v)]


def _check_override(arg: str, groups: dict[str, Path], parser: Any) -> tuple[list[str], list[str]]:
    """(problems that stop Hydra composing: an unknown key or group option; values the schema refuses)."""
    key = arg.lstrip("+~").split("=", 1)[0]
    parts = key.split(".")
    if "=" not in arg or "/" in key or parts[0] == "hydra":
        return [], []
    values = _override_values(arg, parser)
    if len(parts) == 1 and parts[0] in groups:
        return _option_problems(key, groups[key], values), []
    unknown, leaf = _leaf(parts, RunSchema)
    return unknown, [] if unknown else _value_lines(key, values, leaf)


def override_problems(argv: list[str], conf_dir: str | Path) -> list[str]:
    """One line per command-line override that Hydra would stop at (a key no plain group has, `data.bogus=1`
    or `los=dpo`; a group option that does not exist, `loss=dpoo`) or whose value a plain group's schema
    refuses (`optim.lr=0`), before Hydra composes. `hydra.*` and keys inside mappings or components
    (`loss.beta`, `trainer.*`) are left to `validate_config`."""
    groups, parser, problems = _groups(Path(conf_dir)), _parser(), []
    for arg in argv:
        blocking, values = _check_override(arg, groups, parser)
        problems += blocking + values
    return list(dict.fromkeys(problems))


def _composable(argv: list[str], blocking: list[str]) -> list[str] | None:
    """The overrides Hydra can compose: those not named in a blocking problem; None when the command
    has flags (other than -m) that change what is composed."""
    keep = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        if arg.startswith("-"):
            return None
        key = arg.lstrip("+~").split("=", 1)[0]
        if key.split(".")[0] != "hydra" and "hydra/" not in key and not any(
                p.startswith((f"{key} ", f"{key}=")) for p in blocking):
            keep.append(arg)
    return keep


def _composed_problems(overrides: list[str], conf_dir: Path) -> list[str] | None:
    """`config_problems` of conf/train.yaml composed with `overrides`; None when it does not compose (a sweep)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except Exception:  # noqa: BLE001 - a sweep, or what Hydra reports itself once it runs
        return None
    return config_problems(cfg)


def precheck_problems(argv: list[str], conf_dir: str | Path) -> list[str]:
    """Every problem of a command line in one list, before Hydra composes: keys no plain group or the
    chosen loss has and group options that do not exist (each of which would stop Hydra at the first),
    then the value problems: when the rest of the command composes, all of the composed config's
    (`config_problems`: the loss's values too), else those the plain groups' schema finds in the argv."""
    conf_dir, groups, parser = Path(conf_dir), _groups(Path(conf_dir)), _parser()
    blocking = [p for group in ("loss", "judge") for p in group_override_problems(argv, conf_dir, group)]
    values: list[str] = []
    for arg in argv:
        stops, bad = _check_override(arg, groups, parser)
        blocking, values = blocking + stops, values + bad
    blocking, values = list(dict.fromkeys(blocking)), list(dict.fromkeys(values))
    if not blocking and not values:
        return []
    overrides = _composable(argv, blocking)
    composed = _composed_problems(overrides, conf_dir) if overrides is not None else None
    return blocking + (composed if composed is not None else values)
