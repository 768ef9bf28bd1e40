"""Checking and building config components before anything heavy loads.

`build_component(cfg.loss, "loss")` imports the `_target_` class, checks every key against the
constructor's arguments (each unknown key names the valid ones), then constructs it, turning a
constructor's ValueError into a `ConfigError` that names the config key; the constructor is the
component's schema. `group_override_problems` checks `loss.<key>=` command-line overrides before Hydra
composes (through `prefopt.config.validate.precheck_problems`). `raise_problems` turns a list of problems into one ConfigError, one line each. Used by
`src/run.py`, `prefopt.config.validate` and `prefopt.run.steps`; exercised by `pytest tests/test_config.py`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from prefopt.config.study_file import defaults_entries
from prefopt.errors import ConfigError

__all__ = ["ConfigError", "build_component", "check_keys", "component_problems", "constructor_keys", "default_option",
           "group_override_problems", "raise_problems"]


def raise_problems(problems: list[str]) -> None:
    """One ConfigError for all of a config's problems: the problem itself when there is one, else their
    count and one line each (so a user fixes every mistake in one go)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in problems))


def constructor_keys(cls: type) -> list[str]:
    """Keyword arguments the class's constructor accepts."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def component_class(node: DictConfig, group: str) -> type:
    target = node.get("_target_")
    if not target:
        raise ConfigError(f"`{group}` has no `_target_`: pick one of the `{group}=...` configs.")
    try:
        return get_class(target)
    except Exception as err:  # hydra raises its own ImportError flavours
        raise ConfigError(f"{group}._target_={target} cannot be imported: {err}") from None


def unknown_keys(node: DictConfig, group: str, extra_allowed: tuple[str, ...] = ()) -> list[str]:
    """One line per key of `node` its `_target_` class does not take, naming the valid ones."""
    cls = component_class(node, group)
    valid = constructor_keys(cls)
    label = getattr(cls, "name", cls.__name__)
    return [
        f"{group}.{key} is not a setting of the {label} {group} ({cls.__name__}); valid keys: {', '.join(valid)}"
        for key in node.keys()
        if key != "_target_" and key not in extra_allowed and key not in valid
    ]


def check_keys(node: DictConfig, group: str, extra_allowed: tuple[str, ...] = ()) -> type:
    """Fail, naming the keys and the valid ones, when `node` has keys its class does not take."""
    raise_problems(unknown_keys(node, group, extra_allowed))
    return component_class(node, group)


def build_component(node: DictConfig, group: str, **overrides: Any) -> Any:
    """Check the keys, then construct the `_target_` class from the node's values."""
    cls = check_keys(node, group)
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ConfigError(f"{group}: {err}") from None


def component_problems(node: DictConfig, group: str, built: dict[str, Any] | None = None) -> list[str]:
    """What `build_component` would refuse, as lines: every unknown key, else the constructor's complaint.
    The component, when it builds, goes into `built[group]` (so a run constructs it once: prefopt.config.plan)."""
    try:
        problems = unknown_keys(node, group)
        if not problems:
            component = build_component(node, group)
            if built is not None:
                built[group] = component
    except ConfigError as err:  # no `_target_`, one that cannot be imported, or a value the constructor refuses
        return [str(err)]
    return problems


def default_option(conf_dir: str | Path, group: str, config: str = "train") -> str | None:
    """The option conf/<config>.yaml's defaults list picks for `group` (e.g. `loss: rmipo`), or None."""
    for entry in OmegaConf.load(Path(conf_dir) / f"{config}.yaml").get("defaults", []):
        if isinstance(entry, DictConfig) and group in entry:
            return str(entry[group])
    return None


def _overlay_choice(argv: list[str], group: str, conf_dir: Path) -> str | None:
    """The option an `experiment=` or `sweep=` overlay on the command line picks for `group` in its
    defaults list, or in a file that list includes (`override /judge: reward_model`), else None."""
    for arg in argv:
        overlay, _, name = arg.partition("=")
        path = conf_dir / overlay / f"{name}.yaml"
        if overlay in ("experiment", "sweep") and "," not in name and path.is_file():
            for entry in defaults_entries(path):
                if isinstance(entry, dict) or OmegaConf.is_dict(entry):
                    picked = dict(entry).get(f"override /{group}")
                    if picked:
                        return str(picked)
    return None


def _chosen_options(argv: list[str], group: str, default: str | None, conf_dir: Path | None = None) -> list[str]:
    for arg in argv:
        if arg.startswith(f"{group}="):
            return [o.strip() for o in arg.split("=", 1)[1].split(",") if o.strip()]
    overlay = _overlay_choice(argv, group, Path(conf_dir)) if conf_dir is not None else None
    return [overlay] if overlay else [default] if default else []


def group_override_problems(argv: list[str], conf_dir: str | Path, group: str, default: str | None = None) -> list[str]:
    """One line per `<group>.<key>=` command-line override whose key the chosen component lacks (the
    option from `group=...` in argv, else `default`, else the one conf/train.yaml's defaults list picks).

    Hydra would reject `loss=rmipo loss.gamma_beta_ratio=0.5` too, but only with "could not override";
    this says which loss, and which keys it has. Runs before composing, so it costs milliseconds.
    """
    problems: dict[str, str] = {}  # one line per unknown key: the first chosen option that lacks it
    for option in _chosen_options(argv, group, default or default_option(conf_dir, group), Path(conf_dir)):
        path = Path(conf_dir) / group / f"{option}.yaml"
        if not path.exists():
            break  # Hydra reports an unknown option with the list of available ones
        node = OmegaConf.load(path)
        valid = constructor_keys(component_class(node, group)) if "_target_" in node else list(node.keys())
        for arg in argv:
            key = arg.lstrip("+~").split("=", 1)[0]
            name = key[len(group) + 1 :]
            if "=" in arg and key.startswith(f"{group}.") and "." not in name and name not in valid + ["_target_"]:
                keys = f"valid keys: {', '.join(valid)}" if valid else "it takes no settings"
                problems.setdefault(key, f"{key} is not a setting of {group}={option}; {keys}")
    return list(problems.values())

