"""Page slices in the database: what admission needs to count and admit them like items.

A long document's item is extracted as slices (``service.models.Slice``, page ranges; the task
side is ``tasks/slices.py``). A slice takes one of its customer's slots exactly as an item does,
so the dispatcher's in-flight count is items *and* slices with ``admitted_at`` set, and a
customer's free slots go to its pending slices first (they finish documents already started),
then to its oldest pending items.
"""

from __future__ import annotations

from sqlalchemy import (
    DateTime,
    Integer,
    ScalarSelect,
    Update,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)

from service.models import Item, ItemStatus, Slice, SliceStatus

#: slice ids are ``slc_…``: a semaphore holder or a published id names its kind by its prefix
SLICE_PREFIX = "slc"


def is_slice_id(holder: str) -> bool:
    return holder.startswith(SLICE_PREFIX + "_")


def slices_in_flight() -> ScalarSelect[int]:
    """The customer's (``p_customer_id``) slices holding a slot: admitted and not finished
    (``ix_slices_in_flight``)."""
    return (
        select(func.count())
        .where(
            Slice.customer_id == bindparam("p_customer_id"),
            Slice.admitted_at.is_not(None),
            or_(Slice.status == SliceStatus.PENDING, Slice.status == SliceStatus.RUNNING),
        )
        .scalar_subquery()
    )


def _items_in_flight() -> ScalarSelect[int]:
    return (
        select(func.count())
        .where(
            Item.customer_id == bindparam("p_customer_id"),
            Item.admitted_at.is_not(None),
            or_(Item.status == ItemStatus.PENDING, Item.status == ItemStatus.RUNNING),
        )
        .scalar_subquery()
    )


def _mark_oldest_slices_statement() -> Update:
    cap = bindparam("p_cap", type_=Integer())
    in_flight = select((_items_in_flight() + slices_in_flight()).label("n")).cte("in_flight")
    free = select(case((in_flight.c.n < cap, cap - in_flight.c.n), else_=0)).scalar_subquery()
    now = bindparam("p_now", type_=DateTime())
    oldest = (
        select(Slice.id)
        .where(
            Slice.customer_id == bindparam("p_customer_id"),
            Slice.status == SliceStatus.PENDING,
            Slice.admitted_at.is_(None),
            or_(Slice.retry_at.is_(None), Slice.retry_at <= now),
        )
        .order_by(Slice.batch_id, Slice.item_id, Slice.index)
        .limit(free)
        .with_for_update(skip_locked=True)
        .cte("oldest")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(Slice)
        .where(
            Slice.id == oldest.c.id,
            Slice.status == SliceStatus.PENDING,
            Slice.admitted_at.is_(None),
        )
        .values(admitted_at=now)
        .returning(Slice.id, Slice.batch_id, Slice.item_id, Slice.index.label("slice_index"))
        .execution_options(synchronize_session=False)
    )


#: In the dispatcher's transaction, before items: parameters p_customer_id, p_cap, p_now.
MARK_OLDEST_SLICES = _mark_oldest_slices_statement()

#: Slices whose slot a semaphore holder may still stand for (prune_holders keeps these).
LIVE_SLICE = or_(
    Slice.status == SliceStatus.RUNNING,
    (Slice.status == SliceStatus.PENDING) & Slice.admitted_at.is_not(None),
)

#: Pending slices waiting for a slot now (admit_all's question).
ELIGIBLE_SLICE = (
    (Slice.status == SliceStatus.PENDING)
    & Slice.admitted_at.is_(None)
    & or_(Slice.retry_at.is_(None), Slice.retry_at <= bindparam("p_now", type_=DateTime()))
)
