"""Steps come from the ``rebalance.steps`` entry points: a third-party package adds one exactly as the
built-in modules do, and a pipeline YAML uses it by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rebalance.core.registry import all_steps, get_step
from tests.helpers import REPO, install_plugin

KEEP_FIRST = '''
"""A third-party step: keep the first ``keep`` images of each class, record the rest as removed."""

import numpy as np

from rebalance.plugin import LabeledDataset, step


@step("keep_first_per_class", role="removes_rows", bypass="dataset")
def keep_first_per_class(dataset: LabeledDataset, *, keep: int = 2) -> LabeledDataset:
    """Keep the first ``keep`` images of each class."""
    labels = dataset.single_labels("keeping the first images of each class")
    seen = np.zeros(len(dataset.class_names()), dtype=int)
    drop = np.zeros(len(labels), dtype=bool)
    for row, label in enumerate(labels):
        drop[row] = seen[label] >= keep
        seen[label] += 1
    return dataset.drop(drop, "keep_first_per_class", [f"beyond the first {keep} of its class"] * int(drop.sum()))
'''


def test_the_built_in_steps_are_entry_points_too() -> None:
    from importlib.metadata import entry_points

    modules = {entry.value for entry in entry_points(group="rebalance.steps")}
    built_in = {
        spec.fn.__module__ for spec in all_steps().values() if spec.fn.__module__.startswith("rebalance.")
    }
    assert built_in and built_in <= modules
    assert get_step("retrieve").role == "adds_rows" and get_step("retrieve").bypass == "dataset"


def test_an_installed_plugin_step_runs_from_yaml(tmp_path: Path) -> None:
    site = install_plugin(
        tmp_path / "site", "rebalance-keep-first", {"keep_first": "keep_first"}, {"keep_first": KEEP_FIRST}
    )
    pipeline = tmp_path / "plugin.yaml"
    pipeline.write_text(
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {REPO / 'data/fashion_mnist_lt/train'}, max_images_per_class: 5}}\n"
        "  kept: {step: keep_first_per_class, inputs: {dataset: train}, keep: 3}\n"
        "  stats: {step: class_stats, inputs: {dataset: kept}}\n"
    )
    # A fresh interpreter, as a user's shell would start one: the plugin is found by its metadata only.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    rebalance = [str(Path(sys.executable).parent / "rebalance")]
    listed = subprocess.run([*rebalance, "steps"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "keep_first_per_class" in listed.stdout
    run = subprocess.run(
        [
            *rebalance,
            "run",
            str(pipeline),
            f"cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'out'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    stats = json.loads((tmp_path / "out" / "stats" / "summary.json").read_text())
    assert stats["images"] == 30 and stats["removed_images"] == 20  # 10 classes: 5 read, 3 kept
    without = subprocess.run(
        [*rebalance, "validate", str(pipeline)], capture_output=True, text=True, timeout=300
    )
    assert (
        without.returncode != 0 and "unknown step 'keep_first_per_class'" in without.stdout + without.stderr
    )


def test_a_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    site = install_plugin(
        tmp_path / "site",
        "rebalance-broken",
        {"broken": "broken_steps"},
        {"broken_steps": "import nowhere\n"},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "rebalance"), "steps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode != 0
    assert "step plugin 'broken' (broken_steps" in listed.stdout + listed.stderr
    assert "Traceback" not in listed.stderr
