"""Processing one batch item: claim, fetch, extract, store, finish — idempotently.

1. Claim: under the batch lock, ``pending → running`` only if still pending and admitted, with a
   fresh lease token; a duplicate message, a cancelled or an exhausted item claims nothing.
2. Work with no transaction open: fetch the input, probe it and reserve its pages (customers
   with a quota), extract it while the process's lease keeper renews the lease (database and
   semaphore) and reports progress.
3. Finish: one transaction fenced by the lease token writes the outcome, the counters and the
   billing row; then the slot is released and the customer's next item admitted.

A worker that dies anywhere leaves a running item whose lease runs out; the requeue sweep puts
it back to pending (or fails it with ``internal_error`` at the attempt cap).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update

import ocr
from service import batches as lifecycle
from service import logs, metrics
from service.billing import release_pages, reserve_pages, settle_pages
from service.clock import utcnow
from service.context import ServiceContext
from service.db import transaction
from service.engine import ocr_config
from service.models import Batch, Customer, File, Item, ItemStatus
from service.storage import BlobNotFoundError, BlobTooLargeError
from service.uploads import result_key

log = logging.getLogger("pagelane.items")


class LeaseLostError(Exception):
    """The item is no longer ours (cancelled, or reclaimed after our lease ran out)."""


@dataclass
class Handoff:
    """The customer's next items, admitted in the transaction that finished this one (its
    slot passes straight to them); None until such a transaction commits."""

    admitted: list[str] | None = None


@dataclass(frozen=True)
class Claim:
    item_id: str
    batch_id: str
    customer_id: str
    file_id: str
    lease_token: str
    options: dict[str, Any]
    cap: int
    # A customer with a page quota has pages reserved before extraction; without one there
    # is nothing to reserve against, and the pages are only counted when billed.
    metered: bool
    # What the work needs of the file, read with the claim (one round trip fewer per item).
    blob_key: str
    filename: str | None
    sha256_declared: str | None
    sha256_known: bool
    # Only this worker changes it while it holds the lease.
    ocr_failures: int
    handoff: Handoff = field(default_factory=Handoff)


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    transient: bool = False


def process_item(ctx: ServiceContext, item_id: str) -> str:
    """Run one item to an outcome; returns what happened (for logs and tests)."""
    with logs.log_context(item_id=item_id):
        claim = claim_item(ctx, item_id)
        if claim is None:
            return "skipped"
        with logs.log_context(batch_id=claim.batch_id, customer_id=claim.customer_id):
            try:
                outcome = _work(ctx, claim)
            finally:
                # The slot is given up whatever happened (a lost lease means someone else
                # holds the item), to the items that the finish admitted if it committed.
                ctx.dispatcher.hand_over(
                    claim.customer_id, claim.item_id, cap=claim.cap, marked=claim.handoff.admitted
                )
        return outcome


def claim_item(ctx: ServiceContext, item_id: str) -> Claim | None:
    settings = ctx.settings
    semaphore = ctx.dispatcher.semaphore
    now = utcnow()
    token = secrets.token_hex(16)
    # ItemNotMovedError must leave the transaction, so that it rolls back the batch counters
    # that move_item changed before it found the item no longer claimable.
    try:
        with transaction(ctx.session_factory) as session:
            row = session.connection().execute(_CLAIM_READ, {"p_item_id": item_id}).first()
            if row is None or row.status != ItemStatus.PENDING or row.admitted_at is None:
                return None
            cap = int(row.concurrency)
            # The admission slot normally still stands and this only renews it; if it lapsed
            # and the customer is at its cap meanwhile, the item goes back to waiting,
            # unclaimed. Idempotent, so it runs before the batch lock, not while holding it.
            if not semaphore.acquire(
                row.customer_id, item_id, cap=cap, lease_seconds=settings.lease_seconds
            ):
                session.connection().execute(
                    update(Item)
                    .where(Item.id == item_id, Item.status == ItemStatus.PENDING)
                    .values(admitted_at=None)
                )
                return None
            # Moved only if still pending and admitted once the batch is locked (not
            # cancelled, not claimed by a duplicate message meanwhile).
            move: dict[str, Any] = {
                "batch_id": row.batch_id,
                "item_id": item_id,
                "from_status": ItemStatus.PENDING,
                "now": now,
                "where": _ADMITTED,
            }
            exhausted = row.attempts - row.ocr_failures >= settings.max_attempts
            if exhausted:
                lifecycle.move_item(
                    session,
                    to_status=ItemStatus.FAILED,
                    completed_at=now,
                    admitted_at=None,
                    lease_token=None,
                    lease_expires_at=None,
                    error_code="internal_error",
                    error_message=f"gave up after {row.attempts} attempts; safe to resubmit",
                    **move,
                )
            else:
                batch, _ = lifecycle.move_item(
                    session,
                    to_status=ItemStatus.RUNNING,
                    attempts=_ONE_MORE_ATTEMPT,
                    lease_token=token,
                    lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                    started_at=_FIRST_START,
                    retry_at=None,
                    **move,
                )
    except lifecycle.ItemNotMovedError:
        return None
    # Metrics only once the transaction has committed: a rolled-back claim changed nothing.
    if exhausted:
        semaphore.release(row.customer_id, [item_id])
        metrics.item_finished("failed", "internal_error")
        return None
    metrics.observe_queue_wait(row.admitted_at, now)
    return Claim(
        item_id=item_id,
        batch_id=row.batch_id,
        customer_id=row.customer_id,
        file_id=row.file_id,
        lease_token=token,
        options=dict(batch.options),
        cap=cap,
        metered=row.page_quota is not None,
        blob_key=row.blob_key,
        filename=row.filename,
        sha256_declared=row.sha256_declared,
        sha256_known=row.sha256 is not None,
        ocr_failures=row.ocr_failures,
    )


def _work(ctx: ServiceContext, claim: Claim) -> str:
    settings = ctx.settings
    store = ctx.blob_store
    assert store is not None
    # One GET that refuses an oversized object from its length before reading the body: the
    # HEAD-then-GET of the design, in one round trip.
    try:
        data = store.get(claim.blob_key, max_bytes=settings.max_file_bytes)
    except BlobNotFoundError:
        return _fail(ctx, claim, Failure("upload_missing", "the input is no longer stored"))
    except BlobTooLargeError:
        return _fail(
            ctx,
            claim,
            Failure("document_too_large", f"the document exceeds {settings.max_file_bytes} bytes"),
        )
    digest = hashlib.sha256(data).hexdigest()
    if claim.sha256_declared and claim.sha256_declared != digest:
        return _fail(
            ctx,
            claim,
            Failure("extraction_failed", "the uploaded bytes do not match the declared sha256"),
        )

    config = ocr_config(settings)
    reserved = 0
    # Only a quota needs the page count before extraction. The probe opens the document a
    # second time (0.4 ms of a one-page item's 4 ms), and extraction raises the same errors.
    if claim.metered:
        try:
            pages = ocr.probe(data, config=config).page_count
        except ocr.errors.ExtractionError as exc:
            return _fail(ctx, claim, Failure(exc.code, exc.message, exc.transient))
        held = _reserve(ctx, claim, pages)
        if held == "quota":
            return _fail_for_quota(ctx, claim)
        if held == "lease_lost":
            return held
        reserved = pages

    started = time.perf_counter()
    try:
        with ctx.lease_keeper.keeping(claim) as heartbeat:
            result = ocr.extract(
                data,
                claim.options,
                filename=claim.filename,
                config=config,
                on_page=heartbeat.on_page,
                file_id=claim.file_id,
            )
    except LeaseLostError:
        return "lease_lost"
    except ocr.errors.ExtractionError as exc:
        return _fail(ctx, claim, Failure(exc.code, exc.message, exc.transient), reserved)
    except Exception:
        log.exception("extraction crashed", extra={"item_id": claim.item_id})
        failure = Failure("internal_error", "unexpected error; safe to resubmit")
        return _fail(ctx, claim, failure, reserved)
    finally:
        metrics.observe_extraction(time.perf_counter() - started)

    key = result_key(claim.customer_id, claim.batch_id, claim.item_id)
    store.put(
        key, json.dumps(result, separators=(",", ":")).encode(), content_type="application/json"
    )
    outcome = _succeed(
        ctx, claim, key, result["page_count"], result["pages_billed"], reserved, digest
    )
    if outcome == "succeeded":
        metrics.record_pages(result)
    return outcome


class LeaseKeeper:
    """One thread per process renews the leases of the items the process is extracting.

    A lease must not wait for page boundaries (one OCR page can take a minute), so a thread
    renews it every quarter lease. The thread lives as long as the process: starting and
    joining one for every item cost a one-page item about 1 ms (py-spy of the worker children:
    9 % of their time in ``Thread.start``/``join``, waiting for the new thread to be scheduled).
    Idle, it sleeps; an item's first renewal is a quarter lease after it starts.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._interval = max(0.5, ctx.settings.lease_seconds / 4)
        self._changed = threading.Condition()
        self._due: dict[Heartbeat, float] = {}  # monotonic time of each one's next renewal
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def keeping(self, claim: Claim) -> Iterator[Heartbeat]:
        """Renew ``claim``'s lease until the block ends; no renewal runs after it has ended."""
        heartbeat = Heartbeat(self._ctx, claim)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lease-keeper", daemon=True
                )
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

    def __init__(self, ctx: ServiceContext, claim: Claim) -> None:
        self._ctx = ctx
        self._claim = claim
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
        settings = self._ctx.settings
        now = utcnow()
        expires = now + timedelta(seconds=settings.lease_seconds)
        pages_done = self._pages_done
        with transaction(self._ctx.session_factory) as session:
            if pages_done == self._published:
                # Only the lease moves: not a visible change, so no batch lock or change number.
                renewed = session.connection().execute(
                    update(Item)
                    .where(
                        Item.id == self._claim.item_id,
                        Item.status == ItemStatus.RUNNING,
                        Item.lease_token == self._claim.lease_token,
                    )
                    .values(lease_expires_at=expires)
                    .execution_options(synchronize_session=False)
                ).rowcount
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
                        **_fenced(self._claim),
                        pages_done=pages_done,
                        page_count=self._page_count,
                        lease_expires_at=expires,
                    )
                except lifecycle.ItemNotMovedError as exc:
                    raise LeaseLostError(self._claim.item_id) from exc
                self._published = pages_done
        # acquire, not renew: it extends our slot and, if Redis lost it (a restart), takes
        # it back, so the semaphore again reflects what runs.
        self._ctx.dispatcher.semaphore.acquire(
            self._claim.customer_id,
            self._claim.item_id,
            cap=self._claim.cap,
            lease_seconds=settings.lease_seconds,
        )


