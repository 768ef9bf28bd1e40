"""The import graph of src/prefopt, read with `ast` (the check `farm-studio look` makes, which is not
installed here): every import counts, at the top of a file or inside a function.

The layer order, bottom to top (a package may import from the packages below it, CONTRIBUTING.md):

    errors, log, contracts   what every package shares; contracts import nothing from prefopt
    store                    the fingerprinted artifact cache, the memo of a sweep
    losses                   one file per preference loss
    scoring                  log-probs, the batch layouts, the frozen side and its cached tables
    data                     rows -> token ids -> pair batches (built in the scoring layer's layouts)
    models                   choosing, loading and setting up the policy
    eval                     sampling, judges, the evaluation and its caches
    tasks                    the preference-data sources
    train                    the LightningModule and the Trainer plumbing
    config                   validation and the run plan (constructs the components below it)
    run                      one run, top to bottom
    analysis                 a sweep's report

Asserted: no cycle between packages, no circle between files, at most `MAX_BACK_ARROWS` file imports
that run back up the order (each listed in `ALLOWED_BACK_ARROWS`, with its reason); and no function in
src/ longer than `MAX_FUNCTION_LINES` lines (from its `def` to its last line). Exercised by `pytest tests/test_layers.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prefopt"
LAYERS = [("errors", "log", "contracts"), ("store",), ("losses",), ("scoring",), ("data",), ("models",), ("eval",),
          ("tasks",), ("train",), ("config",), ("run",), ("analysis",)]
LAYER_OF = {package: rank for rank, names in enumerate(LAYERS) for package in names}
MAX_BACK_ARROWS = 2
MAX_FUNCTION_LINES = 50
ALLOWED_BACK_ARROWS: dict[tuple[str, str], str] = {}  # (importer, imported) -> why; none needed now


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imported_modules(name: str, path: Path) -> set[str]:
    """The prefopt modules `path` imports (a `from package import module` names the module itself)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("prefopt") and target != name:
                found.add(target)
    return found


FILE_EDGES = {(a, b) for a, path in MODULES.items() for b in imported_modules(a, path)}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prefopt"


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def back_arrows() -> list[tuple[str, str]]:
    """File imports whose target package sits higher in `LAYERS` than the importer's."""
    return sorted((a, b) for a, b in FILE_EDGES if LAYER_OF[package(b)] > LAYER_OF[package(a)])


def test_every_package_has_a_layer():
    packages = {package(m) for m in MODULES} - {"prefopt"}
    assert packages <= set(LAYER_OF), packages - set(LAYER_OF)


def test_the_graph_reads_function_local_imports():
    assert ("prefopt.run.steps", "prefopt.scoring.marginal") in FILE_EDGES  # imported inside preference_data


def test_no_cycle_between_packages():
    edges = {(package(a), package(b)) for a, b in FILE_EDGES if package(a) != package(b)}
    assert cycles(edges) == []


def test_no_circle_between_files():
    assert cycles(FILE_EDGES) == []


def test_at_most_two_arrows_run_back_up_the_layers():
    arrows = back_arrows()
    assert len(arrows) <= MAX_BACK_ARROWS and set(arrows) <= set(ALLOWED_BACK_ARROWS), arrows


def test_the_contracts_import_nothing_from_prefopt():
    assert {b for a, b in FILE_EDGES if package(a) == "contracts" and package(b) != "contracts"} == set()


def test_no_function_in_src_is_over_50_lines():
    long = [f"{path.relative_to(SRC.parents[1])}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SRC.parent.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
