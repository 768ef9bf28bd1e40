"""Saying which tuned settings a run took, instead of applying them silently.

conf/train.yaml picks `conf/tuned/<loss>_<data>.yaml` when one exists (the committed study's best β and
learning rate for that loss on that task); command-line overrides win. `applied(cfg, choice, overrides)`
lists the keys the file set that the command line did not, with the values the run uses; the runner
prints them in one line ("tuned: conf/tuned/simpo_sort.yaml -> loss.beta 0.6, optim.lr 1e-05 ...") and
records them in results.json `info.tuned`. `sweep_note(overrides)` is the one line a multirun prints
when it compares losses without fixing the learning rate (each loss then runs at its own tuned lr).
Exercised by `pytest tests/test_tuned.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


def _overridden(key: str, overrides: list[str]) -> bool:
    """Whether the command line set `key` (or a node above it; `loss=simpo` picks a group, it sets no key)."""
    names = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return any(key == name or ("." in name and key.startswith(f"{name}.")) for name in names)


def applied(cfg: DictConfig, choice: str | None, overrides: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """{"file": conf/tuned/<choice>.yaml, "values": {key: value the run uses}} for the tuned keys the
    command line left alone; {} when no tuned file applies."""
    if not choice:
        return {}
    path = conf_dir / "tuned" / f"{choice}.yaml"
    if not path.is_file():
        return {}
    keys = [k for k in _leaves(OmegaConf.to_container(OmegaConf.load(path))) if not _overridden(k, overrides)]
    values = {k: OmegaConf.select(cfg, k) for k in keys}
    return {"file": f"conf/tuned/{path.name}", "values": values} if values else {}


def describe(tuned: dict[str, Any]) -> str:
    """The console line for `applied`'s answer."""
    values = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in tuned["values"].items())
    return (f"tuned: {tuned['file']} -> {values} (the committed study's best for this loss and task; "
            "override a key to change it, or `~tuned` for the loss's own defaults)")


def sweep_note(overrides: list[str]) -> str | None:
    """One line when a multirun sweeps several losses and leaves each at its own tuned learning rate."""
    losses = [o.split("=", 1)[1] for o in overrides if o.startswith("loss=")]
    several = any("," in value or value.startswith(("choice(", "glob(")) for value in losses)
    fixed = any(o.lstrip("+").startswith(("optim.lr=", "~tuned", "tuned=", "sweep=")) for o in overrides)
    if not several or fixed:
        return None
    return ("note: each loss runs at its own tuned learning rate and β (conf/tuned/<loss>_<data>.yaml) unless "
            "the command line sets them: add optim.lr=... to compare at one learning rate, or ~tuned for "
            "every loss's own defaults")