# The hot statements, built once: building a statement cost SQLAlchemy more than running it
# (cProfile of the worker). Conditions and expressions of item moves: see move_item.
_CLAIM_READ = (
    select(
        Item.batch_id,
        Item.customer_id,
        Item.file_id,
        Item.status,
        Item.admitted_at,
        Item.attempts,
        Item.ocr_failures,
        Customer.concurrency,
        Customer.page_quota,
        File.blob_key,
        File.filename,
        File.sha256_declared,
        File.sha256,
    )
    .join(Customer, Customer.id == Item.customer_id)
    .join(File, File.id == Item.file_id)
    .where(Item.id == bindparam("p_item_id"))
)
# SPEC: a file's sha256 is null until known.
_RECORD_SHA256 = (
    update(File)
    .where(File.id == bindparam("p_file_id"), File.sha256.is_(None))
    .values(sha256=bindparam("p_sha256"))
    .execution_options(synchronize_session=False)
)
_ADMITTED = (Item.admitted_at.is_not(None),)
# The item is still ours while it carries our lease token (with ``running``).
_FENCE = (Item.lease_token == bindparam("p_lease_token"),)
_ONE_MORE_ATTEMPT = Item.attempts + 1
_FIRST_START = func.coalesce(Item.started_at, lifecycle.NOW)


