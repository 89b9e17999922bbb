"""Page-sliced execution: a long document's item extracted as page ranges across the fleet.

1. The item's own task (``tasks.items``) probes the page count in the sandbox. Over
   ``settings.slice_pages`` it calls :func:`start_slicing`: in one transaction the item becomes
   the slices' coordinator (still ``running``, but holding no slot and no expiring lease, so
   no sweep touches it) and one ``pending`` slice row per range is inserted; the customer's
   free slots are then handed out by the dispatcher, slices first (``service/slices.py``).
2. Each slice is a task (:func:`process_slice`) claimed, leased, heartbeated and retried like an
   item: it streams the input to a temporary file, extracts its pages in the sandbox, writes a
   partial result blob and finishes its row under the batch lock.
3. The slice that finishes last (decided under the batch lock) takes the item's lease and
   assembles the result in page order, streamed partial by partial into a file; then the item
   succeeds and is billed exactly as an unsliced one (``settle_pages`` keyed by the item id).
   If that worker dies, the item's lease runs out, the requeue sweep puts it back to pending,
   and its next claim finds every slice done and assembles (:func:`resume_sliced`).

A slice that fails permanently fails the item with the engine's code; a transient failure
retries that slice (``ocr_retries``, backoff); a slice whose workers keep dying stops at
``max_attempts`` with ``internal_error``. A worker killed mid-document costs only its slice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Protocol

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

import ocr
from ocr.result import Warnings
from service import lifecycle, logs, metrics
from service.billing import release_pages
from service.clock import utcnow
from service.db import transaction
from service.extraction import ocr_config
from service.ids import new_id
from service.models import (
    Batch,
    Customer,
    File,
    Item,
    ItemStatus,
    Slice,
    SliceStatus,
)
from service.settings import Settings
from service.slices import SLICE_PREFIX
from service.storage import BlobNotFoundError, result_key
from tasks.context import TaskContext
from tasks.finish import Failure, Success, retry_delay, succeed_item
from tasks.lease import Heartbeat, LeaseHolder, LeaseLostError, fenced_by
from tasks.scratch import scratch_dir

log = logging.getLogger("pagelane.slices")

#: Documents smaller than this are not probed for their page count when nothing else needs it
#: (an unmetered customer): below it, a document long enough to slice is one whose pages are
#: a few hundred bytes of text, which extract in milliseconds a page and gain nothing from it.
PROBE_MIN_BYTES = 64 * 1024

SLICED = "sliced"
SKIPPED = "skipped"
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRYING = "retrying"
LEASE_LOST = "lease_lost"
#: a slice finished and others are still to come
SLICE_DONE = "slice_done"


def worth_probing(settings: Settings, size: int) -> bool:
    """Whether an item's page count is worth a probe just to decide on slicing."""
    return settings.slice_pages > 0 and size >= PROBE_MIN_BYTES


def should_slice(settings: Settings, page_count: int | None) -> bool:
    return (
        bool(settings.slice_pages)
        and page_count is not None
        and (page_count > settings.slice_pages)
    )


def page_ranges(page_count: int, slice_pages: int) -> list[tuple[int, int]]:
    """1-based inclusive ranges of at most ``slice_pages`` pages covering the document."""
    return [
        (first, min(first + slice_pages - 1, page_count))
        for first in range(1, page_count + 1, slice_pages)
    ]


def partial_key(customer_id: str, batch_id: str, item_id: str, index: int) -> str:
    return f"{result_key(customer_id, batch_id, item_id)}.part-{index:05d}"


class _HandoffLike(Protocol):
    admitted: list[str] | None


class ItemHolder(LeaseHolder, Protocol):
    """What slicing needs of an item's claim (``tasks.items.Claim`` is one): its lease, and
    where the admissions its moves make are handed on."""

    @property
    def file_id(self) -> str: ...
    @property
    def handoff(self) -> _HandoffLike: ...


# --- the coordinator: the item's own task -------------------------------------------------------


