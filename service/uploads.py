"""Registering uploads and noticing when their bytes arrive.

There is no "confirm upload" call: the client PUTs to the presigned URL and we look at the blob
store when it matters (reading a file, submitting a batch). For a handful of files one HEAD
each is cheapest; for thousands, one listing of the customer's input prefix (1,000 keys a call)
answers them all, where one HEAD per file (~3 ms each) could not finish in a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.clock import isoformat, utcnow
from service.ids import new_id
from service.models import File, FileStatus
from service.schemas import CreateFile
from service.settings import Settings
from service.storage import BlobStore

# Above this many unseen files, list the prefix instead of one HEAD per file.
HEAD_LIMIT = 16


def input_key(customer_id: str, file_id: str) -> str:
    return f"{customer_id}/inputs/{file_id}"


def input_prefix(customer_id: str) -> str:
    return f"{customer_id}/inputs/"


def result_key(customer_id: str, batch_id: str, item_id: str) -> str:
    return f"{customer_id}/results/{batch_id}/{item_id}.json"


def register_files(
    session: Session,
    store: BlobStore,
    settings: Settings,
    customer_id: str,
    requests: Sequence[CreateFile],
) -> list[tuple[File, dict[str, Any]]]:
    """Insert the file rows and presign one PUT each; returns (row, upload instructions)."""
    now = utcnow()
    registered = []
    for request in requests:
        file_id = new_id("file")
        file = File(
            id=file_id,
            customer_id=customer_id,
            status=FileStatus.AWAITING_UPLOAD,
            size_bytes=request.size_bytes,
            filename=request.filename,
            content_type=request.content_type,
            sha256_declared=request.sha256,
            sha256=None,
            blob_key=input_key(customer_id, file_id),
            created_at=now,
            expires_at=now + timedelta(hours=settings.retention_hours),
        )
        presigned = store.presign_put(
            file.blob_key,
            content_length=request.size_bytes,
            content_type=None,
            expires_in=settings.upload_url_ttl_seconds,
        )
        upload = {
            "method": presigned.method,
            "url": presigned.url,
            "headers": presigned.headers,
            "expires_at": isoformat(presigned.expires_at),
        }
        registered.append((file, upload))
    session.add_all([file for file, _ in registered])
    return registered


def refresh_uploads(session: Session, store: BlobStore, files: Sequence[File]) -> None:
    """Mark ``awaiting_upload`` files whose bytes are now in the store as ``uploaded``.

    Files past their window become ``expired`` instead (SPEC: awaiting_upload → expired).
    """
    now = utcnow()
    waiting = [f for f in files if f.status == FileStatus.AWAITING_UPLOAD]
    _set_status(session, [f for f in waiting if f.expires_at <= now], FileStatus.EXPIRED, now)
    waiting = [f for f in waiting if f.expires_at > now]
    if not waiting:
        return
    if len(waiting) <= HEAD_LIMIT:
        present = {f.blob_key for f in waiting if store.head(f.blob_key) is not None}
    else:
        wanted = {f.blob_key for f in waiting}
        present = {
            info.key
            for customer_id in {f.customer_id for f in waiting}
            for info in store.list_prefix(input_prefix(customer_id))
            if info.key in wanted
        }
    _set_status(session, [f for f in waiting if f.blob_key in present], FileStatus.UPLOADED, now)


def _set_status(session: Session, files: Sequence[File], status: FileStatus, now: datetime) -> None:
    if not files:
        return
    values: dict[str, Any] = {"status": status}
    if status == FileStatus.UPLOADED:
        values["uploaded_at"] = now
    # One statement for any number of rows (the ORM would send one UPDATE per row); the
    # condition keeps a concurrent refresh from moving a file twice.
    session.execute(
        update(File)
        .where(File.id.in_([f.id for f in files]), File.status == FileStatus.AWAITING_UPLOAD)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    for file in files:
        for name, value in values.items():
            set_committed_value(file, name, value)
