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
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.clock import utcnow
from service.db import transaction
from service.models import Customer, Item, ItemStatus
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
            # The database, not Redis, has the last word on what is in flight: if Redis lost
            # the slots (a restart), the semaphore alone would admit a second cap's worth.
            free = cap - self._in_flight(session, customer_id)
            if free <= 0:
                return 0
            marked = self._mark_oldest_admitted(session, customer_id, free)
        if not marked:
            return 0
        admitted: list[str] = []
        pruned = False
        for item_id in marked:
            if not self.semaphore.acquire(
                customer_id, item_id, cap=cap, lease_seconds=self.admission_lease_seconds
            ):
                # Slots may be held by items that ended without releasing (a crash between
                # commit and release): drop those once, then try again.
                if pruned or not self.prune_holders(customer_id):
                    break
                pruned = True
                if not self.semaphore.acquire(
                    customer_id, item_id, cap=cap, lease_seconds=self.admission_lease_seconds
                ):
                    break
            admitted.append(item_id)
        if len(admitted) < len(marked):
            self._unmark(marked[len(admitted) :])
        for item_id in admitted:
            self.publish(item_id)
        return len(admitted)

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
        stale = [h for h in holders if h not in live]
        self.semaphore.release(customer_id, stale)
        return len(stale)

    @staticmethod
    def _in_flight(session: Session, customer_id: str) -> int:
        """Items holding (or owed) a slot: running, or admitted and waiting in the broker."""
        return int(
            session.connection().scalar(
                select(func.count()).where(
                    Item.customer_id == customer_id,
                    or_(
                        Item.status == ItemStatus.RUNNING,
                        (Item.status == ItemStatus.PENDING) & Item.admitted_at.is_not(None),
                    ),
                )
            )
            or 0
        )

    @staticmethod
    def _mark_oldest_admitted(session: Session, customer_id: str, limit: int) -> list[str]:
        """Mark this customer's ``limit`` oldest eligible pending items admitted, in one
        statement; their ids in admission order.

        Admission is not a visible state change (the item stays `pending`), so it takes no
        batch lock or change number. Two dispatchers at once skip each other's rows on
        Postgres (SKIP LOCKED); SQLite has one writer anyway.
        """
        now = utcnow()
        oldest = (
            select(Item.id)
            .where(
                Item.customer_id == customer_id,
                Item.status == ItemStatus.PENDING,
                Item.admitted_at.is_(None),
                or_(Item.retry_at.is_(None), Item.retry_at <= now),
            )
            # Batch ids start with their creation time: oldest batch first, then position.
            .order_by(Item.batch_id, Item.position)
            .limit(limit)
            .with_for_update(skip_locked=True)
            # A CTE, materialised: as an IN (subquery) Postgres re-runs the locking LIMIT
            # for every row it updates and marks far more than ``limit``.
            .cte("oldest")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        rows = session.connection().execute(
            update(Item)
            .where(
                Item.id == oldest.c.id,
                Item.status == ItemStatus.PENDING,
                Item.admitted_at.is_(None),
            )
            .values(admitted_at=now)
            .returning(Item.id, Item.batch_id, Item.position)
            .execution_options(synchronize_session=False)
        ).all()
        return [row.id for row in sorted(rows, key=lambda row: (row.batch_id, row.position))]

    def _unmark(self, item_ids: list[str]) -> None:
        """Give back admissions that found no slot: they wait for the next free one."""
        with transaction(self.session_factory) as session:
            session.execute(
                update(Item)
                .where(Item.id.in_(item_ids), Item.status == ItemStatus.PENDING)
                .values(admitted_at=None)
                .execution_options(synchronize_session=False)
            )
