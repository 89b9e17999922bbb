"""Batch control (SPEC "Batch control"): retry only what failed, and delete data on demand.

The API's endpoints (``service/api/control.py``) call these; they never extract anything.

Retry: the parent's retryable failures (and its cancelled items when asked) become the items of
a new batch that names the parent in ``parent_batch_id``. Each of the parent's items is retried
at most once: items already in one of the parent's children are left out, so retrying a parent
twice finds nothing the second time (retry the child instead), and nothing is processed or
billed twice. The parent's row lock serialises concurrent retries of one parent.

Delete: a file's input blob is deleted at once and the file row marked ``deleted_at`` (items
keep their foreign key to it; the API answers 404); its pending items fail ``upload_missing``
at once. A terminal batch's result blobs are deleted at once and its item and batch rows are
deleted (its billing rows stay: they carry the batch id as a plain column, for accounting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.orm import Session, aliased

from service import lifecycle
from service.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    Customer,
    File,
    FileStatus,
    IdempotencyKey,
    Item,
    ItemStatus,
)
from service.storage import BlobStore

#: Item error codes a retry can help with (SPEC "Batch control"); ``upload_missing`` only when
#: the file's bytes are in the store again.
RETRYABLE_CODES = ("ocr_provider_error", "internal_error", "payment_required")
UPLOAD_MISSING = "upload_missing"
# At most this many HEAD requests to see whether upload_missing files came back; above it, one
# listing of their key ranges (service.uploads).
HEAD_LIMIT = 16


class ControlError(Exception):
    """A refusal with a public error code; the API maps it to its HTTP status."""

    def __init__(self, code: str, message: str, **context: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.context = context


class NotFoundError(ControlError):
    def __init__(self, what: str) -> None:
        super().__init__("not_found", f"{what} not found")


def owned_batch(session: Session, customer_id: str, batch_id: str, *, lock: bool = False) -> Batch:
    statement = select(Batch).where(Batch.id == batch_id, Batch.customer_id == customer_id)
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    batch = session.scalar(statement)
    if batch is None:
        raise NotFoundError("batch")
    return batch


# --- retry -------------------------------------------------------------------------------------


@dataclass
class RetryPlan:
    parent: Batch
    file_ids: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def plan_retry(
    session: Session,
    store: BlobStore | None,
    customer_id: str,
    batch_id: str,
    *,
    include_cancelled: bool,
) -> RetryPlan:
    """Lock the parent and choose the file ids of its retry, in the parent's position order.

    Raises ``batch_not_terminal`` while the parent runs and ``nothing_to_retry`` when no item
    qualifies. Only the parent's failed (and cancelled) items are read, through the items'
    (batch_id, status) index: a 10,000-item parent with 100 failures reads 100 rows.
    """
    parent = owned_batch(session, customer_id, batch_id, lock=True)
    if parent.status not in TERMINAL_BATCH_STATUSES:
        raise ControlError(
            "batch_not_terminal",
            f"batch is {parent.status}; retry it once it has finished (or cancel it first)",
            status=parent.status,
        )
    child_items = aliased(Item)
    child_batches = aliased(Batch)
    already_retried = exists().where(
        child_items.batch_id == child_batches.id,
        child_batches.parent_batch_id == parent.id,
        child_items.file_id == Item.file_id,
    )
    wanted = [
        and_(
            Item.status == ItemStatus.FAILED,
            Item.error_code.in_((*RETRYABLE_CODES, UPLOAD_MISSING)),
        )
    ]
    if include_cancelled:
        wanted.append(Item.status == ItemStatus.CANCELLED)
    rows = session.execute(
        select(
            Item.file_id,
            Item.error_code,
            File.status,
            File.deleted_at,
            File.blob_key,
        )
        .join(File, File.id == Item.file_id)
        .where(
            Item.batch_id == parent.id,
            Item.status.in_((ItemStatus.FAILED, ItemStatus.CANCELLED)),
            or_(*wanted),
            ~already_retried,
        )
        .order_by(Item.position)
    ).all()
    plan = RetryPlan(parent)

    def stored(row: Any) -> bool:
        return row.deleted_at is None and row.status == FileStatus.UPLOADED

    missing = [r.blob_key for r in rows if stored(r) and r.error_code == UPLOAD_MISSING]
    back = _present(store, missing) if missing else set()
    for row in rows:
        if not stored(row):
            # Expired, deleted or never uploaded: a retry could only fail upload_missing again.
            plan.skipped["file_gone"] = plan.skipped.get("file_gone", 0) + 1
        elif row.error_code == UPLOAD_MISSING and row.blob_key not in back:
            plan.skipped["still_missing"] = plan.skipped.get("still_missing", 0) + 1
        else:
            plan.file_ids.append(row.file_id)
    if not plan.file_ids:
        raise ControlError(
            "nothing_to_retry",
            "the batch has no item to retry (only failures with a retryable code, and"
            " cancelled items when include_cancelled is true, whose file is still stored,"
            " and that no earlier retry of this batch took)",
            skipped=plan.skipped,
        )
    return plan


def create_retry(
    session: Session,
    plan: RetryPlan,
    customer: Customer,
    *,
    now: datetime,
    retention: timedelta,
) -> Batch:
    parent = plan.parent
    batch = lifecycle.create_batch(
        session,
        customer=customer,
        file_ids=plan.file_ids,
        options=dict(parent.options),
        metadata=dict(parent.metadata_),
        engine=parent.engine,
        now=now,
        retention=retention,
    )
    batch.parent_batch_id = parent.id
    return batch


def _present(store: BlobStore | None, keys: Sequence[str]) -> set[str]:
    if store is None:
        return set()
    if len(keys) <= HEAD_LIMIT:
        return {key for key in keys if store.head(key) is not None}
    from service.uploads import _listed_keys

    return _listed_keys(store, list(keys))


# --- delete ------------------------------------------------------------------------------------


def delete_file(
    session: Session, store: BlobStore | None, customer_id: str, file_id: str, now: datetime
) -> File:
    """Delete the input blob now and mark the file deleted (then 404 everywhere)."""
    file = session.scalar(
        select(File)
        .where(File.id == file_id, File.customer_id == customer_id, File.deleted_at.is_(None))
        .with_for_update()
    )
    if file is None:
        raise NotFoundError("file")
    if store is not None:
        # Inside the transaction: if the store fails, nothing is marked and the client retries.
        store.delete_many([file.blob_key])
    file.status = FileStatus.EXPIRED
    file.deleted_at = now
    file.input_deleted_at = file.input_deleted_at or now
    return file


def pending_batches_of_file(session: Session, file_id: str) -> list[str]:
    return sorted(
        set(
            session.scalars(
                select(Item.batch_id).where(
                    Item.file_id == file_id, Item.status == ItemStatus.PENDING
                )
            )
        )
    )


def fail_pending_items_of_file(
    session: Session, batch_id: str, file_id: str, now: datetime
) -> tuple[int, list[str]]:
    """In one batch (locked here): the file's pending items → failed ``upload_missing``.

    Returns how many failed and which of them held an admission slot (to release)."""
    batch = lifecycle.lock_batch(session, batch_id)
    admitted = list(
        session.scalars(
            select(Item.id).where(
                Item.batch_id == batch_id,
                Item.file_id == file_id,
                Item.status == ItemStatus.PENDING,
                Item.admitted_at.is_not(None),
            )
        )
    )
    failed = lifecycle.move_items_in_bulk(
        session,
        batch,
        ItemStatus.PENDING,
        ItemStatus.FAILED,
        now,
        extra_where=[Item.file_id == file_id],
        completed_at=now,
        admitted_at=None,
        retry_at=None,
        error_code=UPLOAD_MISSING,
        error_message="the input file was deleted",
    )
    return failed, admitted


def delete_batch(session: Session, store: BlobStore | None, customer_id: str, batch_id: str) -> int:
    """Delete a terminal batch: its result blobs now, then its item and batch rows.

    Returns how many result blobs were deleted. ``batch_not_terminal`` otherwise."""
    batch = owned_batch(session, customer_id, batch_id, lock=True)
    if batch.status not in TERMINAL_BATCH_STATUSES:
        raise ControlError(
            "batch_not_terminal",
            f"batch is {batch.status}; cancel it and wait for its running items first",
            status=batch.status,
        )
    keys = list(
        session.scalars(
            select(Item.result_key).where(
                Item.batch_id == batch_id,
                Item.result_key.is_not(None),
                Item.result_deleted_at.is_(None),
            )
        )
    )
    if store is not None and keys:
        for start in range(0, len(keys), 1000):
            store.delete_many([k for k in keys[start : start + 1000] if k])
    session.execute(
        delete(Item).where(Item.batch_id == batch_id).execution_options(synchronize_session=False)
    )
    # A replay of the submit that created it must not bring back a deleted batch's id.
    session.execute(
        delete(IdempotencyKey)
        .where(IdempotencyKey.customer_id == customer_id, IdempotencyKey.batch_id == batch_id)
        .execution_options(synchronize_session=False)
    )
    # Children keep the id of a deleted parent (a dangling reference, like any deleted id).
    session.delete(batch)
    return len(keys)
