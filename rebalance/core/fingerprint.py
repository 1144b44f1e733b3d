"""Code fingerprints: the source a step's output depends on, part of its cache key.

A step's fingerprint is ``{file: digest}`` over its own module and every module it imports that does
the work (methods, domain, io, models, ...), transitively, lazy in-function imports included, read
from the syntax trees without importing anything (so planning imports no torch). The runtime (this
package, the CLI, the API and the error types) is left out: it decides *whether* a step runs, not
*what* it writes, and editing it must not re-embed a pool. A plugin's modules count the same way as
rebalance's: every module of the step's own top-level package (and of the distribution that ships
it) is followed.

A digest is the SHA-256 of the module's syntax tree with docstrings, comments, and the messages of
``raise`` and ``assert`` statements taken out: rewording an error or a docstring reruns nothing,
while any change to what the code computes does. This is what Prefect's ``TASK_SOURCE`` cache
policy and Hamilton's cache do with a function's source, applied to a module's import closure.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from rebalance.core.moved import current_name

RUNTIME = ("rebalance.core", "rebalance.errors", "rebalance.cli", "rebalance.api")
"""Module prefixes that never count: the runner, cache, config, registry, executors and errors."""
COUNTED_UNDER_RUNTIME = ("rebalance.core.artifact", "rebalance.core.markdown")
"""Exceptions to ``RUNTIME``: the artifact protocol and its parquet / markdown writers make the bytes
a step's output is written as."""


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name ``tree`` imports (relative imports resolved), lazy imports and
    ``importlib.import_module("...")`` calls with a constant name included. For ``from a import b``
    both ``a`` and ``a.b`` are named: ``b`` may be a submodule or an attribute of ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            named.add(str(node.args[0].value))
    return named


def normalised_digest(tree: ast.Module) -> str:
    """SHA-256 of ``tree`` without docstrings and without the messages of raise / assert."""
    tree = _Normaliser().visit(tree)
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


class _Normaliser(ast.NodeTransformer):
    def _strip_docstring(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip_docstring

    def visit_Raise(self, node: ast.Raise) -> ast.Raise:
        # A raise ends the step without an output, so its message and cause cannot change one.
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return ast.Raise(exc=exc, cause=None)

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        return ast.Assert(test=self.visit(node.test), msg=None)


@dataclasses.dataclass(frozen=True)
class _Parsed:
    relative: str  # the file's path from its top-level package's parent: the same in every clone
    digest: str
    imports: frozenset[str]


class CodeFingerprinter:
    """Fingerprints modules from their files; each file is parsed once per (size, mtime) signature."""

    def __init__(self, runtime: tuple[str, ...] = RUNTIME, counted: tuple[str, ...] = COUNTED_UNDER_RUNTIME):
        self._runtime = runtime
        self._counted = counted
        self._parsed: dict[str, tuple[tuple[int, int], _Parsed] | None] = {}

    def fingerprint(self, module: str) -> dict[str, str]:
        """``{relative file: digest}`` of ``module`` and the modules it imports, transitively."""
        followed = {"rebalance", *_sibling_packages(module.partition(".")[0])}
        found: dict[str, str] = {}
        seen: set[str] = set()
        pending = [module]
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            parsed = self._parse(name)
            if parsed is None:
                continue
            found[parsed.relative] = parsed.digest
            for imported in parsed.imports:
                if imported.partition(".")[0] in followed and self._counts(imported):
                    pending.append(imported)
        return dict(sorted(found.items()))

    def _counts(self, module: str) -> bool:
        def under(prefixes: tuple[str, ...]) -> bool:
            return any(module == p or module.startswith(f"{p}.") for p in prefixes)

        return under(self._counted) or not under(self._runtime)

    def _parse(self, module: str) -> _Parsed | None:
        # A plugin may still import a module by the path it had before it moved: read it where it is.
        located = _module_file(current_name(module))
        if located is None:
            self._parsed[module] = None
            return None
        path, relative, is_package = located
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        memo = self._parsed.get(module)
        if memo is not None and memo[0] == signature:
            return memo[1]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        # Names that are attributes, not modules (`b` in `from a import b`), find no file and are
        # skipped when followed; `a` itself is named too.
        imports = frozenset(imported_names(tree, module, is_package))
        parsed = _Parsed(relative, normalised_digest(tree), imports)
        self._parsed[module] = (signature, parsed)
        return parsed


def _module_file(module: str) -> tuple[Path, str, bool] | None:
    """(source file, its path relative to the top-level package's parent, is a package), found from
    the top-level package's location without importing the module or its parents."""
    top, _, rest = module.partition(".")
    root = _top_level_root(top)
    if root is None:
        return None
    origin, search = root
    if not rest:
        if origin is None:
            return None
        relative = f"{top}/__init__.py" if origin.name == "__init__.py" else origin.name
        return origin, relative, origin.name == "__init__.py"
    for folder in search:
        base = folder.joinpath(*rest.split("."))
        for path, is_package in ((base / "__init__.py", True), (base.with_suffix(".py"), False)):
            if path.is_file():
                return path, path.relative_to(folder.parent).as_posix(), is_package
    return None


@functools.cache
def _top_level_root(top: str) -> tuple[Path | None, tuple[Path, ...]] | None:
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        search = tuple(Path(p) for p in getattr(loaded, "__path__", ()))
    else:
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        origin = spec.origin if spec.has_location else None
        search = tuple(Path(p) for p in spec.submodule_search_locations or ())
    if origin is None and not search:
        return None
    origin_path = Path(origin) if origin else None
    if origin_path is not None and origin_path.suffix != ".py":
        return None  # a compiled extension or builtin: no source to fingerprint
    return origin_path, search


@functools.cache
def _sibling_packages(top: str) -> frozenset[str]:
    """The top-level packages shipped by the distribution that ships ``top`` (a plugin's own)."""
    if top == "rebalance":
        return frozenset({top})
    distributions = importlib.metadata.packages_distributions()
    mine = set(distributions.get(top, ()))
    return frozenset({top} | {name for name, dists in distributions.items() if mine & set(dists)})
