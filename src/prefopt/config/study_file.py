"""A study preset read as one file (conf/sweep/<study>.yaml) with the shared files its defaults list
names (conf/sweep/base/*.yaml, e.g. `base/sort_study`) merged under it: what scripts and tests read
(the grids, the sweeper's positions) without composing a whole run config through Hydra.

    from prefopt.config.study_file import load_study_file
    node, text = load_study_file(Path("conf/sweep/beta_sensitivity.yaml"))   # node.sweep.grid ...

Used by scripts/sweep_side_by_side.py and tests/test_sweep.py.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def load_study_file(path: Path) -> tuple[DictConfig, str]:
    """(the preset merged over its base files, their defaults lists joined; the text of all of them)."""
    path = Path(path)
    node = OmegaConf.load(path)
    names = [d for d in node.get("defaults", []) if isinstance(d, str) and d.startswith("base/")]
    bases = [OmegaConf.load(path.parent / f"{name}.yaml") for name in names]
    merged = OmegaConf.merge(*bases, node)
    merged.defaults = [d for b in bases for d in b.get("defaults", [])] + list(node.get("defaults", []))
    text = "\n".join(p.read_text() for p in [path, *(path.parent / f"{n}.yaml" for n in names)])
    return merged, text
