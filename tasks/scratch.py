"""Where a task's files live while it works: a private scratch directory on local disk.

An item's first task and every slice stream the input from the blob store into their scratch
directory (``BlobStore.download_to``, which hashes the bytes on the way for the sha256 checks)
and hand the sandbox child its path, so the input is never whole in the worker's memory,
whatever its size (``PAGELANE_MAX_FILE_BYTES``, 150 MB by default); the last slice writes the
assembled result there before uploading it. Two slices of one document on one machine each
read their own copy, so neither depends on the other's task being alive.

A directory is removed when its task ends, but nothing runs in a process killed with -9 (the
OOM killer, a lost node's kill): the directory's name carries the pid of its process, and
:func:`remove_orphaned_scratch` (run when a pool child builds its context, so also by the child
that replaces a killed one) removes the directories of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "pagelane-work-"
_SCRATCH_NAME = re.compile(rf"{re.escape(SCRATCH_PREFIX)}(\d+)-")


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh private (0700) directory, removed on exit with whatever was written in it."""
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as directory:
        yield Path(directory)


def remove_orphaned_scratch(root: Path | None = None) -> int:
    """Remove the scratch directories of processes that no longer exist; returns how many."""
    removed = 0
    for entry in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        match = _SCRATCH_NAME.match(entry.name)
        if match is None or _alive(int(match.group(1))) or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d scratch directories of killed worker processes", removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and its files are not ours anyway
    return True
