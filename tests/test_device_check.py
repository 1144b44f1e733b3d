"""The GPU node's one-command device check, run on the CPU as a smoke test of the same checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
@pytest.mark.cluster
def test_the_device_check_passes_on_the_cpu() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "device_check.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("device check on cpu (quick):") :]
    for check in ("tiny pipeline", "embedding", "search", "diffusion"):
        assert f"ok   {check}" in summary
    assert "embed: rebalance" in summary and "8 shards, 2 model loads" in summary
    assert summary.rstrip().endswith("all checks passed")


def test_asking_for_cuda_where_there_is_none_says_so() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "device_check.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2 and "no GPU is visible here" in done.stdout
