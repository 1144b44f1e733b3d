"""The test suite's own layout: shared code lives in helper modules, never in a test module.

Under tests/ a module is a test module (``test_*.py``), a ``conftest.py`` (fixtures and pytest hooks
only) or a helper module (any other name: ``helpers.py`` for what most tests share, ``reference.py``
for other projects' code transcribed, ``steps/lvis_fixture.py``, ``core/gated_step.py``). The rule:

- no module under tests/ or benchmarks/ imports a test module or a conftest.py, anywhere in the
  file (inside functions too): those are pytest's to collect, and what several files need belongs
  in a helper module, where a change to one test file cannot break another;
- nothing under tests/ imports benchmarks/: a baseline that a test checks against lives in
  tests/reference.py, and the benchmark imports it from there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

SCANNED = ("tests", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this repository (not an attribute of one)."""
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return name.split(".")[0] == "tests" and (last.startswith("test_") or last == "conftest")


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the text of ``module``) imports, in any scope: ``import a.b``,
    ``from a import b`` (``a``, and ``a.b`` where that is a module), relative imports resolved, and
    ``importlib.import_module("a.b")`` with a literal name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    problems = []
    for name in sorted(imported_modules(source, module, is_package)):
        if is_test_module(name):
            problems.append(
                f"{module} imports {name}: test modules and conftest.py are pytest's to collect; move "
                "what they share to tests/helpers.py"
            )
        elif module.split(".")[0] == "tests" and name.split(".")[0] == "benchmarks":
            problems.append(
                f"{module} imports {name}: tests import no benchmark; a baseline both need goes in "
                "tests/reference.py, shared test code in tests/helpers.py"
            )
    return problems


def scanned_files() -> list[Path]:
    return sorted(path for root in SCANNED for path in (REPO / root).rglob("*.py"))


def test_no_module_imports_a_test_module_and_no_test_imports_a_benchmark() -> None:
    problems = [
        problem
        for path in scanned_files()
        for problem in violations(path.read_text(), module_name(path), path.name == "__init__.py")
    ]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_the_imports_it_checks() -> None:
    imports = {
        module_name(path): imported_modules(path.read_text(), module_name(path)) for path in scanned_files()
    }
    assert len(imports) > 50
    assert "tests.helpers" in imports["tests.test_cli"]
    assert "tests.steps.lvis_fixture" in imports["tests.steps.test_ingest"]
    assert "tests.reference" in imports["benchmarks.bench_sampling"]
    assert "tests.core.gated_step" in imports["tests.core.test_runner"]  # imported inside a test


@pytest.mark.parametrize(
    ("source", "module", "flagged"),
    [
        ("from tests.test_cli import invoke", "tests.test_compare", "tests.test_cli"),
        ("from tests.conftest import REPO", "tests.steps.lvis_fixture", "tests.conftest"),
        ("from tests import conftest", "tests.test_x", "tests.conftest"),
        ("from . import test_cli", "tests.test_x", "tests.test_cli"),
        (
            "from ..steps.test_export_coco import raw_masks",
            "tests.core.test_x",
            "tests.steps.test_export_coco",
        ),
        ("def f():\n    import tests.test_lvis_pipeline", "tests.test_x", "tests.test_lvis_pipeline"),
        ("import importlib\nimportlib.import_module('tests.test_cli')", "tests.test_x", "tests.test_cli"),
        (
            "from benchmarks.bench_sampling import lvis_like_labels",
            "tests.test_x",
            "benchmarks.bench_sampling",
        ),
        ("import benchmarks", "tests.helpers", "benchmarks"),
        ("from tests.test_cli import invoke", "benchmarks.bench_x", "tests.test_cli"),
    ],
)
def test_the_rule_flags_each_kind_of_import(source: str, module: str, flagged: str) -> None:
    (problem,) = violations(source, module)
    assert problem.startswith(f"{module} imports ") and f" {flagged}:" in problem


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from tests.helpers import REPO, invoke", "tests.test_x"),
        ("from tests.steps.lvis_fixture import build_lvis", "tests.steps.test_x"),
        ("from tests.reference import mmengine_repeat_factors", "benchmarks.bench_x"),
        ("from rebalance.steps.sampling import repeat_factors_step", "tests.test_x"),
        ("from tests.helpers import REPO", "tests.conftest"),
    ],
)
def test_the_rule_lets_helper_and_library_imports_through(source: str, module: str) -> None:
    assert violations(source, module) == []


def _is_fixture(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
            isinstance(target, ast.Name) and target.id == "fixture"
        ):
            return True
    return False


def test_conftest_holds_fixtures_only() -> None:
    problems = []
    for path in sorted((REPO / "tests").rglob("conftest.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ):
                continue
            if isinstance(node, ast.FunctionDef) and (_is_fixture(node) or node.name.startswith("pytest_")):
                continue
            problems.append(
                f"{path.relative_to(REPO)}:{node.lineno}: conftest.py holds fixtures and pytest hooks "
                "only; constants, helpers and classes go in tests/helpers.py"
            )
    assert not problems, "\n".join(problems)
