"""Item leases: one thread per worker process renews the leases of the items it is extracting.

A running item carries a lease token and an expiry; whoever holds the token may finish the item,
and a sweep takes back an item whose lease ran out (its worker died). Renewal also extends the
item's slot in the customer's semaphore and publishes ``pages_done`` progress.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle
from service.clock import utcnow
from service.db import transaction
from service.models import Item, ItemStatus
from tasks.semaphore import CustomerSemaphore

log = logging.getLogger("pagelane.items")


class LeaseLostError(Exception):
    """The item is no longer ours (cancelled, or reclaimed after our lease ran out)."""


class LeaseHolder(Protocol):
    """The claim of an item this process is working on (``tasks.items.Claim`` is one)."""

    @property
    def item_id(self) -> str: ...
    @property
    def batch_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def lease_token(self) -> str: ...
    @property
    def cap(self) -> int: ...


# The item is still ours while it carries our lease token (with ``running``): the condition of
# every move only the lease holder may make, built once (see service.lifecycle.move_item).
_FENCE = (Item.lease_token == bindparam("p_lease_token"),)


def fenced(holder: LeaseHolder) -> dict[str, Any]:
    """The arguments of a move that only the lease holder may make."""
    return fenced_by(holder.lease_token)


def fenced_by(lease_token: str) -> dict[str, Any]:
    """The arguments of a move that only the holder of ``lease_token`` may make (an item's
    assembler holds the item's lease without a claim of it)."""
    return {"where": _FENCE, "params": {"p_lease_token": lease_token}}


class LeaseKeeper:
    """One thread per process renews the leases of the items the process is extracting.

    A lease must not wait for page boundaries (one OCR page can take a minute), so a thread
    renews it every quarter lease. The thread lives as long as the process: starting and
    joining one for every item cost a one-page item about 1 ms (py-spy of the worker children:
    9 % of their time in ``Thread.start``/``join``, waiting for the new thread to be scheduled).
    Idle, it sleeps; an item's first renewal is a quarter lease after it starts.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        semaphore: CustomerSemaphore,
        *,
        lease_seconds: float,
    ) -> None:
        self._session_factory = session_factory
        self._semaphore = semaphore
        self._lease_seconds = lease_seconds
        self._interval = max(0.5, lease_seconds / 4)
        self._changed = threading.Condition()
        self._due: dict[Heartbeat, float] = {}  # monotonic time of each one's next renewal
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def keeping(
        self, holder: LeaseHolder, *, kind: type[Heartbeat] | None = None
    ) -> Iterator[Heartbeat]:
        """Renew ``holder``'s lease until the block ends; no renewal runs after it has ended.

        ``kind``: a :class:`Heartbeat` subclass renewing another row (a page slice's)."""
        heartbeat = (kind or Heartbeat)(
            holder, self._session_factory, self._semaphore, lease_seconds=self._lease_seconds
        )
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            self._due[heartbeat] = time.monotonic() + self._interval
            self._changed.notify()
        try:
            yield heartbeat
        finally:
            with self._changed:
                del self._due[heartbeat]
            # A renewal in progress finishes first: one that ran after the finish would take
            # the slot back in Redis that the finish is about to hand to the next item.
            heartbeat.stop()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = [beat for beat, at in self._due.items() if at <= now]
                    if due:
                        break
                    next_at = min(self._due.values(), default=now + self._interval)
                    self._changed.wait(next_at - now)
                for heartbeat in due:
                    self._due[heartbeat] = now + self._interval
            for heartbeat in due:
                heartbeat.renew()


class Heartbeat:
    """One item's lease renewals and progress, driven by the :class:`LeaseKeeper`'s thread.

    The engine calls :meth:`on_page` after each page; that is where a lost lease (the item was
    taken back after we stalled) stops the extraction, by raising :class:`LeaseLostError`
    through the engine.
    """

    def __init__(
        self,
        holder: LeaseHolder,
        session_factory: sessionmaker[Session],
        semaphore: CustomerSemaphore,
        *,
        lease_seconds: float,
    ) -> None:
        self._claim = holder
        self._session_factory = session_factory
        self._semaphore = semaphore
        self._lease_seconds = lease_seconds
        self._pages_done = 0
        self._page_count: int | None = None
        self._published = 0
        self._lost = threading.Event()
        self._renewing = threading.Lock()
        self._stopped = False
        # Renewals run in a copy of the caller's context: their log lines name the item too.
        self._log_context = contextvars.copy_context()

    def on_page(self, pages_done: int, page_count: int) -> None:
        self._page_count = page_count
        self._pages_done = pages_done
        if self._lost.is_set():
            raise LeaseLostError(self._claim.item_id)

    def renew(self) -> None:
        with self._renewing:
            if self._stopped or self._lost.is_set():
                return
            try:
                self._log_context.run(self.beat)
            except LeaseLostError:
                self._lost.set()
            except Exception:  # a database or Redis hiccup: the next renewal tries again
                log.warning("heartbeat of %s failed", self._claim.item_id, exc_info=True)

    def stop(self) -> None:
        with self._renewing:
            self._stopped = True

    def beat(self) -> None:
        now = utcnow()
        expires = now + timedelta(seconds=self._lease_seconds)
        pages_done = self._pages_done
        with transaction(self._session_factory) as session:
            if pages_done == self._published:
                # Only the lease moves: not a visible change, so no batch lock or change number.
                renewed = (
                    session.connection()
                    .execute(
                        update(Item)
                        .where(
                            Item.id == self._claim.item_id,
                            Item.status == ItemStatus.RUNNING,
                            Item.lease_token == self._claim.lease_token,
                        )
                        .values(lease_expires_at=expires)
                        .execution_options(synchronize_session=False)
                    )
                    .rowcount
                )
                if not renewed:
                    raise LeaseLostError(self._claim.item_id)
            else:
                try:
                    lifecycle.move_item(
                        session,
                        batch_id=self._claim.batch_id,
                        item_id=self._claim.item_id,
                        from_status=ItemStatus.RUNNING,
                        to_status=ItemStatus.RUNNING,
                        now=now,
                        **fenced(self._claim),
                        pages_done=pages_done,
                        page_count=self._page_count,
                        lease_expires_at=expires,
                    )
                except lifecycle.ItemNotMovedError as exc:
                    raise LeaseLostError(self._claim.item_id) from exc
                self._published = pages_done
        # acquire, not renew: it extends our slot and, if Redis lost it (a restart), takes
        # it back, so the semaphore again reflects what runs.
        self._semaphore.acquire(
            self._claim.customer_id,
            self._claim.item_id,
            cap=self._claim.cap,
            lease_seconds=self._lease_seconds,
        )
