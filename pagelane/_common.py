"""What the blocking and the asyncio clients share that is neither sending nor waiting: sizes,
the user agent, upload instructions and body lengths. (The retry rules are in
:mod:`pagelane.protocol`.)"""

from __future__ import annotations

import os
from pathlib import Path

from pagelane._version import __version__
from pagelane.models import File, UploadInstructions

UploadSource = bytes | str | os.PathLike[str]
# Bodies up to this size are read whole; larger ones stream from disk in blocks.
STREAM_THRESHOLD = 8 * 1024 * 1024
BLOCK_SIZE = 1024 * 1024
# A change feed polls this soon after a page that had changes (poll_interval is the longest
# wait, reached when nothing changes): the last result of a batch arrives a quarter second
# after it is ready instead of up to a full interval later.
QUICK_POLL_SECONDS = 0.25


def user_agent() -> str:
    return f"pagelane-python/{__version__}"


def upload_instructions(file: File | UploadInstructions) -> UploadInstructions:
    if isinstance(file, UploadInstructions):
        return file
    if file.upload is None:
        raise ValueError(
            f"{file.id} has no upload instructions: only the answer to files.create carries them"
        )
    return file.upload


def source_length(source: UploadSource) -> int:
    if isinstance(source, bytes):
        return len(source)
    return Path(source).stat().st_size
