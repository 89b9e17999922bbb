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

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

import ocr
from service import lifecycle, logs, metrics
from service.billing import release_pages, reserve_pages
from service.clock import utcnow
from service.db import transaction
from service.extraction import ocr_config
from service.models import Batch, Customer, File, Item, ItemStatus, Slice
from service.storage import BlobNotFoundError, BlobTooLargeError, result_key
from tasks import slices
from tasks.context import TaskContext
from tasks.finish import Failure, Success, retry_delay, succeed_item
from tasks.lease import LeaseLostError, fenced
from tasks.scratch import scratch_dir

if TYPE_CHECKING:
    # A row of a Core statement (the claim's read, a batch after a move): a variadic generic.
    AnyRow = Row[*tuple[Any, ...]]

log = logging.getLogger("pagelane.items")


class Outcome(StrEnum):
    """How one run of an item's task ended (the worker logs it; tests assert it)."""

    #: nothing to claim: a duplicate message, a cancelled item, or one past its attempt cap
    SKIPPED = "skipped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: a transient failure: back to pending, admitted again once its retry time has come
    RETRYING = "retrying"
    #: the item was taken back while we worked (cancelled, or our lease ran out)
    LEASE_LOST = "lease_lost"
    #: a long document: its page slices were created and are admitted like items
    #: (tasks/slices.py); the item is finished by the last of them
    SLICED = "sliced"


class Reservation(StrEnum):
    """The outcome of holding a document's pages against the customer's quota."""

    RESERVED = "reserved"
    OVER_QUOTA = "over_quota"
    LEASE_LOST = "lease_lost"


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
    # The digest recorded when the worker first read the upload (None: never read yet).
    sha256_recorded: str | None
    # Only this worker changes it while it holds the lease.
    ocr_failures: int
    handoff: Handoff = field(default_factory=Handoff)
    # The item already has page slices (claimed again after its assembler was lost).
    sliced: bool = False


def process_item(ctx: TaskContext, item_id: str) -> Outcome:
    """Run one item to an outcome; returns what happened (for logs and tests)."""
    with logs.log_context(item_id=item_id):
        claim = claim_item(ctx, item_id)
        if claim is None:
            return Outcome.SKIPPED
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


def claim_item(ctx: TaskContext, item_id: str) -> Claim | None:
    """``pending → running`` under a fresh lease token, or None when there is nothing to claim
    (a duplicate message, a cancelled item, one whose slot lapsed, one past its attempt cap)."""
    now = utcnow()
    token = secrets.token_hex(16)
    # ItemNotMovedError must leave the transaction, so that it rolls back the batch counters
    # that move_item changed before it found the item no longer claimable.
    try:
        with transaction(ctx.session_factory) as session:
            row = session.connection().execute(_CLAIM_READ, {"p_item_id": item_id}).first()
            if row is None or row.status != ItemStatus.PENDING or row.admitted_at is None:
                return None
            if not _renew_admission_slot(ctx, session, row, item_id):
                return None
            exhausted = row.attempts - row.ocr_failures >= ctx.settings.max_attempts
            if exhausted:
                _give_up(session, row, item_id, now)
            else:
                batch = _start(ctx, session, row, item_id, token, now)
    except lifecycle.ItemNotMovedError:
        return None
    # Metrics only once the transaction has committed: a rolled-back claim changed nothing.
    if exhausted:
        ctx.dispatcher.semaphore.release(row.customer_id, [item_id])
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
        cap=int(row.concurrency),
        metered=row.page_quota is not None,
        blob_key=row.blob_key,
        filename=row.filename,
        sha256_declared=row.sha256_declared,
        sha256_recorded=row.sha256,
        ocr_failures=row.ocr_failures,
        sliced=bool(row.sliced),
    )


def _renew_admission_slot(ctx: TaskContext, session: Session, row: AnyRow, item_id: str) -> bool:
    """The admission slot normally still stands and this only renews it; if it lapsed and the
    customer is at its cap meanwhile, the item goes back to waiting, unclaimed. Idempotent, so
    it runs before the batch lock, not while holding it."""
    if ctx.dispatcher.semaphore.acquire(
        row.customer_id,
        item_id,
        cap=int(row.concurrency),
        lease_seconds=ctx.settings.lease_seconds,
    ):
        return True
    session.connection().execute(
        update(Item)
        .where(Item.id == item_id, Item.status == ItemStatus.PENDING)
        .values(admitted_at=None)
    )
    return False


def _claim_move(row: AnyRow, item_id: str, now: datetime) -> dict[str, Any]:
    """A claim moves the item only if it is still pending and admitted once the batch is
    locked (not cancelled, not claimed by a duplicate message meanwhile)."""
    return {
        "batch_id": row.batch_id,
        "item_id": item_id,
        "from_status": ItemStatus.PENDING,
        "now": now,
        "where": _ADMITTED,
    }


