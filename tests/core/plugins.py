"""Install step plugins the way pip does, without network: a package on a path plus its
``.dist-info`` folder whose ``entry_points.txt`` lists the module under ``rebalance.steps``."""

from __future__ import annotations

from pathlib import Path


def install_plugin(
    site: Path, distribution: str, modules: dict[str, str], sources: dict[str, str] | None = None
) -> Path:
    """Write ``distribution``'s metadata into ``site`` with an entry point per ``name: module``, and
    each ``module: source`` in ``sources`` as a module file (``package.module`` as a file of the
    package's folder); returns ``site`` (put it on the path)."""
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
