"""Old module paths that moved in 0.2's layering, served for one more release with a warning.

``import rebalance.frequency`` (or ``from rebalance.sampling import ...``) gets the module at its
new path, the same module object (so patching either name patches both), and a
``DeprecationWarning`` naming the new path at the importing line. There are no files at the old
paths: this import hook, installed by ``import rebalance``, answers for them, so the tree a
newcomer reads holds only the layers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.3"

MOVED: dict[str, str] = {
    "rebalance.frequency": "rebalance.methods.frequency",
    "rebalance.retrieval": "rebalance.methods.retrieval",
    "rebalance.precision": "rebalance.methods.precision",
    "rebalance.index": "rebalance.methods.index",
    "rebalance.sampling": "rebalance.methods.sampling",
    "rebalance.dedup": "rebalance.methods.dedup",
    "rebalance.entities": "rebalance.methods.entities",
    "rebalance.plots": "rebalance.report.plots",
    "rebalance.text": "rebalance.methods",
    "rebalance.text.counter": "rebalance.methods.counter",
    "rebalance.text.inflection": "rebalance.methods.inflection",
    "rebalance.text.normalize": "rebalance.domain.text",
    "rebalance.synthesis": "rebalance.methods",
    "rebalance.synthesis.features": "rebalance.methods.feature_synthesis",
    "rebalance.models.device": "rebalance.core.device",
    "rebalance.core.artifacts": "rebalance.domain.artifacts",
    "rebalance.core.artifacts.base": "rebalance.core.artifact",
    "rebalance.core.artifacts.markdown": "rebalance.core.markdown",
    "rebalance.core.artifacts.dataset": "rebalance.domain.artifacts.dataset",
    "rebalance.core.artifacts.tables": "rebalance.domain.artifacts.tables",
    "rebalance.core.artifacts.vectors": "rebalance.domain.artifacts.vectors",
    "rebalance.core.artifacts.outputs": "rebalance.domain.artifacts.outputs",
}
"""Old dotted path -> where the module lives now."""


def current_name(module: str) -> str:
    """``module``'s path today: itself, or where it moved (a submodule of a moved package too)."""
    for old in sorted(MOVED, key=len, reverse=True):
        if module == old or module.startswith(f"{old}."):
            return MOVED[old] + module[len(old) :]
    return module


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: types.ModuleType) -> None:
        old, new = module.__name__, MOVED[module.__name__]
        warnings.warn(
            f"{old} moved to {new}; the old path stops working in rebalance {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=_importer_stacklevel(),
        )
        # The import system returns whatever sys.modules holds under the name once this returns:
        # the module at its new path, not the placeholder.
        sys.modules[old] = importlib.import_module(new)


def _importer_stacklevel() -> int:
    """The stack level of the frame that wrote the import, past this module and importlib's."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Serve the old paths (idempotent)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
