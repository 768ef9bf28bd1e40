"""CONTRIBUTING.md's "where a change goes" table, checked against the code: every path it names exists
(a `<name>` path: its folder), every test file its checks run exists, and the registries it names hold
what it says (losses exported and configured, tasks behind `Task` extending `base/keys`, judges behind
`Judge` with a config each, statistics named once in `analysis/statistics.py`, layouts in `LAYOUTS`,
the shared data keys in the schema). Exercised by `pytest tests/test_contributing.py`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TABLE = [line for line in (ROOT / "CONTRIBUTING.md").read_text().splitlines() if line.startswith("| a")]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def named_paths(text: str) -> list[str]:
    return [p for p in re.findall(r"`([^`\s]+)`", text) if p.startswith(("src/", "conf/", "tests/"))]


def target(path: Path) -> object:
    module, _, name = OmegaConf.load(path)["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_table_names_each_kind_of_change():
    kinds = {cells(line)[0] for line in TABLE}
    assert {"a loss", "a task", "a model", "a sweep", "a judge", "an analysis statistic", "a config key",
            "a batch layout"} <= kinds, kinds


@pytest.mark.parametrize("line", TABLE, ids=lambda line: cells(line)[0])
def test_every_path_the_table_names_exists(line):
    where, check = cells(line)[1], cells(line)[2]
    for path in named_paths(where) + named_paths(check):
        found = ROOT / path.split("::")[0]
        assert (found.parent if "<name>" in path else found).exists(), path


def test_every_loss_is_exported_configured_and_declares_its_needs():
    import prefopt.losses as losses

    exported = {obj for obj in vars(losses).values() if inspect.isclass(obj) and issubclass(obj, losses.PreferenceLoss)
                and obj is not losses.PreferenceLoss}
    for path in (ROOT / "src/prefopt/losses").glob("*.py"):
        module = importlib.import_module(f"prefopt.losses.{path.stem}")
        defined = {obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
                   and issubclass(obj, losses.PreferenceLoss) and not inspect.isabstract(obj)}
        assert defined <= exported, (path.name, defined - exported)
    configured = {target(path) for path in (ROOT / "conf/loss").glob("*.yaml")}
    assert configured <= exported and exported <= configured, exported ^ configured
    for loss in exported:
        assert isinstance(loss.needs_reference, bool) and isinstance(loss.needs_marginal, bool), loss


def test_every_data_config_extends_base_keys_and_names_a_task():
    from prefopt.contracts.task import Task

    for path in (ROOT / "conf/data").glob("*.yaml"):
        cfg = OmegaConf.load(path)
        assert "base/keys@_here_" in cfg.defaults, path.name
        module, _, name = cfg.source["_target_"].rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), Task), path.name


def test_the_shared_data_keys_are_in_the_schema():
    from prefopt.config.schema import DataSchema

    keys = set(OmegaConf.load(ROOT / "conf/data/base/keys.yaml"))
    assert keys <= set(DataSchema.__dataclass_fields__), keys - set(DataSchema.__dataclass_fields__)


def test_every_judge_subclasses_judge_and_has_a_config():
    from prefopt.eval.judge import Judge

    configured = {target(path) for path in (ROOT / "conf/judge").glob("*.yaml")}
    assert all(issubclass(judge, Judge) for judge in configured), configured
    for path in (ROOT / "src/prefopt/eval/judges").glob("[!_]*.py"):
        module = importlib.import_module(f"prefopt.eval.judges.{path.stem}")
        judges = {obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
                  and issubclass(obj, Judge)}
        assert judges and judges <= configured, (path.name, judges - configured)


def test_a_statistic_is_named_once():
    """The registry is the one list: the per-seed computation gives exactly its statistics, and no other
    analysis file spells a statistic's name as a string."""
    import numpy as np

    from prefopt.analysis import stats
    from prefopt.analysis.statistics import NAMES, STATISTICS

    assert stats.TESTED == NAMES and len(set(NAMES)) == len(STATISTICS)
    grid = stats.MethodGrid(method="m", keys=["loss.beta"], points=[{"loss.beta": 0.1}, {"loss.beta": 1.0}], seeds=[0, 1],
                            table=np.array([[0.1, 0.2], [0.3, 0.4]]), default_index=0)
    assert tuple(stats.per_seed(grid, {"loss.beta": 0.5}, k=1)) == NAMES
    for path in (ROOT / "src/prefopt/analysis").glob("*.py"):
        if path.name == "statistics.py":
            continue
        tree = ast.parse(path.read_text())
        other = {id(k.value) for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "loc"}  # matplotlib's
        spelled = {node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and node.value in NAMES and id(node) not in other}
        assert spelled == set(), (path.name, spelled)


def test_every_layout_is_tried():
    import prefopt.scoring as scoring_package
    from prefopt.contracts.layout import Layout
    from prefopt.scoring.layout import LAYOUTS

    found = set()
    for path in Path(scoring_package.__file__).parent.glob("*.py"):
        module = importlib.import_module(f"prefopt.scoring.{path.stem}") if path.stem != "__init__" else None
        found |= {obj for obj in vars(module or scoring_package).values() if inspect.isclass(obj)
                  and issubclass(obj, Layout) and obj is not Layout}
    assert found == {type(layout) for layout in LAYOUTS}
