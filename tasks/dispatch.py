"""Admission: pending items wait in the database; at most ``cap`` per customer are in flight.

An item is *admitted* when it holds one of its customer's semaphore slots and a Celery message
has been published for it (``admitted_at`` set). Admitting reserves the slot before publishing
(RELIABILITY "Fairness"), so the broker never holds more than the sum of the caps and one
customer's 10,000 pending items never stand in front of another customer's first item.

Admission is triggered after a batch commits, when an item finishes (its slot frees), and by a
beat tick as a backstop. Any number of dispatchers may run at once: the semaphore bounds them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from celery import Celery
from sqlalchemy import DateTime, Integer, Update, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service import slices
from service.clock import utcnow
from service.db import transaction
from service.models import Customer, Item, ItemStatus, Slice, SliceStatus
from service.settings import Settings
from tasks.app import PROCESS_ITEM, PROCESS_SLICE, QUEUE_ITEMS
from tasks.semaphore import CustomerSemaphore

log = logging.getLogger("pagelane.dispatch")

Publish = Callable[[str], None]


def customer_cap(session: Session, customer_id: str) -> int:
    """The customer's running-items cap (0 for an unknown customer: admit nothing)."""
    cap = session.scalar(select(Customer.concurrency).where(Customer.id == customer_id))
    return int(cap or 0)


@dataclass
class Dispatcher:
    session_factory: sessionmaker[Session]
    semaphore: CustomerSemaphore
    publish: Publish
    # How long an admitted item may sit in the broker before its slot lapses; the
    # redispatch sweep re-publishes and renews long before that.
    admission_lease_seconds: float

    def admit(self, customer_id: str, *, cap: int | None = None) -> int:
        """Admit this customer's oldest eligible pending items up to its free slots.

        ``cap`` saves a query when the caller already knows the customer's cap."""
        with transaction(self.session_factory) as session:
            if cap is None:
                cap = customer_cap(session, customer_id)
            marked = self.mark_admitted(session, customer_id, cap=cap)
        return self.publish_admitted(customer_id, marked, cap=cap)

    def hand_over(
        self, customer_id: str, holder: str, *, cap: int, marked: list[str] | None
    ) -> int:
        """A finished item gives its slot up; the customer's next items take it.

        ``marked``: the items that the finishing transaction admitted (``mark_admitted``), or
        None when no finish committed (a lost lease, a crash), and admission runs on its own."""
        if marked is None:
            self.semaphore.release(customer_id, [holder])
            return self.admit(customer_id, cap=cap)
        return self.publish_admitted(customer_id, marked, cap=cap, releasing=[holder])

    def mark_admitted(self, session: Session, customer_id: str, *, cap: int) -> list[str]:
        """In the caller's transaction, mark the customer's oldest eligible pending items
        admitted, as many as ``cap`` minus those in flight; their ids in admission order.

        One statement (built once, ``_MARK_OLDEST``): the database, not Redis, has the last
        word on what is in flight, for if Redis lost the slots (a restart) the semaphore
        alone would admit a second cap's worth. Admission is not a visible state change (the
        item stays `pending`), so it takes no batch lock or change number.
        """
        params = {"p_customer_id": customer_id, "p_cap": cap, "p_now": utcnow()}
        connection = session.connection()
        # Slices: page ranges of documents already started, each counted and admitted like
        # an item (service/slices.py); they take the free slots first.
        sliced = connection.execute(slices.MARK_OLDEST_SLICES, params).all()
        marked = [
            row.id for row in sorted(sliced, key=lambda r: (r.batch_id, r.item_id, r.slice_index))
        ]
        rows = connection.execute(_MARK_OLDEST, params).all()
        return marked + [
            row.id for row in sorted(rows, key=lambda row: (row.batch_id, row.position))
        ]

    def publish_admitted(
        self, customer_id: str, marked: list[str], *, cap: int, releasing: Sequence[str] = ()
    ) -> int:
        """Give up ``releasing``'s slots and take one for each marked item, oldest first, in
        one Redis call; publish those that got one and unmark the rest (they wait for the
        next free slot). Returns how many were published."""
        lease = self.admission_lease_seconds
        granted = self.semaphore.exchange(
            customer_id, release=releasing, acquire=marked, cap=cap, lease_seconds=lease
        )
        # Slots may be held by items that ended without releasing (a crash between commit
        # and release): drop those once, then try again.
        if granted < len(marked) and self.prune_holders(customer_id):
            granted += self.semaphore.exchange(
                customer_id, acquire=marked[granted:], cap=cap, lease_seconds=lease
            )
        if granted < len(marked):
            self._unmark(marked[granted:])
        for item_id in marked[:granted]:
            self.publish(item_id)
        return granted

    def admit_all(self) -> int:
        """Round-robin over every customer with eligible pending items (the beat backstop)."""
        now = utcnow()
        with self.session_factory() as session:
            customers = list(
                session.scalars(
                    select(Item.customer_id)
                    .where(
                        Item.status == ItemStatus.PENDING,
                        Item.admitted_at.is_(None),
                        or_(Item.retry_at.is_(None), Item.retry_at <= now),
                    )
                    .distinct()
                )
            )
            # Slices waiting for a slot (a transient retry whose wait is over, a lost slot).
            customers += [
                customer_id
                for customer_id in session.scalars(
                    select(Slice.customer_id)
                    .where(slices.ELIGIBLE_SLICE)
                    .distinct()
                    .params(p_now=now)
                )
                if customer_id not in customers
            ]
        return sum(self.admit(customer_id) for customer_id in customers)

    def prune_holders(self, customer_id: str) -> int:
        """Release slots whose item is no longer admitted or running; returns how many."""
        holders = self.semaphore.holders(customer_id)
        if not holders:
            return 0
        with self.session_factory() as session:
            live = set(
                session.scalars(
                    select(Item.id).where(
                        Item.id.in_(holders),
                        or_(
                            Item.status == ItemStatus.RUNNING,
                            (Item.status == ItemStatus.PENDING) & Item.admitted_at.is_not(None),
                        ),
                    )
                )
            )
            live.update(
                session.scalars(select(Slice.id).where(Slice.id.in_(holders), slices.LIVE_SLICE))
            )
        stale = [h for h in holders if h not in live]
        self.semaphore.release(customer_id, stale)
        return len(stale)

    def _unmark(self, item_ids: list[str]) -> None:
        """Give back admissions that found no slot: they wait for the next free one."""
        with transaction(self.session_factory) as session:
            session.execute(
                update(Item)
                .where(Item.id.in_(item_ids), Item.status == ItemStatus.PENDING)
                .values(admitted_at=None)
                .execution_options(synchronize_session=False)
            )
            slice_ids = [i for i in item_ids if slices.is_slice_id(i)]
            if slice_ids:
                session.execute(
                    update(Slice)
                    .where(Slice.id.in_(slice_ids), Slice.status == SliceStatus.PENDING)
                    .values(admitted_at=None)
                    .execution_options(synchronize_session=False)
                )


