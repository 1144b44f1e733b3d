"""Code in the cache key: what a step's fingerprint covers, and what a code change reruns."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rebalance.core.fingerprint import CodeFingerprinter, normalised_digest
from rebalance.core.registry import all_steps
from tests.helpers import REPO, install_plugin

TRAIN = REPO / "data" / "fashion_mnist_lt" / "train"
REBALANCE = [str(Path(sys.executable).parent / "rebalance")]


def digest(source: str) -> str:
    return normalised_digest(ast.parse(textwrap.dedent(source)))


def test_docstrings_comments_and_error_messages_do_not_count_code_does() -> None:
    base = digest(
        '''
        """Module docstring."""
        def f(x):
            """Doc."""
            if x < 0:
                raise ValueError(f"negative: {x}") from None
            assert x == x, "not a number"
            return x + 1  # one more
        '''
    )
    reworded = digest(
        '''
        """Another docstring."""
        def f(x):
            # a comment now
            if x < 0:
                raise ValueError("x must be >= 0; got " + str(x))
            assert x == x, "NaN"
            return x + 1
        '''
    )
    assert base == reworded
    for changed in (
        "def f(x):\n    if x < 0:\n        raise ValueError('')\n    assert x == x\n    return x + 2\n",
        "def f(x):\n    if x <= 0:\n        raise ValueError('')\n    assert x == x\n    return x + 1\n",
        "def f(x):\n    if x < 0:\n        raise TypeError('')\n    assert x == x\n    return x + 1\n",
        "def f(x):\n    if x < 0:\n        raise ValueError('')\n    assert x != x\n    return x + 1\n",
    ):
        assert digest(changed) != base, changed


def test_a_step_fingerprint_follows_the_modules_that_do_the_work_not_the_runtime() -> None:
    fingerprints = CodeFingerprinter()
    steps = all_steps()
    retrieve = fingerprints.fingerprint(steps["retrieve"].fn.__module__)
    # Its own module, methods it imports at the top and lazily, and what those import in turn.
    assert {
        "rebalance/steps/retrieve.py",
        "rebalance/methods/retrieval.py",
        "rebalance/methods/index.py",
    } <= set(retrieve)
    assert "rebalance/models/encoders.py" in retrieve and "rebalance/domain/classes.py" in retrieve
    # The runtime decides whether a step runs, not what it writes: never part of a key.
    for fingerprint in (fingerprints.fingerprint(spec.fn.__module__) for spec in steps.values()):
        runtime = [
            path
            for path in fingerprint
            if path.startswith(("rebalance/core/", "rebalance/errors", "rebalance/cli", "rebalance/api"))
            and path not in ("rebalance/core/artifact.py", "rebalance/core/markdown.py")
        ]
        assert runtime == []
    # A method module no step of the module imports stays out: counting is not in sampling's key.
    assert "rebalance/methods/counter.py" not in fingerprints.fingerprint(
        steps["repeat_factors"].fn.__module__
    )


def write_pipeline(path: Path, steps: str) -> Path:
    path.write_text(f"executor: {{kind: local}}\nsteps:\n{textwrap.indent(textwrap.dedent(steps), '  ')}")
    return path


def rebalance(*args: str, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    """The command as a user's shell runs it, importing rebalance (and plugins) from ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    done = subprocess.run([*REBALANCE, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def plan_lines(pipeline: Path, dirs: list[str], pythonpath: list[Path]) -> dict[str, tuple[str, str]]:
    """step id -> (reason, key), as `rebalance plan` prints them."""
    lines = rebalance("plan", str(pipeline), *dirs, pythonpath=pythonpath).stdout.splitlines()[:-1]
    plans = {}
    for line in lines:
        words = line.split()
        plans[words[1]] = (" ".join(words[3:-2]), words[-1])
    return plans


def executed(output: Path) -> list[str]:
    manifest = json.loads((output / "manifest.json").read_text())
    return [step["id"] for step in manifest["steps"] if step["cache"] == "miss"]


PLUGIN = {
    "myplug.__init__": "",
    "myplug.steps": '''
from rebalance.plugin import LabeledDataset, step
from myplug.helpers import rows_to_drop


@step("drop_every_nth", role="removes_rows", bypass="dataset")
def drop_every_nth(dataset: LabeledDataset, *, n: int = 3) -> LabeledDataset:
    """Drop every n-th image."""
    drop = rows_to_drop(dataset.num_rows, n)
    return dataset.drop(drop, "drop_every_nth", ["every n-th"] * int(drop.sum()))
''',
    "myplug.helpers": """
from myplug.kernel import every


def rows_to_drop(count, n):
    return every(count, n)
""",
    # Two imports away from the step's module.
    "myplug.kernel": '''
import numpy as np


def every(count, n):
    """Which of ``count`` rows are every n-th."""
    if n < 1:
        raise ValueError("n must be positive")
    return np.arange(count) % n == 0
''',
    "myplug.unrelated": "def other():\n    return 1\n",
}


