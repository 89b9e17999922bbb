"""Batch and item state changes, shared by the API, the workers and the sweeps.

Polling never skips an update (ARCHITECTURE decision 6) because of one rule kept here: every
change to an item happens in a transaction that holds its batch's row lock, and takes the next
number of the batch's ``change_seq`` inside it. Change numbers therefore become visible in the
order they were handed out, and a poller reading ``change_seq > cursor`` cannot miss a row that
commits late with a smaller number. ``updated_at`` is taken inside the same lock, so the order
by ``(updated_at, item_id)`` that SPEC promises is the same order.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from service.clock import utcnow
from service.ids import new_id, new_ids_in_order
from service.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchStatus,
    Customer,
    Item,
    ItemStatus,
)

_COUNT_COLUMN = {
    ItemStatus.PENDING: "count_pending",
    ItemStatus.RUNNING: "count_running",
    ItemStatus.SUCCEEDED: "count_succeeded",
    ItemStatus.FAILED: "count_failed",
    ItemStatus.CANCELLED: "count_cancelled",
}


class InvalidCursorError(ValueError):
    pass


# --- cursors ---------------------------------------------------------------------------------


def encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, required: Sequence[str]) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursorError("cursor is not one this API returned") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise InvalidCursorError("cursor is not one this API returned")
    return payload


def item_cursor(change_seq: int) -> str:
    return encode_cursor({"s": change_seq})


def decode_item_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    seq = decode_cursor(cursor, ["s"])["s"]
    if not isinstance(seq, int) or seq < 0:
        raise InvalidCursorError("cursor is not one this API returned")
    return seq


# --- locking and status ------------------------------------------------------------------------


def lock_batch(session: Session, batch_id: str) -> Batch:
    """The batch row, locked for the rest of the transaction (SQLite: BEGIN IMMEDIATE did it)."""
    batch = session.scalar(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if batch is None:
        raise LookupError(batch_id)
    return batch


def change_stamp(now: datetime) -> datetime:
    """``updated_at`` for a change made now, under the batch lock.

    Callers may have taken ``now`` before waiting for the lock (or inject a clock in tests);
    reading the clock again here, inside the lock, keeps ``updated_at`` in the same order as
    the change numbers.
    """
    return max(now, utcnow())


def refresh_batch_status(batch: Batch, now: datetime) -> None:
    """Apply SPEC's batch status rules to the counters."""
    if batch.status in TERMINAL_BATCH_STATUSES:
        return
    if batch.count_pending == 0 and batch.count_running == 0:
        if batch.count_succeeded > 0:
            batch.status = (
                BatchStatus.PARTIALLY_FAILED if batch.count_failed > 0 else BatchStatus.COMPLETED
            )
        elif batch.cancel_requested_at is not None:
            batch.status = BatchStatus.CANCELLED
        else:
            batch.status = BatchStatus.FAILED
        batch.completed_at = now
    elif batch.started_at is not None:
        batch.status = BatchStatus.RUNNING


def move_item(
    session: Session, batch: Batch, item: Item, new_status: ItemStatus, now: datetime, **fields: Any
) -> None:
    """One item's transition, with its counters; the caller holds the batch lock."""
    stamp = change_stamp(now)
    old_status = ItemStatus(item.status)
    if old_status != new_status:
        setattr(batch, _COUNT_COLUMN[old_status], getattr(batch, _COUNT_COLUMN[old_status]) - 1)
        setattr(batch, _COUNT_COLUMN[new_status], getattr(batch, _COUNT_COLUMN[new_status]) + 1)
        item.status = new_status
    if new_status == ItemStatus.RUNNING and batch.started_at is None:
        batch.started_at = now
    for name, value in fields.items():
        setattr(item, name, value)
    batch.change_seq += 1
    item.change_seq = batch.change_seq
    item.updated_at = stamp
    refresh_batch_status(batch, now)


