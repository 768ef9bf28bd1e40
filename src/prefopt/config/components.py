"""Checking and building config components before anything heavy loads.

`build_component(cfg.loss, "loss")` imports the `_target_` class, checks every key against the
constructor's arguments (an unknown key names the valid ones), then constructs it, turning a
constructor's ValueError into a `ConfigError` that names the config key. Used by `src/run.py`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from prefopt.errors import ConfigError

__all__ = ["ConfigError", "build_component", "check_keys", "constructor_keys"]


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


def check_keys(node: DictConfig, group: str, extra_allowed: tuple[str, ...] = ()) -> type:
    """Fail, naming the key and the valid ones, when `node` has a key its class does not take."""
    cls = component_class(node, group)
    valid = constructor_keys(cls)
    label = getattr(cls, "name", cls.__name__)
    for key in node.keys():
        if key == "_target_" or key in extra_allowed:
            continue
        if key not in valid:
            raise ConfigError(
                f"{group}.{key} is not a setting of the {label} {group} ({cls.__name__}); "
                f"valid keys: {', '.join(valid)}"
            )
    return cls


def build_component(node: DictConfig, group: str, **overrides: Any) -> Any:
    """Check the keys, then construct the `_target_` class from the node's values."""
    cls = check_keys(node, group)
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ConfigError(f"{group}: {err}") from None


def _chosen_options(argv: list[str], group: str, default: str) -> list[str]:
    for arg in argv:
        if arg.startswith(f"{group}="):
            return [o.strip() for o in arg.split("=", 1)[1].split(",") if o.strip()]
    return [default]


def precheck_group_overrides(argv: list[str], conf_dir: str | Path, group: str, default: str) -> None:
    """Name the valid keys when a command-line override sets a key the chosen component lacks.

    Hydra would reject `loss=rmipo loss.gamma_beta_ratio=0.5` too, but only with "could not override";
    this says which loss, and which keys it has. Runs before composing, so it costs milliseconds.
    """
    for option in _chosen_options(argv, group, default):
        path = Path(conf_dir) / group / f"{option}.yaml"
        if not path.exists():
            return  # Hydra reports an unknown option with the list of available ones
        node = OmegaConf.load(path)
        valid = constructor_keys(component_class(node, group)) if "_target_" in node else list(node.keys())
        for arg in argv:
            key = arg.lstrip("+~").split("=", 1)[0]
            if "=" in arg and key.startswith(f"{group}.") and "." not in key[len(group) + 1 :]:
                name = key[len(group) + 1 :]
                if name not in valid and name != "_target_":
                    raise ConfigError(
                        f"{key} is not a setting of {group}={option}; valid keys: {', '.join(valid)}"
                    )