def make_state_redis(settings: Settings) -> redis.Redis:
    """The Redis client of the semaphores (and the API's readiness probe); the broker keeps its
    own connections."""
    return redis.Redis.from_url(
        settings.require_redis(),
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=10,
        retry_on_timeout=True,
    )


def make_dispatcher(
    session_factory: sessionmaker[Session], state: redis.Redis, celery: Celery, settings: Settings
) -> Dispatcher:
    """The dispatcher of the API and of every worker process: items are published to Celery."""

    def publish(item_id: str) -> None:
        # A slice's holder id names its task (service/slices.py); same queue as items.
        task = PROCESS_SLICE if slices.is_slice_id(item_id) else PROCESS_ITEM
        celery.send_task(task, args=[item_id], queue=QUEUE_ITEMS)

    return Dispatcher(
        session_factory=session_factory,
        semaphore=CustomerSemaphore(state),
        publish=publish,
        admission_lease_seconds=settings.admission_lease_seconds,
    )


def _mark_oldest_statement() -> Update:
    in_flight = (
        select(func.count().label("n"))
        .where(
            Item.customer_id == bindparam("p_customer_id"),
            # Running, or admitted and waiting in the broker: every such item has
            # admitted_at set, and only those (ix_items_in_flight is over exactly them).
            Item.admitted_at.is_not(None),
            or_(Item.status == ItemStatus.PENDING, Item.status == ItemStatus.RUNNING),
        )
        # Slices hold slots too: the cap counts slices and unsliced items together.
        .add_columns((func.count() + slices.slices_in_flight()).label("n_total"))
        .cte("in_flight")
    )
    cap = bindparam("p_cap", type_=Integer())
    # Never a negative LIMIT: SQLite reads one as "no limit".
    n = in_flight.c.n_total
    free = select(case((n < cap, cap - n), else_=0)).scalar_subquery()
    oldest = (
        select(Item.id)
        .where(
            Item.customer_id == bindparam("p_customer_id"),
            Item.status == ItemStatus.PENDING,
            Item.admitted_at.is_(None),
            or_(Item.retry_at.is_(None), Item.retry_at <= bindparam("p_now", type_=DateTime())),
        )
        # Batch ids start with their creation time: oldest batch first, then position.
        .order_by(Item.batch_id, Item.position)
        .limit(free)
        # Two dispatchers at once skip each other's rows on Postgres; SQLite has one writer.
        .with_for_update(skip_locked=True)
        # A CTE, materialised: as an IN (subquery) Postgres re-runs the locking LIMIT for
        # every row it updates and marks far more than the limit.
        .cte("oldest")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(Item)
        .where(
            Item.id == oldest.c.id,
            Item.status == ItemStatus.PENDING,
            Item.admitted_at.is_(None),
        )
        .values(admitted_at=bindparam("p_now", type_=DateTime()))
        .returning(Item.id, Item.batch_id, Item.position)
        .execution_options(synchronize_session=False)
    )


# Built once: building it cost more than running it (worker cProfile).
_MARK_OLDEST = _mark_oldest_statement()
