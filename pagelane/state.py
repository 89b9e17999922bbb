"""The run's memory: ``OUT/.pagelane-run.json``.

It records, per input file, what the server knows of it (file id, whether its bytes are
uploaded, its item's id and outcome) and, per batch, the Idempotency-Key it was submitted with,
its id and the poll cursor. A rerun reads it and does only what is missing.

Consistency rules the runner keeps:

* The file is replaced atomically (temp file, fsync, rename): a crash or a second Ctrl-C leaves
  the previous version or the new one, never a torn one.
* A batch's files and Idempotency-Key are saved *before* it is submitted, so a crash between the
  server creating it and us recording its id is repaired by resubmitting: same key, same body,
  same batch.
* A cursor is saved only together with the outcomes of the items it moved past.
* Saves are throttled (``SAVE_INTERVAL``): for 10,000 files the state is a few MB, and writing it
  after every upload would cost more than the uploads. What a hard kill can lose is at most that
  interval's progress, and every step is safe to redo (an upload whose record was lost is found
  with ``GET /v1/files/{id}`` before anything is sent again).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from pagelane.models import ItemError, UploadInstructions

STATE_FILENAME = ".pagelane-run.json"
STATE_VERSION = 1
SAVE_INTERVAL = 1.0  # seconds between throttled saves


class StateError(Exception):
    """The state file cannot be used for this run (unreadable, or another run's)."""


class FileEntry(BaseModel):
    size: int
    mtime_ns: int
    sha256: str | None = None
    file_id: str | None = None
    upload: UploadInstructions | None = None  # kept until the bytes are uploaded
    uploaded: bool = False
    item_id: str | None = None
    status: str | None = None  # the item's status, or "rejected" when never sent
    page_count: int | None = None
    error: ItemError | None = None  # why the item failed or the file was not sent
    download_error: ItemError | None = None  # a succeeded item whose result could not be saved

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


class BatchEntry(BaseModel):
    idempotency_key: str
    files: list[str]  # relative paths, in the order of the submitted file_ids
    id: str | None = None
    cursor: str | None = None
    status: str | None = None
    drained: bool = False  # every item's final state has been seen


class RunState(BaseModel):
    version: int = STATE_VERSION
    api_url: str
    source: str
    options: dict[str, Any]
    elapsed_seconds: float = 0.0
    files: dict[str, FileEntry] = Field(default_factory=dict)
    batches: list[BatchEntry] = Field(default_factory=list)


class StateStore:
    """Owns the state object and its file; :meth:`touch` marks a change, :meth:`save` writes."""

    def __init__(self, path: Path, state: RunState) -> None:
        self.path = path
        self.state = state
        self._dirty = False
        self._saved_at = 0.0

    @classmethod
    def open(cls, out: Path, *, api_url: str, source: Path, options: dict[str, Any]) -> StateStore:
        """The run state in ``out``, or a fresh one. Refuses a state written for another
        folder, API or options: its file ids and batches would mean nothing here."""
        path = out / STATE_FILENAME
        if not path.exists():
            fresh = RunState(api_url=api_url, source=str(source), options=options)
            return cls(path, fresh)
        try:
            state = RunState.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise StateError(f"{path} is unreadable ({exc}); move it away to start over") from exc
        if state.version != STATE_VERSION:
            raise StateError(f"{path} was written by another version of pagelane")
        mismatches = [
            f"{what} was {was!r}, now {now!r}"
            for what, was, now in (
                ("the input folder", state.source, str(source)),
                ("the API", state.api_url, api_url),
                ("the batch options", state.options, options),
            )
            if was != now
        ]
        if mismatches:
            raise StateError(
                f"{out} holds another run ({'; '.join(mismatches)}): "
                "rerun with the same arguments, or choose another --out"
            )
        return cls(path, state)

    def touch(self) -> None:
        self._dirty = True

    def save_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self.save()

    def save(self) -> None:
        """Write the state now, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.state.model_dump_json(exclude_defaults=False).encode()
        write_atomically(self.path, data)
        self._dirty = False
        self._saved_at = time.monotonic()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old bytes or the new, never a mix."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
