"""The module paths that moved in the layering keep working for one release, with a warning."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from rebalance.core.moved import MOVED, current_name

# What users' code imports today, as the issue listed it: each name must still resolve.
USED_NAMES = {
    "rebalance.frequency": "count_concepts",
    "rebalance.sampling": "repeat_factors",
    "rebalance.retrieval": "class_quotas",
    "rebalance.index": "build_index",
    "rebalance.dedup": "semdedup",
    "rebalance.entities": "count_entities",
    "rebalance.text.counter": "PhraseIndex",
    "rebalance.text.normalize": "readable",
    "rebalance.core.artifacts": "LabeledDataset",
    "rebalance.core.artifacts.base": "TableArtifact",
    "rebalance.models.device": "resolve_device",
}


def test_every_old_path_gives_the_new_module_with_a_deprecation_warning() -> None:
    # A fresh interpreter: a module imported once is never announced again.
    script = textwrap.dedent(
        f"""
        import importlib, json, warnings
        import rebalance
        from rebalance.core.moved import MOVED
        results = {{}}
        for old, new in MOVED.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = importlib.import_module(old)
            results[old] = {{
                "same": module is importlib.import_module(new),
                "warnings": [str(w.message) for w in caught if w.category is DeprecationWarning],
                "where": [w.filename for w in caught],
            }}
        names = {USED_NAMES!r}
        results["names"] = {{old: hasattr(importlib.import_module(old), name) for old, name in names.items()}}
        print(json.dumps(results))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    results = json.loads(done.stdout)
    for old, new in MOVED.items():
        assert results[old]["same"], old
        assert len(results[old]["warnings"]) == 1 and new in results[old]["warnings"][0], (old, results[old])
        # The warning points at the line that imported the old path, not at the import machinery.
        assert not any("importlib" in where or "moved.py" in where for where in results[old]["where"])
    assert all(results["names"].values()), results["names"]
    # The paths that did not move are not announced: io.coco.read_coco is where it was.
    quiet = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "from rebalance.io.coco import read_coco"],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0, quiet.stderr


def test_a_moved_path_names_where_the_module_is_now() -> None:
    assert current_name("rebalance.frequency") == "rebalance.methods.frequency"
    assert current_name("rebalance.core.artifacts.dataset") == "rebalance.domain.artifacts.dataset"
    assert current_name("rebalance.methods.frequency") == "rebalance.methods.frequency"
    assert current_name("rebalance.frequencies") == "rebalance.frequencies"
