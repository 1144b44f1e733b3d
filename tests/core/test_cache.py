"""The cache's own checks: `rebalance cache verify` finds entries changed after they were written."""

from __future__ import annotations

import textwrap
from pathlib import Path

from typer.testing import CliRunner

from rebalance import api
from rebalance.cli import app
from tests.helpers import REPO

TRAIN = REPO / "data" / "fashion_mnist_lt" / "train"


def small_pipeline(tmp_path: Path) -> Path:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            executor: {{kind: local}}
            steps:
              train: {{step: ingest_image_folder, root: {TRAIN}, max_images_per_class: 3}}
              sampled: {{step: repeat_factors, inputs: {{dataset: train}}, method: sqrt}}
            """
        )
    )
    return pipeline


def test_verify_finds_a_flipped_byte_and_a_partial_entry_and_names_the_command_that_drops_them(
    tmp_path: Path, run_dirs: list[str]
) -> None:
    pipeline = small_pipeline(tmp_path)
    api.run(pipeline, run_dirs)
    cache = tmp_path / "cache"
    assert {check.state for check in api.cache_verify(cache)} == {"ok"}

    sampled = next(p for p in api.plan(pipeline, run_dirs) if p.step.id == "sampled")
    entry = cache / "repeat_factors" / sampled.key
    victim = next(path for path in sorted(entry.rglob("*.parquet")))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    (cache / "repeat_factors" / "abandoned").mkdir()  # a folder no run finished

    result = CliRunner().invoke(app, ["cache", "verify", "--cache-dir", str(cache)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("1 ok, 1 corrupt, 1 partial, 0 unverified")
    relative = victim.relative_to(entry).as_posix()
    assert f"corrupt    repeat_factors/{sampled.key}: {relative}: content changed" in result.output
    assert "partial    repeat_factors/abandoned: no completion marker" in result.output
    drop = next(line for line in lines if line.startswith("drop them with: "))
    entries = " ".join(f"--entry repeat_factors/{name}" for name in sorted(["abandoned", sampled.key]))
    assert drop == f"drop them with: rebalance cache clear --cache-dir {cache} {entries}"

    cleared = CliRunner().invoke(app, drop.removeprefix("drop them with: rebalance ").split())
    assert cleared.exit_code == 0 and "removed 2 cache entries" in cleared.output
    assert [p.reason for p in api.plan(pipeline, run_dirs)] == ["cached", "not in cache"]
    api.run(pipeline, run_dirs)
    assert {check.state for check in api.cache_verify(cache)} == {"ok"}
