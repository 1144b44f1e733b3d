"""The package's import structure: layers import downwards only, and nothing imports in a circle."""

from __future__ import annotations

import ast
import graphlib

from rebalance.core.fingerprint import imported_names
from tests.conftest import REPO

PACKAGE = REPO / "rebalance"


def import_graph() -> dict[str, set[str]]:
    """Module -> the rebalance modules it imports, lazy (in-function) imports included.

    Importing a module first runs its parent packages' ``__init__``, so that counts as an import
    too, unless the ``__init__`` only gathers its own submodules (a re-export cannot close a loop
    through code outside the package).
    """
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    named_by: dict[str, set[str]] = {}
    for module, path in modules.items():
        named = imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
        named_by[module] = {name for name in named if name in modules and name != module}

    def gathers_only_its_own(package: str) -> bool:
        return all(name.startswith(f"{package}.") for name in named_by[package])

    graph: dict[str, set[str]] = {}
    for module, imports in named_by.items():
        parents = {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
        graph[module] = imports | {p for p in parents if not gathers_only_its_own(p)}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports in ``graph`` (its modules in order, the first repeated last), or []."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def test_no_module_imports_in_a_circle() -> None:
    planted = import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert set(planted) == {"a", "b", "c"} and planted[0] == planted[-1] and len(planted) == 4
    assert import_cycle(import_graph()) == []


def test_layers_import_downwards() -> None:
    graph = import_graph()
    upward = {
        (module, imported)
        for module, imports in graph.items()
        for imported in imports
        if (
            module.startswith("rebalance.core")
            and imported.startswith(("rebalance.steps", "rebalance.domain"))
        )
        or (
            module.startswith("rebalance.domain")
            and imported.startswith(("rebalance.steps", "rebalance.report"))
        )
        or (
            module.startswith(
                ("rebalance.report", "rebalance.train", "rebalance.models", "rebalance.compare")
            )
            and imported.startswith("rebalance.steps")
        )
        or (
            module.startswith("rebalance.steps.")
            and imported.startswith("rebalance.steps.")
            and imported != "rebalance.steps"
        )
    }
    assert not upward, sorted(upward)
