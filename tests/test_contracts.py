"""The contracts (prefopt.contracts) import nothing from prefopt, the old import paths give the same
objects, and the two packages that were a file circle (models/choose.py, models/load.py) are one way."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prefopt"


def prefopt_imports(path: Path) -> set[str]:
    """Every prefopt module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefopt"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("prefopt")}
    return found


def test_contracts_import_nothing_from_prefopt_but_themselves():
    for path in (SRC / "contracts").glob("*.py"):
        assert {m for m in prefopt_imports(path) if not m.startswith("prefopt.contracts")} == set(), path.name


def test_old_import_paths_give_the_contracts():
    from prefopt import contracts
    from prefopt.models.choose import Start
    from prefopt.models.setup import is_lora
    from prefopt.store.cache import fingerprint
    from prefopt.tasks.base import StartNeeds, Task, TaskArtifacts
    from prefopt.train.gather import is_sharded
    from prefopt.scoring.logp_cache import weights_fingerprint

    assert (Start, StartNeeds, Task, TaskArtifacts) == (contracts.Start, contracts.StartNeeds, contracts.Task,
                                                        contracts.TaskArtifacts)
    assert (is_lora, is_sharded, fingerprint, weights_fingerprint) == (
        contracts.is_lora, contracts.is_sharded, contracts.fingerprint, contracts.weights_fingerprint)
    assert fingerprint({"b": 1, "a": [2]}) == "93459bde8648786a"  # the same keys as before the move


def test_choosing_a_start_does_not_import_the_loader():
    assert "prefopt.models.load" not in prefopt_imports(SRC / "models" / "choose.py")