def start_slicing(ctx: TaskContext, claim: ItemHolder, page_count: int, reserved: int) -> str:
    """The item becomes the coordinator of its slices (one transaction): it stays ``running``
    with its reservation, gives up its slot and its expiring lease, and its slices wait for
    slots like items. Returns SLICED, or LEASE_LOST when the item was taken meanwhile."""
    now = utcnow()
    ranges = page_ranges(page_count, ctx.settings.slice_pages)
    try:
        with transaction(ctx.session_factory) as session:
            lifecycle.move_item(
                session,
                batch_id=claim.batch_id,
                item_id=claim.item_id,
                from_status=ItemStatus.RUNNING,
                to_status=ItemStatus.RUNNING,
                now=now,
                **fenced_by(claim.lease_token),
                page_count=page_count,
                pages_done=0,
                # No expiry: the stale-lease sweep leaves a coordinator alone (its slices
                # have leases of their own); not admitted: it holds no slot.
                lease_expires_at=None,
                admitted_at=None,
            )
            session.connection().execute(
                insert(Slice),
                [
                    {
                        "id": new_id(SLICE_PREFIX),
                        "item_id": claim.item_id,
                        "batch_id": claim.batch_id,
                        "customer_id": claim.customer_id,
                        "index": index,
                        "first_page": first,
                        "last_page": last,
                        "status": SliceStatus.PENDING,
                        "attempts": 0,
                        "ocr_failures": 0,
                        "pages_done": 0,
                        "created_at": now,
                    }
                    for index, (first, last) in enumerate(ranges)
                ],
            )
            admitted = ctx.dispatcher.mark_admitted(session, claim.customer_id, cap=claim.cap)
    except lifecycle.ItemNotMovedError:
        return LEASE_LOST
    claim.handoff.admitted = admitted
    log.info(
        "item %s: %d pages in %d slices of up to %d",
        claim.item_id,
        page_count,
        len(ranges),
        ctx.settings.slice_pages,
    )
    return SLICED


def resume_sliced(ctx: TaskContext, claim: ItemHolder) -> str:
    """An item with slices claimed again (its assembler died and the sweep requeued it): if
    every slice is done, assemble now under this claim's lease; else coordinate again."""
    with ctx.session_factory() as session:
        left = session.scalar(
            select(func.count()).where(
                Slice.item_id == claim.item_id, Slice.status != SliceStatus.SUCCEEDED
            )
        )
    if not left:
        return _assemble(ctx, claim.item_id, claim.lease_token, claim.handoff, claim.cap)
    try:
        with transaction(ctx.session_factory) as session:
            lifecycle.move_item(
                session,
                batch_id=claim.batch_id,
                item_id=claim.item_id,
                from_status=ItemStatus.RUNNING,
                to_status=ItemStatus.RUNNING,
                now=utcnow(),
                **fenced_by(claim.lease_token),
                lease_expires_at=None,
                admitted_at=None,
            )
            admitted = ctx.dispatcher.mark_admitted(session, claim.customer_id, cap=claim.cap)
    except lifecycle.ItemNotMovedError:
        return LEASE_LOST
    claim.handoff.admitted = admitted
    return SLICED


# --- one slice's task ----------------------------------------------------------------------------


@dataclass
class _Handoff:
    admitted: list[str] | None = None


@dataclass(frozen=True)
class SliceClaim:
    """A claimed slice. Satisfies ``tasks.lease.LeaseHolder`` (``item_id`` is the item's:
    :class:`SliceHeartbeat` renews the slice by ``slice_id``)."""

    slice_id: str
    item_id: str
    batch_id: str
    customer_id: str
    file_id: str
    lease_token: str
    cap: int
    index: int
    first_page: int
    last_page: int
    blob_key: str
    filename: str | None
    options: dict[str, Any]
    ocr_failures: int
    # The input's digest, recorded by the item's first task before it sliced the item.
    sha256_recorded: str | None
    handoff: _Handoff = field(default_factory=_Handoff)


def process_slice(ctx: TaskContext, slice_id: str) -> str:
    """Run one slice to an outcome (the worker logs it; tests assert it)."""
    with logs.log_context(slice_id=slice_id):
        claim = claim_slice(ctx, slice_id)
        if claim is None:
            return SKIPPED
        with logs.log_context(
            item_id=claim.item_id, batch_id=claim.batch_id, customer_id=claim.customer_id
        ):
            try:
                return _work(ctx, claim)
            finally:
                ctx.dispatcher.hand_over(
                    claim.customer_id, claim.slice_id, cap=claim.cap, marked=claim.handoff.admitted
                )


