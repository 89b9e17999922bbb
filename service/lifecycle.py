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
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Row,
    Update,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from service import events
from service.clock import utcnow
from service.ids import new_id, new_ids_in_order
from service.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchStatus,
    Customer,
    EventType,
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
#
# A cursor is base64url of a version byte and a fixed-width binary position, so that the set of
# valid cursors is exactly a regular expression: the OpenAPI document states it, request
# validation enforces it (anything else is 422 invalid_cursor), and every string it admits
# decodes to a position the database can compare. Nothing in a cursor can be forged into an
# error. The version bytes also keep the JSON cursors of earlier versions ("eyJ...") from ever
# matching: a client holding one gets 422, never a position read from its bytes.
#
# - items of a batch: 0x01, the change number in 8 bytes big-endian below 2**63 (bigint):
#   12 characters;
# - the batch list: 0x02, the batch's created_at in microseconds since 1970 (8 bytes, below
#   2**56: year 4253), the 18 bytes of its id (service/ids.py): 36 characters.

ITEM_CURSOR_PATTERN = r"^A[Q-X][A-Za-z0-9_-]{10}$"
LIST_CURSOR_PATTERN = r"^Ag[A-D][A-Za-z0-9_-]{33}$"
_ITEM_CURSOR = re.compile(ITEM_CURSOR_PATTERN)
_LIST_CURSOR = re.compile(LIST_CURSOR_PATTERN)
_ITEM_VERSION = b"\x01"
_LIST_VERSION = b"\x02"
_EPOCH = datetime(1970, 1, 1)
_BATCH_PREFIX = "batch_"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def item_cursor(change_seq: int) -> str:
    return _b64encode(_ITEM_VERSION + change_seq.to_bytes(8, "big"))


