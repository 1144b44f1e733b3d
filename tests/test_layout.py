"""The package's import structure: layers import downwards only, and nothing imports in a circle."""

from __future__ import annotations

import ast
import graphlib

from rebalance.core.fingerprint import imported_names
from tests.helpers import REPO

PACKAGE = REPO / "rebalance"

_E, _C, _IO, _D = "rebalance.errors", "rebalance.core", "rebalance.io", "rebalance.domain"
_M, _MO, _T, _R = "rebalance.methods", "rebalance.models", "rebalance.train", "rebalance.report"
LAYERS: dict[str, tuple[str, set[str]]] = {
    "rebalance.errors": ("typed errors and did-you-mean", set()),
    "rebalance.core": ("runtime: registry, config, cache, runner, executors, devices", {_E}),
    "rebalance.io": ("readers and writers, image references, FAISS index files", {_E, _C}),
    "rebalance.domain": (
        "dataset tables and artifact types, classes, buckets, quotas, ledger",
        {_E, _C, _IO},
    ),
    "rebalance.methods": (
        "matching, frequency, retrieval, precision, index, sampling, dedup, synthesis",
        {_E, _C, _IO, _D},
    ),
    "rebalance.models": ("CLIP and text encoders, diffusion, the judge, tiny test models", {_E, _C, _IO, _D}),
    "rebalance.train": ("the fit() loop, long-tail losses, per-bucket metrics", {_E, _C, _IO, _D, _M, _MO}),
    "rebalance.report": (
        "plots, the HTML run report and its gallery, the baselines panel",
        {_E, _C, _IO, _D},
    ),
    "rebalance.steps": ("thin typed adapters, registered by name", {_E, _C, _IO, _D, _M, _MO, _T, _R}),
    "rebalance.compare": ("the baselines panel's orchestration", {_E, _C, _R}),
    "rebalance.api": ("the Python API the CLI wraps", {_E, _C, _T, _R, "rebalance.compare"}),
    "rebalance.plugin": ("what a plugin imports", {_E, _C, _D}),
    "rebalance.cli": ("typer commands over the API", {_E, _C, _R, "rebalance.api"}),
}
"""Package -> (what it holds, the packages it may import). Lowest layer first."""


def import_graph() -> dict[str, set[str]]:
    """Module -> the rebalance modules it imports, lazy (in-function) imports included.

    Importing a module first runs its parent packages' ``__init__``, so what those import from
    outside their package counts as imported by the module too.
    """
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    named_by: dict[str, set[str]] = {}
    for module, path in modules.items():
        named = imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
        named_by[module] = {name for name in named if name in modules and name != module}

    def outside(package: str) -> set[str]:
        # A package's __init__ runs before any of its modules: what it imports from outside the
        # package is imported by each of them. Its re-exports of its own modules close no loop.
        return {name for name in named_by[package] if not name.startswith(f"{package}.")}

    graph: dict[str, set[str]] = {}
    for module, imports in named_by.items():
        parents = {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
        graph[module] = imports | {name for parent in parents for name in outside(parent)}
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


def package_of(module: str) -> str:
    """The layer a module belongs to: ``rebalance.<first part>`` (``rebalance`` for the root)."""
    return ".".join(module.split(".")[:2])


def layer_table_markdown() -> str:
    """``LAYERS`` as the README's layout table, lowest layer first."""
    rows = ["| package | holds | may import |", "|---|---|---|"]
    for package, (holds, allowed) in LAYERS.items():
        names = ", ".join(f"`{name.removeprefix('rebalance.')}`" for name in sorted(allowed)) or "nothing"
        rows.append(f"| `{package.removeprefix('rebalance.')}` | {holds} | {names} |")
    return "\n".join(rows)


def test_every_import_follows_the_layer_table() -> None:
    graph = import_graph()
    packages = {package_of(module) for module in graph} - {"rebalance"}
    assert packages == set(LAYERS), "a new top-level module or package must be placed in LAYERS"
    crossing = {
        (module, imported)
        for module, imports in graph.items()
        for imported in imports
        # The root package holds only the version and the moved-paths hook: anyone may import it.
        if "rebalance" not in (package_of(module), package_of(imported))
        and package_of(imported) != package_of(module)
        and package_of(imported) not in LAYERS[package_of(module)][1]
    }
    assert not crossing, sorted(crossing)
    # The table itself has no cycle, so the packages cannot import in a circle either.
    assert import_cycle({package: allowed for package, (_, allowed) in LAYERS.items()}) == []


def test_no_step_imports_another_step() -> None:
    between_steps = {
        (module, imported)
        for module, imports in import_graph().items()
        for imported in imports
        if module.startswith("rebalance.steps.")
        and imported.startswith("rebalance.steps.")
        and imported != "rebalance.steps"
    }
    assert not between_steps, sorted(between_steps)


def test_the_readme_layout_section_is_the_layer_table() -> None:
    assert layer_table_markdown() in (REPO / "README.md").read_text()