_CLAIM_READ = (
    select(
        Slice.item_id,
        Slice.batch_id,
        Slice.customer_id,
        Slice.status,
        Slice.admitted_at,
        Slice.attempts,
        Slice.ocr_failures,
        Slice.index.label("slice_index"),
        Slice.first_page,
        Slice.last_page,
        Item.status.label("item_status"),
        Item.file_id,
        Customer.concurrency,
        File.blob_key,
        File.filename,
        File.sha256,
        Batch.options,
    )
    .join(Item, Item.id == Slice.item_id)
    .join(Customer, Customer.id == Slice.customer_id)
    .join(File, File.id == Item.file_id)
    .join(Batch, Batch.id == Slice.batch_id)
    .where(Slice.id == bindparam("p_slice_id"))
)
# Moves of the item made on behalf of its slices: the item must still be running (a failed or
# requeued item's slices are no longer wanted); the slice's own lease is checked beside it.
_ITEM_RUNNING: tuple[Any, ...] = ()
# pages_done of a sliced item: the sum over its slices (the item row is the one being updated)
_PAGES_DONE_ACROSS = (
    select(func.coalesce(func.sum(Slice.pages_done), 0))
    .where(Slice.item_id == Item.id)
    .scalar_subquery()
)


def claim_slice(ctx: TaskContext, slice_id: str) -> SliceClaim | None:
    """``pending → running`` under a fresh lease token, or None (duplicate message, a slice
    whose item is no longer running, a lapsed slot, the attempt cap: the item fails)."""
    now = utcnow()
    token = secrets.token_hex(16)
    exhausted = orphaned = False
    with transaction(ctx.session_factory) as session:
        row = session.connection().execute(_CLAIM_READ, {"p_slice_id": slice_id}).first()
        if row is None or row.status != SliceStatus.PENDING or row.admitted_at is None:
            return None
        if row.item_status != ItemStatus.RUNNING:
            orphaned = True
            session.execute(
                update(Slice)
                .where(Slice.id == slice_id, Slice.status == SliceStatus.PENDING)
                .values(status=SliceStatus.FAILED, admitted_at=None)
            )
        elif not ctx.dispatcher.semaphore.acquire(
            row.customer_id,
            slice_id,
            cap=int(row.concurrency),
            lease_seconds=ctx.settings.lease_seconds,
        ):
            session.execute(
                update(Slice)
                .where(Slice.id == slice_id, Slice.status == SliceStatus.PENDING)
                .values(admitted_at=None)
            )
            return None
        elif row.attempts - row.ocr_failures >= ctx.settings.max_attempts:
            exhausted = True
        else:
            claimed = session.execute(
                update(Slice)
                .where(
                    Slice.id == slice_id,
                    Slice.status == SliceStatus.PENDING,
                    Slice.admitted_at.is_not(None),
                )
                .values(
                    status=SliceStatus.RUNNING,
                    lease_token=token,
                    lease_expires_at=now + timedelta(seconds=ctx.settings.lease_seconds),
                    attempts=Slice.attempts + 1,
                    retry_at=None,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                return None
    if orphaned:
        ctx.dispatcher.semaphore.release(row.customer_id, [slice_id])
        return None
    claim = SliceClaim(
        slice_id=slice_id,
        item_id=row.item_id,
        batch_id=row.batch_id,
        customer_id=row.customer_id,
        file_id=row.file_id,
        lease_token=token,
        cap=int(row.concurrency),
        index=row.slice_index,
        first_page=row.first_page,
        last_page=row.last_page,
        blob_key=row.blob_key,
        filename=row.filename,
        options=dict(row.options),
        ocr_failures=row.ocr_failures,
        sha256_recorded=row.sha256,
    )
    if exhausted:
        failure = Failure(
            "internal_error",
            f"gave up on pages {row.first_page}-{row.last_page} after {row.attempts} attempts;"
            " safe to resubmit",
        )
        _fail_item(ctx, claim, failure, fenced=False)
        ctx.dispatcher.hand_over(
            claim.customer_id, slice_id, cap=claim.cap, marked=claim.handoff.admitted
        )
        return None
    metrics.observe_queue_wait(row.admitted_at, now)
    return claim


def _work(ctx: TaskContext, claim: SliceClaim) -> str:
    store = ctx.blob_store
    assert store is not None
    started = time.perf_counter()
    try:
        with scratch_dir() as scratch:
            path = scratch / "input"
            digest = store.download_to(claim.blob_key, path)
            # The item's first task recorded the input's digest before slicing; every slice
            # must read the same bytes (issue 13), or the pages would come from two documents.
            if digest != claim.sha256_recorded:
                log.warning(
                    "input changed after upload",
                    extra={"file_id": claim.file_id, "recorded": claim.sha256_recorded},
                )
                return _fail(
                    ctx, claim, Failure("extraction_failed", "the input changed after upload")
                )
            with ctx.lease_keeper.keeping(claim, kind=SliceHeartbeat) as heartbeat:
                result = ctx.sandbox.extract(
                    path,
                    claim.options,
                    filename=claim.filename,
                    file_id=claim.file_id,
                    config=ocr_config(ctx.settings),
                    on_page=heartbeat.on_page,
                    pages=(claim.first_page, claim.last_page),
                )
    except BlobNotFoundError:
        return _fail(ctx, claim, Failure("upload_missing", "the input is no longer stored"))
    except LeaseLostError:
        return LEASE_LOST
    except ocr.errors.ExtractionError as exc:
        return _fail(ctx, claim, Failure(exc.code, exc.message, exc.transient))
    except Exception:
        log.exception("slice extraction crashed", extra={"slice_id": claim.slice_id})
        return _fail(ctx, claim, Failure("internal_error", "unexpected error; safe to resubmit"))
    finally:
        metrics.observe_extraction(time.perf_counter() - started)
    key = partial_key(claim.customer_id, claim.batch_id, claim.item_id, claim.index)
    pages = int(result["page_count"])
    # A partial is one slice's pages (bounded by PAGELANE_SLICE_PAGES), in memory already.
    body = json.dumps(result, separators=(",", ":")).encode()
    del result
    store.put(key, body, content_type="application/json")
    del body
    return _finish(ctx, claim, key, pages)


def _lock_batch(session: Session, batch_id: str) -> None:
    session.execute(select(Batch.id).where(Batch.id == batch_id).with_for_update())


def _finish(ctx: TaskContext, claim: SliceClaim, key: str, pages: int) -> str:
    """The slice succeeds under the batch lock; the last one to do so assembles the item."""
    now = utcnow()
    assembler = secrets.token_hex(16)
    try:
        with transaction(ctx.session_factory) as session:
            _lock_batch(session, claim.batch_id)
            moved = session.execute(
                update(Slice)
                .where(
                    Slice.id == claim.slice_id,
                    Slice.status == SliceStatus.RUNNING,
                    Slice.lease_token == claim.lease_token,
                )
                .values(
                    status=SliceStatus.SUCCEEDED,
                    pages_done=pages,
                    result_key=key,
                    admitted_at=None,
                    lease_token=None,
                    lease_expires_at=None,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not moved:
                return LEASE_LOST
            left = session.scalar(
                select(func.count()).where(
                    Slice.item_id == claim.item_id, Slice.status != SliceStatus.SUCCEEDED
                )
            )
            last = not left
            # pages_done counts across slices; the last slice also takes the item's lease
            # for the assembly (a lost assembler's item is requeued by the sweep).
            extra: dict[str, Any] = (
                {
                    "lease_token": assembler,
                    "lease_expires_at": now + timedelta(seconds=ctx.settings.lease_seconds),
                }
                if last
                else {}
            )
            lifecycle.move_item(
                session,
                batch_id=claim.batch_id,
                item_id=claim.item_id,
                from_status=ItemStatus.RUNNING,
                to_status=ItemStatus.RUNNING,
                now=now,
                where=_ITEM_RUNNING,
                pages_done=_PAGES_DONE_ACROSS,
                **extra,
            )
            if not last:
                claim.handoff.admitted = ctx.dispatcher.mark_admitted(
                    session, claim.customer_id, cap=claim.cap
                )
    except lifecycle.ItemNotMovedError:
        return LEASE_LOST
    if not last:
        return SLICE_DONE
    return _assemble(ctx, claim.item_id, assembler, claim.handoff, claim.cap)


# --- assembly --------------------------------------------------------------------------------


def _assemble(ctx: TaskContext, item_id: str, token: str, handoff: _HandoffLike, cap: int) -> str:
    """Write the item's result from its slices' partials into a temporary file as it is
    assembled (:func:`write_assembled`), upload that file, then succeed and bill the item
    (fenced by ``token``, the item's lease, renewed while the partials are read)."""
    store = ctx.blob_store
    assert store is not None
    with ctx.session_factory() as session:
        item = session.execute(
            select(Item.batch_id, Item.customer_id, Item.page_count, Item.pages_reserved).where(
                Item.id == item_id
            )
        ).one()
        part_keys = list(
            session.scalars(
                select(Slice.result_key).where(Slice.item_id == item_id).order_by(Slice.index)
            )
        )
    key = result_key(item.customer_id, item.batch_id, item_id)
    page_count = int(item.page_count or 0)
    renew_every = max(0.5, ctx.settings.lease_seconds / 4)
    started = time.perf_counter()

    def partials() -> Iterator[dict[str, Any]]:
        renewed = time.monotonic()
        for part_key in part_keys:
            if time.monotonic() - renewed >= renew_every:
                if not _renew_item_lease(ctx, item_id, token):
                    raise LeaseLostError(item_id)
                renewed = time.monotonic()
            assert part_key is not None  # every succeeded slice has its partial
            yield json.loads(store.get(part_key))

    try:
        with scratch_dir() as scratch:
            assembled = scratch / "result.json"
            with open(assembled, "w", encoding="utf-8") as out:
                write_assembled(out, page_count, partials())
            store.put_file(key, assembled, content_type="application/json")
    except LeaseLostError:
        return LEASE_LOST
    # Exactly the unsliced finish: one billing row keyed by the item id, its reservation
    # (held since the probe; only the lease holder changes it) settled.
    admitted = succeed_item(
        ctx,
        Success(
            batch_id=item.batch_id,
            item_id=item_id,
            customer_id=item.customer_id,
            lease_token=token,
            cap=cap,
            result_key=key,
            page_count=page_count,
            pages_billed=page_count,
            reserved=int(item.pages_reserved or 0),
        ),
    )
    if admitted is None:
        return LEASE_LOST
    handoff.admitted = admitted
    # The assembly's cost is what slicing adds after the last page (bench/slices.py).
    log.info(
        "item %s: assembled from %d slices, %d pages, in %.1f ms",
        item_id,
        len(part_keys),
        page_count,
        (time.perf_counter() - started) * 1000,
    )
    with contextlib.suppress(Exception):
        store.delete_many([k for k in part_keys if k])
    return SUCCEEDED


def write_assembled(out: IO[str], page_count: int, partials: Iterable[Mapping[str, Any]]) -> None:
    """Write one Extract result to ``out`` from the partial results of a document's slices,
    given in page order: the first partial's envelope with the whole document's page count,
    every chunk of every partial in order, the partials' warnings merged under the cap of one
    extraction. Chunks are written as they are read, so only the partial being copied is in
    memory; the text is what ``json.dumps`` of the whole result (as an unsliced item's) gives.
    """
    warnings = Warnings()
    first_chunk = True
    wrote_head = False
    for part in partials:
        if not wrote_head:
            # The same fields in the same order as ocr.result.envelope writes them.
            head = {
                "object": part["object"],
                "page_count": page_count,
                "pages_billed": page_count,
                "file": part["file"],
            }
            out.write(_compact(head)[:-1] + ',"chunks":[')
            wrote_head = True
        for chunk in part["chunks"]:
            if not first_chunk:
                out.write(",")
            out.write(_compact(chunk))
            first_chunk = False
        for warning in part["warnings"]:
            warnings.add(warning)
    if not wrote_head:
        raise ValueError("a result is assembled from at least one partial")
    out.write('],"warnings":' + _compact(warnings.as_list()) + "}")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _renew_item_lease(ctx: TaskContext, item_id: str, token: str) -> bool:
    with transaction(ctx.session_factory) as session:
        return bool(
            session.execute(
                update(Item)
                .where(
                    Item.id == item_id,
                    Item.status == ItemStatus.RUNNING,
                    Item.lease_token == token,
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=ctx.settings.lease_seconds))
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        )


# --- failures --------------------------------------------------------------------------------


def _fail(ctx: TaskContext, claim: SliceClaim, failure: Failure) -> str:
    """A transient failure retries this slice (its slot given up meanwhile); any other, or
    one past the retries, fails the whole item with its code."""
    settings = ctx.settings
    if not (failure.transient and claim.ocr_failures < settings.ocr_retries):
        if failure.transient:
            failure = Failure(
                failure.code, f"{failure.message} (after {settings.ocr_retries} retries)"
            )
        return _fail_item(ctx, claim, failure, fenced=True)
    now = utcnow()
    delay = retry_delay(settings, claim.ocr_failures)
    with transaction(ctx.session_factory) as session:
        moved = session.execute(
            update(Slice)
            .where(
                Slice.id == claim.slice_id,
                Slice.status == SliceStatus.RUNNING,
                Slice.lease_token == claim.lease_token,
            )
            .values(
                status=SliceStatus.PENDING,
                ocr_failures=Slice.ocr_failures + 1,
                retry_at=now + timedelta(seconds=delay),
                admitted_at=None,
                lease_token=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return LEASE_LOST
        claim.handoff.admitted = ctx.dispatcher.mark_admitted(
            session, claim.customer_id, cap=claim.cap
        )
    return RETRYING


def _fail_item(ctx: TaskContext, claim: SliceClaim, failure: Failure, *, fenced: bool) -> str:
    """The item fails with ``failure`` and every unfinished slice of it with it; their slots
    are released (their workers find their lease lost at the next heartbeat or finish)."""
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        _lock_batch(session, claim.batch_id)
        if fenced:
            ours = session.scalar(
                select(func.count()).where(
                    Slice.id == claim.slice_id,
                    Slice.status == SliceStatus.RUNNING,
                    Slice.lease_token == claim.lease_token,
                )
            )
            if not ours:
                return LEASE_LOST
        others = fail_item_in_session(ctx, session, claim.batch_id, claim.item_id, failure, now)
        if others is None:
            return LEASE_LOST
        claim.handoff.admitted = ctx.dispatcher.mark_admitted(
            session, claim.customer_id, cap=claim.cap
        )
    others = [o for o in others if o != claim.slice_id]
    if others:
        ctx.dispatcher.semaphore.release(claim.customer_id, others)
    metrics.item_finished("failed", failure.code)
    log.info(
        "item %s failed on pages %d-%d: %s (%s)",
        claim.item_id,
        claim.first_page,
        claim.last_page,
        failure.code,
        failure.message,
    )
    return FAILED


def fail_item_in_session(
    ctx: TaskContext,
    session: Session,
    batch_id: str,
    item_id: str,
    failure: Failure,
    now: datetime,
) -> list[str] | None:
    """In the caller's transaction (batch locked): fail a sliced item and its unfinished
    slices, release its reserved pages. Returns the slices that held slots, or None when the
    item was no longer running."""
    item = session.execute(
        select(Item.customer_id, Item.pages_reserved).where(
            Item.id == item_id, Item.status == ItemStatus.RUNNING
        )
    ).first()
    if item is None:
        return None
    lifecycle.move_item(
        session,
        batch_id=batch_id,
        item_id=item_id,
        from_status=ItemStatus.RUNNING,
        to_status=ItemStatus.FAILED,
        now=now,
        where=_ITEM_RUNNING,
        completed_at=now,
        error_code=failure.code,
        error_message=failure.message,
        pages_reserved=0,
        lease_token=None,
        lease_expires_at=None,
        admitted_at=None,
    )
    holders = list(
        session.scalars(
            select(Slice.id).where(
                Slice.item_id == item_id,
                Slice.status.in_([SliceStatus.PENDING, SliceStatus.RUNNING]),
                Slice.admitted_at.is_not(None),
            )
        )
    )
    session.execute(
        update(Slice)
        .where(
            Slice.item_id == item_id,
            Slice.status.in_([SliceStatus.PENDING, SliceStatus.RUNNING]),
        )
        .values(
            status=SliceStatus.FAILED, admitted_at=None, lease_token=None, lease_expires_at=None
        )
        .execution_options(synchronize_session=False)
    )
    release_pages(session, item.customer_id, int(item.pages_reserved or 0))
    return holders


# --- heartbeat -------------------------------------------------------------------------------


class SliceHeartbeat(Heartbeat):
    """Renews a slice's lease (and its slot); pages done move the item's ``pages_done``, the
    sum over its slices, as a visible change."""

    def beat(self) -> None:
        claim = self._claim
        assert isinstance(claim, SliceClaim)
        now = utcnow()
        expires = now + timedelta(seconds=self._lease_seconds)
        pages_done = self._pages_done
        with transaction(self._session_factory) as session:
            progressed = pages_done != self._published
            if progressed:
                # The batch lock first, as every item change (and the slice finish) takes it.
                _lock_batch(session, claim.batch_id)
            renewed = session.execute(
                update(Slice)
                .where(
                    Slice.id == claim.slice_id,
                    Slice.status == SliceStatus.RUNNING,
                    Slice.lease_token == claim.lease_token,
                )
                .values(lease_expires_at=expires, pages_done=pages_done)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not renewed:
                raise LeaseLostError(claim.slice_id)
            if progressed:
                try:
                    lifecycle.move_item(
                        session,
                        batch_id=claim.batch_id,
                        item_id=claim.item_id,
                        from_status=ItemStatus.RUNNING,
                        to_status=ItemStatus.RUNNING,
                        now=now,
                        where=_ITEM_RUNNING,
                        pages_done=_PAGES_DONE_ACROSS,
                    )
                except lifecycle.ItemNotMovedError as exc:
                    raise LeaseLostError(claim.slice_id) from exc
                self._published = pages_done
        self._semaphore.acquire(
            claim.customer_id, claim.slice_id, cap=claim.cap, lease_seconds=self._lease_seconds
        )


# --- sweeps (called from tasks/sweeps.py) ----------------------------------------------------

BATCH_SIZE = 500


def requeue_stale_slices(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Running slices whose lease ran out (their worker died): back to pending, only that
    slice; at the attempt cap the item fails with ``internal_error``."""
    counts = {"slices_requeued": 0, "slices_failed": 0}
    with ctx.session_factory() as session:
        stale = session.execute(
            select(Slice.id, Slice.batch_id)
            .where(Slice.status == SliceStatus.RUNNING, Slice.lease_expires_at < now)
            .limit(BATCH_SIZE)
        ).all()
    touched: set[str] = set()
    for slice_id, batch_id in stale:
        released: list[str] = []
        with transaction(ctx.session_factory) as session:
            _lock_batch(session, batch_id)
            row = session.execute(
                select(
                    Slice.item_id,
                    Slice.customer_id,
                    Slice.attempts,
                    Slice.ocr_failures,
                    Slice.first_page,
                    Slice.last_page,
                ).where(
                    Slice.id == slice_id,
                    Slice.status == SliceStatus.RUNNING,
                    Slice.lease_expires_at < now,
                )
            ).first()
            if row is None:
                continue
            if row.attempts - row.ocr_failures >= ctx.settings.max_attempts:
                failure = Failure(
                    "internal_error",
                    f"the worker was lost {row.attempts} times on pages"
                    f" {row.first_page}-{row.last_page}; safe to resubmit",
                )
                released = (
                    fail_item_in_session(ctx, session, batch_id, row.item_id, failure, now) or []
                )
                counts["slices_failed"] += 1
            else:
                session.execute(
                    update(Slice)
                    .where(Slice.id == slice_id, Slice.status == SliceStatus.RUNNING)
                    .values(
                        status=SliceStatus.PENDING,
                        admitted_at=None,
                        lease_token=None,
                        lease_expires_at=None,
                        pages_done=0,
                    )
                    .execution_options(synchronize_session=False)
                )
                released = [slice_id]
                counts["slices_requeued"] += 1
        ctx.dispatcher.semaphore.release(row.customer_id, released)
        touched.add(row.customer_id)
    for customer_id in touched:
        ctx.dispatcher.admit(customer_id)
    metrics.item_finished("failed", "internal_error", counts["slices_failed"])
    return counts