def decode_item_cursor(cursor: str | None) -> int:
    """The change number after which a poll continues (0 without a cursor)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not _ITEM_CURSOR.fullmatch(cursor):
        raise InvalidCursorError("cursor is not one this API returned")
    return int.from_bytes(_b64decode(cursor)[1:], "big")


def list_cursor(created_at: datetime, resource_id: str, *, prefix: str = _BATCH_PREFIX) -> str:
    """The position after one resource in a newest-first list (a customer's batches, an
    endpoint's webhook deliveries): its creation time and id (``prefix`` + service/ids.py)."""
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    encoded = resource_id.removeprefix(prefix).upper()
    raw_id = base64.b32hexdecode(encoded + "=" * (-len(encoded) % 8))
    assert len(raw_id) == 18, resource_id  # service/ids.py: 6 bytes of time, 12 random
    return _b64encode(_LIST_VERSION + micros.to_bytes(8, "big") + raw_id)


def decode_list_cursor(cursor: str, *, prefix: str = _BATCH_PREFIX) -> tuple[datetime, str]:
    """(created_at, id) of a :func:`list_cursor`; :class:`InvalidCursorError` otherwise."""
    if not isinstance(cursor, str) or not _LIST_CURSOR.fullmatch(cursor):
        raise InvalidCursorError("cursor is not one this API returned")
    raw = _b64decode(cursor)[1:]
    created_at = _EPOCH + timedelta(microseconds=int.from_bytes(raw[:8], "big"))
    resource_id = prefix + base64.b32hexencode(raw[8:]).decode().rstrip("=").lower()
    return created_at, resource_id


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


def next_batch_status(
    status: str,
    *,
    pending: int,
    running: int,
    succeeded: int,
    failed: int,
    cancel_requested: bool,
    started: bool,
) -> str:
    """SPEC's batch status rules, applied to the counters."""
    if status in TERMINAL_BATCH_STATUSES:
        return status
    if pending == 0 and running == 0:
        if succeeded > 0:
            return BatchStatus.PARTIALLY_FAILED if failed > 0 else BatchStatus.COMPLETED
        return BatchStatus.CANCELLED if cancel_requested else BatchStatus.FAILED
    return BatchStatus.RUNNING if started else status


def refresh_batch_status(batch: Batch, now: datetime) -> None:
    """Apply :func:`next_batch_status` to a loaded (and locked) batch."""
    status = next_batch_status(
        batch.status,
        pending=batch.count_pending,
        running=batch.count_running,
        succeeded=batch.count_succeeded,
        failed=batch.count_failed,
        cancel_requested=batch.cancel_requested_at is not None,
        started=batch.started_at is not None,
    )
    if status != batch.status:
        batch.status = status
        if status in TERMINAL_BATCH_STATUSES:
            batch.completed_at = now


class ItemNotMovedError(Exception):
    """The item was not in the state the move required (cancelled, taken, lease lost).

    Raised inside the caller's transaction, which rolls back the counters already changed."""


_BATCH_AFTER_MOVE = (
    Batch.change_seq,
    Batch.status,
    Batch.count_pending,
    Batch.count_running,
    Batch.count_succeeded,
    Batch.count_failed,
    Batch.cancel_requested_at,
    Batch.started_at,
    Batch.options,
)

# Bound parameters that every item move supplies; a `where` constant or an expression value
# may use them too (``func.coalesce(Item.started_at, NOW)``).
NOW = bindparam("p_now", type_=DateTime())


def move_item(
    session: Session,
    *,
    batch_id: str,
    item_id: str,
    from_status: ItemStatus,
    to_status: ItemStatus,
    now: datetime,
    where: tuple[ColumnElement[bool], ...] = (),
    params: Mapping[str, Any] | None = None,
    returning: tuple[Any, ...] = (),
    pages_billed: int = 0,
    **values: Any,
) -> tuple[Row[Any], Row[Any]]:
    """One item's transition with its counters: (batch row after the move, item ``returning``).

    The hot path of every worker, so it is three Core statements rather than ORM loads:
    1. UPDATE the batch's counters and change number, RETURNING them: the first statement
       takes the batch row lock, as every change to an item must (module docstring);
    2. UPDATE the item only if it is still ``from_status`` (and ``where``: a lease token, an
       admission), with the change number taken under the lock; no row raises
       :class:`ItemNotMovedError` so the caller's transaction rolls 1 back;
    3. only when SPEC's status rules say so, UPDATE the batch's status (once or twice a batch).

    Each statement is built once per shape and reused with bound parameters: building a
    statement and its cache key cost SQLAlchemy more than running it (cProfile of the worker).
    So plain ``values`` become parameters, while ``where`` conditions and SQL-expression values
    (``attempts=ATTEMPTS_PLUS_ONE``) are part of the shape and must be module-level constants,
    taking their own values from ``params`` through :func:`~sqlalchemy.bindparam`.
    """
    connection = session.connection()
    batch = connection.execute(
        _counters_statement(from_status, to_status, bool(pages_billed)),
        {"p_batch_id": batch_id, "p_now": now, "p_pages_billed": pages_billed},
    ).first()
    if batch is None:
        raise LookupError(batch_id)
    shape = tuple(
        sorted((name, value if _is_expression(value) else None) for name, value in values.items())
    )
    item = connection.execute(
        _item_statement(shape, where, returning),
        {
            **(params or {}),
            **{f"v_{name}": value for name, value in values.items() if not _is_expression(value)},
            "p_item_id": item_id,
            "p_from_status": from_status,
            "p_to_status": to_status,
            "p_change_seq": batch.change_seq,
            "p_updated_at": change_stamp(now),
            "p_now": now,
        },
    ).first()
    if item is None:
        raise ItemNotMovedError(item_id)
    # --- events (issue 16): the move's event, in this transaction, under the batch lock
    event_type = events.item_event_type(from_status, to_status)
    if event_type is not None:
        events.record_item_event(session, event_type, item)
    # --- end events
    status = next_batch_status(
        batch.status,
        pending=batch.count_pending,
        running=batch.count_running,
        succeeded=batch.count_succeeded,
        failed=batch.count_failed,
        cancel_requested=batch.cancel_requested_at is not None,
        started=batch.started_at is not None,
    )
    if status != batch.status:
        terminal = status in TERMINAL_BATCH_STATUSES
        connection.execute(
            _status_statement(terminal),
            {"p_batch_id": batch_id, "p_status": status, "p_now": now},
        )
        if terminal:  # events (issue 16): batch.completed takes a change number of its own
            _record_batch_completed(session, batch_id, now)
    return batch, item


def _record_batch_completed(session: Session, batch_id: str, now: datetime) -> None:
    """batch.completed with the next change number (once a batch: not the hot path)."""
    connection = session.connection()
    seq = connection.execute(_NEXT_CHANGE, {"p_batch_id": batch_id}).scalar_one()
    row = session.execute(
        select(Batch).where(Batch.id == batch_id).execution_options(populate_existing=True)
    ).scalar_one()
    events.record_batch_event(session, EventType.BATCH_COMPLETED, row, seq, change_stamp(now))


_NEXT_CHANGE = (
    update(Batch)
    .where(Batch.id == bindparam("p_batch_id"))
    .values(change_seq=Batch.change_seq + 1)
    .returning(Batch.change_seq)
    .execution_options(synchronize_session=False)
)


def _is_expression(value: Any) -> bool:
    return isinstance(value, ColumnElement)


@functools.cache
def _counters_statement(from_status: str, to_status: str, billed: bool) -> Update:
    counters: dict[str, Any] = {"change_seq": Batch.change_seq + 1}
    if from_status != to_status:
        old, new = _COUNT_COLUMN[ItemStatus(from_status)], _COUNT_COLUMN[ItemStatus(to_status)]
        counters[old] = getattr(Batch, old) - 1
        counters[new] = getattr(Batch, new) + 1
    if to_status == ItemStatus.RUNNING:
        counters["started_at"] = func.coalesce(Batch.started_at, NOW)
    if billed:
        counters["pages_billed"] = Batch.pages_billed + bindparam("p_pages_billed", type_=Integer())
    return (
        update(Batch)
        .where(Batch.id == bindparam("p_batch_id"))
        .values(**counters)
        .returning(*_BATCH_AFTER_MOVE)
        .execution_options(synchronize_session=False)
    )


# Bounded: a caller that breaks the constants rule builds a statement per call, slowly but
# correctly, and the oldest shapes are dropped.
@functools.lru_cache(maxsize=128)
def _item_statement(
    shape: tuple[tuple[str, ColumnElement[Any] | None], ...],
    where: tuple[ColumnElement[bool], ...],
    returning: tuple[Any, ...],
) -> Update:
    columns = Item.__table__.c
    values = {
        name: bindparam(f"v_{name}", type_=columns[name].type) if expression is None else expression
        for name, expression in shape
    }
    return (
        update(Item)
        .where(Item.id == bindparam("p_item_id"), Item.status == bindparam("p_from_status"), *where)
        .values(
            status=bindparam("p_to_status"),
            change_seq=bindparam("p_change_seq"),
            updated_at=bindparam("p_updated_at", type_=DateTime()),
            **values,
        )
        # events (issue 16): the item resource, for the move's event
        .returning(Item.id, *returning, *events.ITEM_RESOURCE_COLUMNS)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def _status_statement(terminal: bool) -> Update:
    values: dict[str, Any] = {"status": bindparam("p_status")}
    if terminal:
        values["completed_at"] = NOW
    return (
        update(Batch)
        .where(Batch.id == bindparam("p_batch_id"))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


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
    rows = session.execute(
        update(Item)
        .where(Item.batch_id == batch.id, Item.status == from_status, *extra_where)
        .values(
            status=to_status,
            change_seq=base + Item.position + 1,
            updated_at=change_stamp(now),
            **fields,
        )
        .returning(Item.id, *events.ITEM_RESOURCE_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    moved = len(rows)
    if moved:
        batch.change_seq = base + batch.total_items + 1
        setattr(
            batch, _COUNT_COLUMN[from_status], getattr(batch, _COUNT_COLUMN[from_status]) - moved
        )
        setattr(batch, _COUNT_COLUMN[to_status], getattr(batch, _COUNT_COLUMN[to_status]) + moved)
        # --- events (issue 16): one per moved item, then batch.completed on the number that
        # the bulk move leaves unused above every item's (base + total_items + 1)
        event_type = events.item_event_type(from_status, to_status)
        if event_type is not None:
            events.record_item_events(session, event_type, rows)
        was_terminal = batch.status in TERMINAL_BATCH_STATUSES
        refresh_batch_status(batch, now)
        if not was_terminal and batch.status in TERMINAL_BATCH_STATUSES:
            events.record_batch_event(
                session, EventType.BATCH_COMPLETED, batch, batch.change_seq, change_stamp(now)
            )
        # --- end events
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
    _insert_items(session, batch.id, customer.id, file_ids, now)
    # events (issue 16): batch.created is seq 0, below every item's creation number
    events.record_batch_event(session, EventType.BATCH_CREATED, batch, 0, now)
    return batch


# Columns of a new item row, in COPY order; every other column starts NULL.
_NEW_ITEM_COLUMNS = (
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


def _insert_items(
    session: Session, batch_id: str, customer_id: str, file_ids: Sequence[str], now: datetime
) -> None:
    """One pending item per file, in position order (COPY on Postgres, batched INSERTs else)."""
    # Ids generated in one go and sorted, so item id order equals position order: ties in
    # updated_at then order by item id exactly as they order by change number.
    item_ids = new_ids_in_order("item", len(file_ids))
    pending, zero = ItemStatus.PENDING.value, 0
    # attempts, pages_done, pages_reserved and ocr_failures start at zero
    rows = [
        (
            item_id,
            batch_id,
            customer_id,
            file_id,
            position,
            pending,
            *(zero,) * 4,
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
            cursor.copy(f"COPY items ({', '.join(_NEW_ITEM_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    for start in range(0, len(rows), 5000):
        session.execute(
            insert(Item),
            [dict(zip(_NEW_ITEM_COLUMNS, row, strict=True)) for row in rows[start : start + 5000]],
        )


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