def _give_up(session: Session, row: AnyRow, item_id: str, now: datetime) -> None:
    """The attempt cap is reached (its workers kept dying): fail it with internal_error."""
    lifecycle.move_item(
        session,
        to_status=ItemStatus.FAILED,
        completed_at=now,
        admitted_at=None,
        lease_token=None,
        lease_expires_at=None,
        error_code="internal_error",
        error_message=f"gave up after {row.attempts} attempts; safe to resubmit",
        **_claim_move(row, item_id, now),
    )


def _start(
    ctx: TaskContext, session: Session, row: AnyRow, item_id: str, token: str, now: datetime
) -> AnyRow:
    """``pending → running`` with our lease; returns the batch row after the move."""
    batch, _ = lifecycle.move_item(
        session,
        to_status=ItemStatus.RUNNING,
        attempts=_ONE_MORE_ATTEMPT,
        lease_token=token,
        lease_expires_at=now + timedelta(seconds=ctx.settings.lease_seconds),
        started_at=_FIRST_START,
        retry_at=None,
        **_claim_move(row, item_id, now),
    )
    return batch


def _work(ctx: TaskContext, claim: Claim) -> Outcome:
    settings = ctx.settings
    store = ctx.blob_store
    assert store is not None
    if claim.sliced:  # slices: see tasks/slices.py
        return Outcome(slices.resume_sliced(ctx, claim))
    with scratch_dir() as scratch:
        path = scratch / "input"
        # One GET that refuses an oversized object from its length before reading the body
        # (the HEAD-then-GET of the design in one round trip), streamed to disk and hashed.
        try:
            digest = store.download_to(claim.blob_key, path, max_bytes=settings.max_file_bytes)
        except BlobNotFoundError:
            return _fail(ctx, claim, Failure("upload_missing", "the input is no longer stored"))
        except BlobTooLargeError:
            return _fail(
                ctx,
                claim,
                Failure(
                    "document_too_large", f"the document exceeds {settings.max_file_bytes} bytes"
                ),
            )
        return _work_on_input(ctx, claim, path, digest)


def _work_on_input(ctx: TaskContext, claim: Claim, path: Path, digest: str) -> Outcome:
    """Check the input's digest, probe and reserve, slice or extract the input at ``path``."""
    settings = ctx.settings
    store = ctx.blob_store
    assert store is not None
    if claim.sha256_declared and claim.sha256_declared != digest:
        return _fail(
            ctx,
            claim,
            Failure("extraction_failed", "the uploaded bytes do not match the declared sha256"),
        )
    # Uploads are create-only, but a store that ignores the condition (or a bucket written to
    # out of band) could still swap the input: the first read records the digest, every later
    # read must find the same bytes.
    recorded = claim.sha256_recorded or _record_sha256_at_first_sight(ctx, claim.file_id, digest)
    if recorded != digest:
        log.warning(
            "input changed after upload",
            extra={"file_id": claim.file_id, "recorded": recorded, "read": digest},
        )
        return _fail(ctx, claim, Failure("extraction_failed", "the input changed after upload"))

    config = ocr_config(settings)
    reserved = 0
    pages: int | None = None
    # Only a quota, or a document large enough to be sliced, needs the page count before
    # extraction. The probe opens the document a second time (0.4 ms of a one-page item's
    # 4 ms), and extraction raises the same errors.
    if claim.metered or slices.worth_probing(settings, path.stat().st_size):
        try:
            pages = ctx.sandbox.probe(path, config=config).page_count
        except ocr.errors.ExtractionError as exc:
            return _fail(ctx, claim, Failure(exc.code, exc.message, exc.transient))
    if claim.metered:
        assert pages is not None
        held = _reserve(ctx, claim, pages)
        if held == Reservation.OVER_QUOTA:
            return _fail_for_quota(ctx, claim)
        if held == Reservation.LEASE_LOST:
            return Outcome.LEASE_LOST
        reserved = pages
    if slices.should_slice(settings, pages):
        assert pages is not None
        return Outcome(slices.start_slicing(ctx, claim, pages, reserved))

    started = time.perf_counter()
    try:
        with ctx.lease_keeper.keeping(claim) as heartbeat:
            # In the capped child: whatever the document does, this process and its other
            # items survive (a bomb ends as extraction_failed, see ocr/sandbox.py).
            result = ctx.sandbox.extract(
                path,
                claim.options,
                filename=claim.filename,
                config=config,
                on_page=heartbeat.on_page,
                file_id=claim.file_id,
            )
    except LeaseLostError:
        return Outcome.LEASE_LOST
    except ocr.errors.ExtractionError as exc:
        return _fail(ctx, claim, Failure(exc.code, exc.message, exc.transient), reserved)
    except Exception:
        log.exception("extraction crashed", extra={"item_id": claim.item_id})
        failure = Failure("internal_error", "unexpected error; safe to resubmit")
        return _fail(ctx, claim, failure, reserved)
    finally:
        metrics.observe_extraction(time.perf_counter() - started)

    # The sandbox hands the result over in memory anyway, and an unsliced one is at most
    # PAGELANE_SLICE_PAGES pages (longer documents are sliced and assembled on disk, see
    # tasks/slices.py), so it is uploaded from memory.
    key = result_key(claim.customer_id, claim.batch_id, claim.item_id)
    store.put(
        key, json.dumps(result, separators=(",", ":")).encode(), content_type="application/json"
    )
    outcome = _succeed(
        ctx, claim, key, result["page_count"], result["pages_billed"], reserved, digest
    )
    if outcome == Outcome.SUCCEEDED:
        metrics.record_pages(result)
    return outcome


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
        exists().where(Slice.item_id == Item.id).label("sliced"),
    )
    .join(Customer, Customer.id == Item.customer_id)
    .join(File, File.id == Item.file_id)
    .where(Item.id == bindparam("p_item_id"))
)


