"""A study preset read as one file (conf/sweep/<study>.yaml) with the shared files its defaults list
names (conf/sweep/base/*.yaml, e.g. `base/sort_study`) merged under it: what scripts and tests read
(the grids, the sweeper's positions) without composing a whole run config through Hydra.

    from prefopt.config.study_file import load_study_file
    node, text = load_study_file(Path("conf/sweep/beta_sensitivity.yaml"))   # node.sweep.grid ...

Used by scripts/sweep_side_by_side.py, tests/test_sweep.py and the pre-check's overlay choice
(`defaults_entries`, prefopt.config.components).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def defaults_entries(path: Path) -> list:
    """The defaults list of an overlay file, with the entries of the same-group files it includes
    (`- base/sort_study` in conf/sweep/beta_sensitivity.yaml) spliced in where they are named."""
    entries = []
    for entry in OmegaConf.load(path).get("defaults") or []:
        included = path.parent / f"{entry}.yaml" if isinstance(entry, str) and entry != "_self_" else None
        entries.extend(defaults_entries(included) if included is not None and included.is_file() else [entry])
    return entries


def load_study_file(path: Path) -> tuple[DictConfig, str]:
    """(the preset merged over its base files, with their defaults lists spliced in; the text of all)."""
    path = Path(path)
    node = OmegaConf.load(path)
    names = [d for d in node.get("defaults", []) if isinstance(d, str) and d.startswith("base/")]
    bases = [OmegaConf.load(path.parent / f"{name}.yaml") for name in names]
    merged = OmegaConf.merge(*bases, node)
    merged.defaults = defaults_entries(path)
    text = "\n".join(p.read_text() for p in [path, *(path.parent / f"{n}.yaml" for n in names)])
    return merged, text
