"""The event log: every committed change of a batch, read back in change-number order.

An event is written by the transaction that makes the change it describes, under the batch row
lock, with the change number the change took (``seq``). So nothing is recorded for a change that
rolls back, no committed change is missing, and seq order is commit order within a batch: a
reader that asks for ``seq > n`` can never miss a row that commits later with a smaller number
(the argument of service/lifecycle.py, unchanged).

Numbering, per batch:
- ``batch.created`` is seq 0 (written with the batch);
- seqs 1..N are the items' creation numbers (create_batch gives item ``i`` change number
  ``i + 1``); creation is not an event, so there are no events with those numbers;
- every later item change takes the batch's next change number, and its event that number;
- ``batch.completed`` takes one more number of its own, after the change that ended the batch.

Seqs are strictly increasing with gaps (creation numbers, an item put back to pending by a lost
worker or an OCR retry, which SPEC names no event for). Resuming is ``seq > last seen``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from service.clock import isoformat
from service.ids import new_id
from service.models import Batch, Event, EventType, Item, ItemStatus

# The columns an item event's data is made of (RETURNING of every item move).
ITEM_RESOURCE_COLUMNS = (
    Item.batch_id,
    Item.customer_id,
    Item.file_id,
    Item.position,
    Item.status,
    Item.attempts,
    Item.page_count,
    Item.pages_done,
    Item.started_at,
    Item.completed_at,
    Item.updated_at,
    Item.error_code,
    Item.error_message,
    Item.change_seq,
)

ITEM_EVENT_TYPES = {
    ItemStatus.SUCCEEDED: EventType.ITEM_SUCCEEDED,
    ItemStatus.FAILED: EventType.ITEM_FAILED,
    ItemStatus.CANCELLED: EventType.ITEM_CANCELLED,
}


def item_event_type(from_status: str, to_status: str) -> EventType | None:
    """The event an item move is, or None (back to pending: SPEC names no event for it)."""
    if to_status == ItemStatus.RUNNING:
        return (
            EventType.ITEM_PROGRESS
            if from_status == ItemStatus.RUNNING
            else (EventType.ITEM_STARTED)
        )
    return ITEM_EVENT_TYPES.get(ItemStatus(to_status))


def item_resource(item: Any) -> dict[str, Any]:
    """SPEC's batch item resource from an Item or a row of :data:`ITEM_RESOURCE_COLUMNS`
    (with ``id``): the one builder of it, for events and for the API (service.api.bodies)."""
    return {
        "id": item.id,
        "object": "batch_item",
        "batch_id": item.batch_id,
        "file_id": item.file_id,
        "position": item.position,
        "status": item.status,
        "attempts": item.attempts,
        "page_count": item.page_count,
        "pages_done": item.pages_done,
        "started_at": isoformat(item.started_at),
        "completed_at": isoformat(item.completed_at),
        "updated_at": isoformat(item.updated_at),
        "result_url": (
            f"/v1/batches/{item.batch_id}/items/{item.id}/result"
            if item.status == ItemStatus.SUCCEEDED
            else None
        ),
        "error": (
            {"code": item.error_code, "message": item.error_message or item.error_code}
            if item.error_code
            else None
        ),
    }


def batch_resource(batch: Batch) -> dict[str, Any]:
    """SPEC's batch resource without items: the one builder of it, for events and the API."""
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "counts": {
            "pending": batch.count_pending,
            "running": batch.count_running,
            "succeeded": batch.count_succeeded,
            "failed": batch.count_failed,
            "cancelled": batch.count_cancelled,
        },
        "total_items": batch.total_items,
        "engine": batch.engine,
        "options": batch.options,
        "metadata": batch.metadata_,
        "created_at": isoformat(batch.created_at),
        "started_at": isoformat(batch.started_at),
        "completed_at": isoformat(batch.completed_at),
        "cancel_requested_at": isoformat(batch.cancel_requested_at),
        "expires_at": isoformat(batch.expires_at),
        "pages_billed": batch.pages_billed,
        "parent_batch_id": batch.parent_batch_id,
    }


# Built once (the insert is on every worker's hot path; see lifecycle.move_item).
_INSERT_EVENT = insert(Event).values(
    id=bindparam("e_id"),
    batch_id=bindparam("e_batch_id"),
    customer_id=bindparam("e_customer_id"),
    seq=bindparam("e_seq"),
    type=bindparam("e_type"),
    created_at=bindparam("e_created_at"),
    data=bindparam("e_data", type_=Event.__table__.c.data.type),
    fanned_out=False,
)


def _params(
    batch_id: str, customer_id: str, seq: int, type_: str, at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "e_id": new_id("evt"),
        "e_batch_id": batch_id,
        "e_customer_id": customer_id,
        "e_seq": seq,
        "e_type": str(type_),
        "e_created_at": at,
        "e_data": data,
    }


def record_item_event(session: Session, type_: EventType, item: Any) -> None:
    """An item move's event (``item``: the move's RETURNING row), in the caller's transaction."""
    session.connection().execute(
        _INSERT_EVENT,
        _params(
            item.batch_id,
            item.customer_id,
            item.change_seq,
            type_,
            item.updated_at,
            item_resource(item),
        ),
    )


def record_item_events(session: Session, type_: EventType, items: Sequence[Any]) -> None:
    """One event per item of a bulk move (cancel, quota, upload expiry), in one executemany."""
    if items:
        session.connection().execute(
            _INSERT_EVENT,
            [
                _params(
                    i.batch_id, i.customer_id, i.change_seq, type_, i.updated_at, item_resource(i)
                )
                for i in sorted(items, key=lambda i: i.change_seq)
            ],
        )


def record_batch_event(
    session: Session, type_: EventType, batch: Batch, seq: int, at: datetime
) -> None:
    session.connection().execute(
        _INSERT_EVENT,
        _params(batch.id, batch.customer_id, seq, type_, at, batch_resource(batch)),
    )


# --- reads -------------------------------------------------------------------------------------


def event_body(event: Any) -> dict[str, Any]:
    """SPEC's event object."""
    return {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created_at": isoformat(event.created_at),
        "batch_id": event.batch_id,
        "seq": event.seq,
        "data": event.data,
    }


_EVENTS_AFTER = (
    select(Event.id, Event.type, Event.created_at, Event.batch_id, Event.seq, Event.data)
    .where(Event.batch_id == bindparam("p_batch_id"), Event.seq > bindparam("p_after"))
    .order_by(Event.seq)
    .limit(bindparam("p_limit"))
)


def events_after(session: Session, batch_id: str, after: int, limit: int = 500) -> list[Any]:
    """The batch's events with ``seq > after``, in seq order (the unique index answers it)."""
    return list(
        session.connection().execute(
            _EVENTS_AFTER, {"p_batch_id": batch_id, "p_after": after, "p_limit": limit}
        )
    )


def latest_seqs(session: Session, batch_ids: Sequence[str]) -> Mapping[str, int]:
    """The highest committed seq of each batch (the SSE wake-up's one query per tick)."""
    if not batch_ids:
        return {}
    rows = session.execute(
        select(Event.batch_id, func.max(Event.seq))
        .where(Event.batch_id.in_(list(batch_ids)))
        .group_by(Event.batch_id)
    )
    return {batch_id: int(seq) for batch_id, seq in rows}
