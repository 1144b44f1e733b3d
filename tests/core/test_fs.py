from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rebalance.core.fs import atomic_dir, remove_stale_temps, temp_sibling, write_json_atomic


def test_atomic_dir_publishes_complete_folders_only(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), atomic_dir(final) as temp:
        (temp / "part").write_text("half")
        raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as temp:
        (temp / "part").write_text("whole")
    with atomic_dir(final) as temp:
        (temp / "other").write_text("replaced")
    assert [p.name for p in final.iterdir()] == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_write_json_atomic_round_trips(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a" / "m.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a" / "m.json").read_text().startswith('{\n  "a"')


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    live = temp_sibling(tmp_path / "key")
    live.mkdir()
    stale = Path(str(live).replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    stale.mkdir()
    assert remove_stale_temps(tmp_path, "key") == 1
    assert live.exists() and not stale.exists()
