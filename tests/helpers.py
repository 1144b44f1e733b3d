"""What the tests share: paths, the tiny pipeline's steps, the CLI runner, output digests, plugins.

Test modules import shared code from helper modules only (this one, ``tests/steps/lvis_fixture.py``,
``tests/reference.py``, ``tests/core/gated_step.py``), never from another test module or conftest.py;
``tests/test_suite_layout.py`` checks it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
from typer.testing import CliRunner, Result

from rebalance.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "pipelines" / "tiny.yaml"
# The steps of pipelines/tiny.yaml (and demo_full.yaml) in the order they run: each as early as its
# inputs allow, ties in the order the YAML declares them.
TINY_STEPS = [
    "train",
    "test",
    "verified",
    "stats",
    "synonyms",
    "frequency",
    "pool",
    "outside",
    "embedded",
    "test_embedded",
    "pool_embedded",
    "outside_embedded",
    "pool_index",
    "retrieved",
    "retrieved_embedded",
    "baseline",
    "cnn_baseline",
    "synthesized",
    "synthesized_embedded",
    "deduped",
    "thinned",
    "sampled",
    "epochs",
    "rebalanced",
    "cnn_rebalanced",
    "export",
    "report",
]

_runner = CliRunner()


def invoke(*args: str) -> Result:
    """Run the ``rebalance`` command line in this process, e.g. ``invoke("run", str(TINY))``."""
    return _runner.invoke(app, list(args))


def tree_digest(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path: equal dicts mean byte-identical trees."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in exclude
    }


class _Masked(msgspec.Struct):
    id: int
    segmentation: msgspec.Raw


class _Annotations(msgspec.Struct):
    annotations: list[_Masked]


def raw_masks(path: Path) -> dict[int, bytes]:
    """Each annotation's segmentation in a COCO / LVIS JSON file, as the bytes the file holds."""
    document = msgspec.json.decode(path.read_bytes(), type=_Annotations)
    return {a.id: bytes(a.segmentation) for a in document.annotations}


def install_plugin(
    site: Path, distribution: str, modules: dict[str, str], sources: dict[str, str] | None = None
) -> Path:
    """Install step plugins the way pip does, without network.

    Writes ``distribution``'s ``.dist-info`` into ``site`` with an entry point under
    ``rebalance.steps`` per ``name: module``, and each ``module: source`` in ``sources`` as a module
    file (``package.module`` as a file of the package's folder); returns ``site`` (put it on the path).
    """
    # As pip names it: the name's dashes escaped, or the folder would read as another distribution.
    dist_info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[rebalance.steps]\n" + "".join(f"{name} = {module}\n" for name, module in modules.items())
    )
    for module, source in (sources or {}).items():
        path = site.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return site