def test_a_plugin_helper_two_imports_away_reruns_its_step_and_downstream(tmp_path: Path) -> None:
    site = install_plugin(tmp_path / "site", "rebalance-myplug", {"myplug": "myplug.steps"}, PLUGIN)
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        f"""
        train: {{step: ingest_image_folder, root: {TRAIN}, max_images_per_class: 4}}
        dropped: {{step: drop_every_nth, inputs: {{dataset: train}}, n: 2}}
        stats: {{step: class_stats, inputs: {{dataset: dropped}}}}
        """,
    )
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    path = [site, REPO]
    rebalance("run", str(pipeline), *dirs, pythonpath=path)
    kernel = site / "myplug" / "kernel.py"
    source = kernel.read_text()

    # A comment, a docstring, an error message, and a module no step imports: nothing reruns.
    kernel.write_text(
        source.replace('"""Which of ``count`` rows are every n-th."""', "# every n-th row").replace(
            "n must be positive", "n must be 1 or more"
        )
    )
    (site / "myplug" / "unrelated.py").write_text("def other():\n    return 2\n")
    assert {reason for reason, _ in plan_lines(pipeline, dirs, path).values()} == {"cached"}

    kernel.write_text(source.replace("% n == 0", "% n == 1"))
    reasons = {step: reason for step, (reason, _) in plan_lines(pipeline, dirs, path).items()}
    assert reasons == {
        "train": "cached",
        "dropped": "code changed: myplug/kernel.py",
        "stats": "upstream changed: dropped (code changed: myplug/kernel.py)",
    }
    rebalance("run", str(pipeline), *dirs, pythonpath=path)
    assert executed(tmp_path / "out") == ["dropped", "stats"]


def copy_of_the_package(folder: Path) -> Path:
    """A second checkout of rebalance's source in another folder."""
    shutil.copytree(REPO / "rebalance", folder / "rebalance", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.mark.slow
def test_keys_are_the_same_from_clones_in_other_folders_and_only_code_that_computes_reruns(
    tmp_path: Path,
) -> None:
    one, two = copy_of_the_package(tmp_path / "one"), copy_of_the_package(tmp_path / "two")
    pipeline = write_pipeline(
        tmp_path / "p.yaml",
        f"""
        train: {{step: ingest_image_folder, root: {TRAIN}, max_images_per_class: 4}}
        sampled: {{step: repeat_factors, inputs: {{dataset: train}}, method: rfs}}
        stats: {{step: class_stats, inputs: {{dataset: sampled}}}}
        """,
    )
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    planned = {key for _, key in plan_lines(pipeline, dirs, [one]).values()}
    assert planned == {key for _, key in plan_lines(pipeline, dirs, [two]).values()} and len(planned) == 3
    rebalance("run", str(pipeline), *dirs, pythonpath=[one])
    assert {reason for reason, _ in plan_lines(pipeline, dirs, [two]).values()} == {"cached"}

    def edit(relative: str, old: str, new: str) -> None:
        path = two / relative
        text = path.read_text()
        assert old in text, (relative, old)
        path.write_text(text.replace(old, new, 1))

    # The runtime, an error message, a comment, an unrelated method: every step stays cached.
    edit("rebalance/errors.py", "exit_code = 3", "exit_code = 3  # data errors")
    edit("rebalance/core/runner.py", 'MANIFEST = "manifest.json"', 'MANIFEST = "manifest.json"\n_UNUSED = 1')
    edit(
        "rebalance/steps/sampling.py",
        "from rebalance.errors import DataError",
        "from rebalance.errors import DataError  # noqa",
    )
    edit("rebalance/methods/dedup.py", "import numpy as np", "import numpy as np\n\n_UNUSED = 1")
    edit("rebalance/io/image_folder.py", "no class folders found", "found no class folders")
    assert {reason for reason, _ in plan_lines(pipeline, dirs, [two]).values()} == {"cached"}

    # A change to the sampling method reruns the step that calls it and what reads its output.
    edit("rebalance/methods/sampling.py", "import numpy as np", "import numpy as np\n\n_UNUSED = 1")
    reasons = {step: reason for step, (reason, _) in plan_lines(pipeline, dirs, [two]).items()}
    assert reasons == {
        "train": "cached",
        "sampled": "code changed: rebalance/methods/sampling.py",
        "stats": "upstream changed: sampled (code changed: rebalance/methods/sampling.py)",
    }

    # Its author knows the output is unchanged: keep it, and what reads it stays cached.
    kept = rebalance("cache", "keep", str(pipeline), "sampled", *dirs, pythonpath=[two])
    assert "kept sampled (repeat_factors)" in kept.stdout
    reasons = {step: reason for step, (reason, _) in plan_lines(pipeline, dirs, [two]).items()}
    assert reasons == {
        "train": "cached",
        "sampled": "kept by `rebalance cache keep` (code changed: rebalance/methods/sampling.py)",
        "stats": "cached",
    }
    rebalance("run", str(pipeline), *dirs, pythonpath=[two])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    sampled = next(step for step in manifest["steps"] if step["id"] == "sampled")
    assert sampled["cache"] == "hit" and sampled["kept"]["code_changed"] == ["rebalance/methods/sampling.py"]
    assert sampled["kept"]["key"] == sampled["key"] != sampled["kept"]["code_key"]