def move_items_in_bulk(
    session: Session,
    batch: Batch,
    from_status: ItemStatus,
    to_status: ItemStatus,
    now: datetime,
    *,
    extra_where: Iterable[Any] = (),
    **fields: Any,
) -> int:
    """Move every ``from_status`` item of a locked batch in one UPDATE (cancel, quota, expiry).

    Each moved item gets its own change number, ``base + position + 1``: distinct, above every
    earlier number, and in position order, so pollers see them like any other change.
    """
    base = batch.change_seq
    result = session.execute(
        update(Item)
        .where(Item.batch_id == batch.id, Item.status == from_status, *extra_where)
        .values(
            status=to_status,
            change_seq=base + Item.position + 1,
            updated_at=change_stamp(now),
            **fields,
        )
        .execution_options(synchronize_session=False)
    )
    moved = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if moved:
        batch.change_seq = base + batch.total_items + 1
        setattr(
            batch, _COUNT_COLUMN[from_status], getattr(batch, _COUNT_COLUMN[from_status]) - moved
        )
        setattr(batch, _COUNT_COLUMN[to_status], getattr(batch, _COUNT_COLUMN[to_status]) + moved)
        refresh_batch_status(batch, now)
    return moved


# --- creation ----------------------------------------------------------------------------------


def create_batch(
    session: Session,
    *,
    customer: Customer,
    file_ids: Sequence[str],
    options: dict[str, Any],
    metadata: dict[str, str],
    engine: str | None,
    now: datetime,
    retention: timedelta,
) -> Batch:
    """Insert the batch and its items (``file_ids`` in position order), in bulk."""
    batch = Batch(
        id=new_id("batch"),
        customer_id=customer.id,
        status=BatchStatus.PENDING,
        engine=engine,
        options=options,
        metadata_=metadata,
        total_items=len(file_ids),
        count_pending=len(file_ids),
        count_running=0,
        count_succeeded=0,
        count_failed=0,
        count_cancelled=0,
        pages_billed=0,
        change_seq=len(file_ids),
        created_at=now,
        expires_at=now + retention,
    )
    session.add(batch)
    session.flush()
    # Ids generated in one go and sorted, so item id order equals position order: ties in
    # updated_at then order by item id exactly as they order by change number.
    item_ids = new_ids_in_order("item", len(file_ids))
    columns = (
        "id",
        "batch_id",
        "customer_id",
        "file_id",
        "position",
        "status",
        "attempts",
        "pages_done",
        "pages_reserved",
        "ocr_failures",
        "change_seq",
        "updated_at",
    )
    rows = [
        (
            item_id,
            batch.id,
            customer.id,
            file_id,
            position,
            ItemStatus.PENDING.value,
            0,
            0,
            0,
            0,
            position + 1,
            now,
        )
        for position, (item_id, file_id) in enumerate(zip(item_ids, file_ids, strict=True))
    ]
    if session.get_bind().dialect.name == "postgresql":
        # COPY is several times faster than even a multi-row INSERT for 10,000 rows, and runs
        # in the same transaction as the batch row.
        driver = session.connection().connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY items ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
    else:
        for start in range(0, len(rows), 5000):
            session.execute(
                insert(Item),
                [dict(zip(columns, row, strict=True)) for row in rows[start : start + 5000]],
            )
    return batch


# --- reads -------------------------------------------------------------------------------------


def items_page(session: Session, batch_id: str, after_seq: int, limit: int) -> list[Item]:
    return list(
        session.scalars(
            select(Item)
            .where(Item.batch_id == batch_id, Item.change_seq > after_seq)
            .order_by(Item.change_seq)
            .limit(limit)
        )
    )


def quota_exhausted(customer: Customer) -> bool:
    return customer.page_quota is not None and (
        customer.pages_used + customer.pages_reserved >= customer.page_quota
    )


# --- cancel ------------------------------------------------------------------------------------


def cancel_batch(session: Session, batch_id: str) -> tuple[Batch, int]:
    """Pending → cancelled in one conditional update; running items finish on their own.

    Returns the batch and how many items this call cancelled."""
    batch = lock_batch(session, batch_id)
    if batch.status in TERMINAL_BATCH_STATUSES:
        return batch, 0
    # Taken inside the lock: no item can have started after this instant.
    now = utcnow()
    if batch.cancel_requested_at is None:
        batch.cancel_requested_at = now
    cancelled = move_items_in_bulk(
        session,
        batch,
        ItemStatus.PENDING,
        ItemStatus.CANCELLED,
        now,
        completed_at=now,
        admitted_at=None,
        lease_token=None,
        lease_expires_at=None,
    )
    refresh_batch_status(batch, now)
    return batch, cancelled