def _record_sha256_at_first_sight(ctx: TaskContext, file_id: str, digest: str) -> str:
    """Record ``digest`` as the file's sha256 unless one is recorded; returns the recorded one
    (another item of the same file may have read it first)."""
    with transaction(ctx.session_factory) as session:
        connection = session.connection()
        recorded = connection.execute(_RECORD_SHA256, {"p_file_id": file_id, "p_sha256": digest})
        if recorded.rowcount:
            return digest
        return str(connection.scalar(select(File.sha256).where(File.id == file_id)))


# SPEC: a file's sha256 is null until known.
_RECORD_SHA256 = (
    update(File)
    .where(File.id == bindparam("p_file_id"), File.sha256.is_(None))
    .values(sha256=bindparam("p_sha256"))
    .execution_options(synchronize_session=False)
)
_ADMITTED = (Item.admitted_at.is_not(None),)
_ONE_MORE_ATTEMPT = Item.attempts + 1
_FIRST_START = func.coalesce(Item.started_at, lifecycle.NOW)


def _reserve(ctx: TaskContext, claim: Claim, pages: int) -> Reservation:
    """Hold the document's pages against the customer's quota."""
    with transaction(ctx.session_factory) as session:
        if not reserve_pages(session, claim.customer_id, pages):
            return Reservation.OVER_QUOTA
        held = (
            session.connection()
            .execute(
                update(Item)
                .where(
                    Item.id == claim.item_id,
                    Item.status == ItemStatus.RUNNING,
                    Item.lease_token == claim.lease_token,
                )
                .values(pages_reserved=pages, page_count=pages)
                .execution_options(synchronize_session=False)
            )
            .rowcount
        )
        if not held:
            release_pages(session, claim.customer_id, pages)
            return Reservation.LEASE_LOST
    return Reservation.RESERVED


def _succeed(
    ctx: TaskContext,
    claim: Claim,
    key: str,
    page_count: int,
    pages: int,
    reserved: int,
    digest: str,
) -> Outcome:
    admitted = succeed_item(
        ctx,
        Success(
            batch_id=claim.batch_id,
            item_id=claim.item_id,
            customer_id=claim.customer_id,
            lease_token=claim.lease_token,
            cap=claim.cap,
            result_key=key,
            page_count=page_count,
            pages_billed=pages,
            reserved=reserved,
        ),
    )
    if admitted is None:
        return Outcome.LEASE_LOST
    claim.handoff.admitted = admitted
    return Outcome.SUCCEEDED


def _fail(ctx: TaskContext, claim: Claim, failure: Failure, reserved: int = 0) -> Outcome:
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
                delay = retry_delay(settings, claim.ocr_failures)
                lifecycle.move_item(
                    session,
                    batch_id=claim.batch_id,
                    item_id=claim.item_id,
                    from_status=ItemStatus.RUNNING,
                    to_status=ItemStatus.PENDING,
                    now=now,
                    **fenced(claim),
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
                    **fenced(claim),
                    completed_at=now,
                    ocr_failures=claim.ocr_failures + int(failure.transient),
                    error_code=failure.code,
                    error_message=failure.message,
                    **common,
                )
            release_pages(session, claim.customer_id, reserved)
            admitted = ctx.dispatcher.mark_admitted(session, claim.customer_id, cap=claim.cap)
    except lifecycle.ItemNotMovedError:
        return Outcome.LEASE_LOST
    claim.handoff.admitted = admitted
    if retry:
        return Outcome.RETRYING
    metrics.item_finished("failed", failure.code)
    log.info("item %s failed: %s (%s)", claim.item_id, failure.code, failure.message)
    return Outcome.FAILED


def _fail_for_quota(ctx: TaskContext, claim: Claim) -> Outcome:
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
