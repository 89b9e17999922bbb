"""Scratch directories (tasks/scratch.py): removed when their task ends, and those of killed
processes removed by the next pool child, never those of live ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.scratch import SCRATCH_PREFIX, remove_orphaned_scratch, scratch_dir


def test_a_scratch_directory_is_private_and_gone_after_its_task() -> None:
    with scratch_dir() as scratch:
        (scratch / "input").write_bytes(b"x" * 10)
        assert scratch.name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
        assert scratch.stat().st_mode & 0o777 == 0o700
    assert not scratch.exists()

    with pytest.raises(RuntimeError), scratch_dir() as failing:
        (failing / "input").write_bytes(b"y")
        raise RuntimeError("the task failed")
    assert not failing.exists()


def test_only_the_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    # A pid that existed and is gone: a child that has exited and been reaped.
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(finished.stdout)
    killed = tmp_path / f"{SCRATCH_PREFIX}{dead_pid}-abc"
    (killed / "sub").mkdir(parents=True)
    (killed / "input").write_bytes(b"left behind by kill -9")
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    live.mkdir()
    unrelated = tmp_path / "pagelane-other-1-x"
    unrelated.mkdir()

    assert remove_orphaned_scratch(tmp_path) == 1

    assert not killed.exists()
    assert live.exists() and unrelated.exists()