def _fenced(claim: Claim) -> dict[str, Any]:
    """The arguments of a move that only the lease holder may make."""
    return {"where": _FENCE, "params": {"p_lease_token": claim.lease_token}}


def _reserve(ctx: ServiceContext, claim: Claim, pages: int) -> str:
    """Hold the document's pages against the customer's quota: "reserved", "quota" (it cannot
    cover them) or "lease_lost"."""
    with transaction(ctx.session_factory) as session:
        if not reserve_pages(session, claim.customer_id, pages):
            return "quota"
        held = session.connection().execute(
            update(Item)
            .where(
                Item.id == claim.item_id,
                Item.status == ItemStatus.RUNNING,
                Item.lease_token == claim.lease_token,
            )
            .values(pages_reserved=pages, page_count=pages)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not held:
            release_pages(session, claim.customer_id, pages)
            return "lease_lost"
    return "reserved"


def _succeed(
    ctx: ServiceContext,
    claim: Claim,
    key: str,
    page_count: int,
    pages: int,
    reserved: int,
    digest: str,
) -> str:
    now = utcnow()
    try:
        with transaction(ctx.session_factory) as session:
            lifecycle.move_item(
                session,
                batch_id=claim.batch_id,
                item_id=claim.item_id,
                from_status=ItemStatus.RUNNING,
                to_status=ItemStatus.SUCCEEDED,
                now=now,
                **_fenced(claim),
                pages_billed=pages,
                page_count=page_count,
                pages_done=page_count,
                pages_reserved=0,
                completed_at=now,
                lease_token=None,
                lease_expires_at=None,
                admitted_at=None,
                result_key=key,
                result_expires_at=now + timedelta(hours=ctx.settings.retention_hours),
                error_code=None,
                error_message=None,
            )
            if not settle_pages(
                session,
                billing_id=claim.item_id,
                customer_id=claim.customer_id,
                batch_id=claim.batch_id,
                reserved=reserved,
                pages=pages,
                now=now,
            ):
                # Billed before (impossible while the lease fences the finish, kept exact
                # anyway): the batch's pages_billed stays the sum of its billing rows.
                session.connection().execute(
                    update(Batch)
                    .where(Batch.id == claim.batch_id)
                    .values(pages_billed=Batch.pages_billed - pages)
                    .execution_options(synchronize_session=False)
                )
            if not claim.sha256_known:
                session.connection().execute(
                    _RECORD_SHA256, {"p_file_id": claim.file_id, "p_sha256": digest}
                )
            admitted = ctx.dispatcher.mark_admitted(session, claim.customer_id, cap=claim.cap)
    except lifecycle.ItemNotMovedError:
        return "lease_lost"
    claim.handoff.admitted = admitted
    metrics.item_finished("succeeded")
    return "succeeded"


def _fail(ctx: ServiceContext, claim: Claim, failure: Failure, reserved: int = 0) -> str:
    """The item failed (``reserved`` pages go back to the quota), or waits for an OCR retry."""
    settings = ctx.settings
    now = utcnow()
    common: dict[str, Any] = {
        "pages_reserved": 0,
        "lease_token": None,
        "lease_expires_at": None,
        "admitted_at": None,
    }
    retry = failure.transient and claim.ocr_failures < settings.ocr_retries
    try:
        with transaction(ctx.session_factory) as session:
            if retry:
                # Back to waiting with the slot given up; the dispatcher re-admits it once
                # retry_at passes. Exponential backoff with full jitter.
                delay = settings.ocr_retry_backoff_seconds * (2**claim.ocr_failures)
                delay = delay / 2 + random.uniform(0, delay / 2)
                lifecycle.move_item(
                    session,
                    batch_id=claim.batch_id,
                    item_id=claim.item_id,
                    from_status=ItemStatus.RUNNING,
                    to_status=ItemStatus.PENDING,
                    now=now,
                    **_fenced(claim),
                    ocr_failures=claim.ocr_failures + 1,
                    retry_at=now + timedelta(seconds=delay),
                    **common,
                )
            else:
                if failure.transient:
                    failure = Failure(
                        failure.code, f"{failure.message} (after {settings.ocr_retries} retries)"
                    )
                lifecycle.move_item(
                    session,
                    batch_id=claim.batch_id,
                    item_id=claim.item_id,
                    from_status=ItemStatus.RUNNING,
                    to_status=ItemStatus.FAILED,
                    now=now,
                    **_fenced(claim),
                    completed_at=now,
                    ocr_failures=claim.ocr_failures + int(failure.transient),
                    error_code=failure.code,
                    error_message=failure.message,
                    **common,
                )
            release_pages(session, claim.customer_id, reserved)
            admitted = ctx.dispatcher.mark_admitted(session, claim.customer_id, cap=claim.cap)
    except lifecycle.ItemNotMovedError:
        return "lease_lost"
    claim.handoff.admitted = admitted
    if retry:
        return "retrying"
    metrics.item_finished("failed", failure.code)
    return f"failed:{failure.code}"


def _fail_for_quota(ctx: ServiceContext, claim: Claim) -> str:
    """This item and every pending item of the customer fail with payment_required."""
    outcome = _fail(
        ctx, claim, Failure("payment_required", "the page quota cannot cover this document")
    )
    now = utcnow()
    with ctx.session_factory() as session:
        batch_ids = list(
            session.scalars(
                select(Item.batch_id)
                .where(Item.customer_id == claim.customer_id, Item.status == ItemStatus.PENDING)
                .distinct()
                .order_by(Item.batch_id)
            )
        )
    released: list[str] = []
    for batch_id in batch_ids:  # one batch lock at a time, in id order: no deadlocks
        with transaction(ctx.session_factory) as session:
            batch: Batch = lifecycle.lock_batch(session, batch_id)
            released += session.scalars(
                select(Item.id).where(
                    Item.batch_id == batch_id,
                    Item.status == ItemStatus.PENDING,
                    Item.admitted_at.is_not(None),
                )
            )
            failed = lifecycle.move_items_in_bulk(
                session,
                batch,
                ItemStatus.PENDING,
                ItemStatus.FAILED,
                now,
                completed_at=now,
                admitted_at=None,
                error_code="payment_required",
                error_message="the page quota of this account is used up",
            )
        metrics.item_finished("failed", "payment_required", failed)
    ctx.dispatcher.semaphore.release(claim.customer_id, released)
    # The items that this item's finish admitted have just failed too: nothing to hand over.
    claim.handoff.admitted = []
    return outcome
