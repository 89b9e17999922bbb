"""Where a task's input lives while it is worked on: a private temporary file.

An item's first task and every slice stream the input from the blob store into a file of their
own (``BlobStore.download_to``, which hashes the bytes on the way for the sha256 checks) and hand
the sandbox child its path; the input is never whole in the worker's memory, whatever its size
(``PAGELANE_MAX_FILE_BYTES``, 150 MB by default), and two slices of one document on one machine
each read their own copy, so neither depends on the other's task being alive.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def private_input_path() -> Iterator[Path]:
    """A path in a fresh private (0700) directory, both removed on exit whatever was written."""
    with tempfile.TemporaryDirectory(prefix="pagelane-input-") as directory:
        yield Path(directory) / "input"
