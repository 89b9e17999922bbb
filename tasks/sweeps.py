"""Beat sweeps: the database-driven repairs that make lost Redis state harmless.

Each sweep is idempotent and safe to run twice at once: rows are moved by conditional updates
under the batch lock (a second sweep finds nothing left to move), and the candidate scans use
``FOR UPDATE SKIP LOCKED`` on Postgres so two sweeps split the work instead of queueing.
Each takes ``now`` as an argument so tests can drive them with an injected clock.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update

from service import lifecycle, metrics
from service.billing import release_pages
from service.db import transaction
from service.models import File, FileStatus, IdempotencyKey, Item, ItemStatus, Slice
from service.storage import BlobStore
from tasks import slices
from tasks.context import TaskContext
from tasks.dispatch import customer_cap

log = logging.getLogger("pagelane.sweeps")

BATCH_SIZE = 500

# A move's condition, built once (service.lifecycle.move_item).
_LEASE_EXPIRED = (Item.lease_expires_at < bindparam("p_expired_before"),)


def requeue_stale_items(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Running items whose lease ran out (their worker died): back to pending, or give up."""
    settings = ctx.settings
    counts = {"requeued": 0, "failed": 0}
    with ctx.session_factory() as session:
        stale = session.execute(
            select(Item.id, Item.batch_id)
            .where(Item.status == ItemStatus.RUNNING, Item.lease_expires_at < now)
            .limit(BATCH_SIZE)
        ).all()
    released: dict[str, Any] = {
        "pages_reserved": 0,
        "lease_token": None,
        "lease_expires_at": None,
        "admitted_at": None,
    }
    touched_customers: set[str] = set()
    for item_id, batch_id in stale:
        with transaction(ctx.session_factory) as session:
            # Read under the batch lock: a renewal or finish meanwhile wins, so does another
            # sweep, and the reservation released is the one the item holds as it moves.
            lifecycle.lock_batch(session, batch_id)
            item = session.execute(
                select(
                    Item.customer_id, Item.attempts, Item.ocr_failures, Item.pages_reserved
                ).where(
                    Item.id == item_id,
                    Item.status == ItemStatus.RUNNING,
                    Item.lease_expires_at < now,
                )
            ).first()
            if item is None:
                continue
            move = {
                "batch_id": batch_id,
                "item_id": item_id,
                "from_status": ItemStatus.RUNNING,
                "now": now,
                "where": _LEASE_EXPIRED,
                "params": {"p_expired_before": now},
                **released,
            }
            if item.attempts - item.ocr_failures >= settings.max_attempts:
                lifecycle.move_item(
                    session,
                    to_status=ItemStatus.FAILED,
                    completed_at=now,
                    error_code="internal_error",
                    error_message=f"the worker was lost {item.attempts} times; safe to resubmit",
                    **move,
                )
                counts["failed"] += 1
            else:
                lifecycle.move_item(session, to_status=ItemStatus.PENDING, **move)
                counts["requeued"] += 1
            release_pages(session, item.customer_id, item.pages_reserved)
        touched_customers.add(item.customer_id)
    for customer_id in touched_customers:
        ctx.dispatcher.prune_holders(customer_id)
        ctx.dispatcher.admit(customer_id)
    metrics.item_finished("failed", "internal_error", counts["failed"])
    # Page slices of long documents: only the slice whose worker died (tasks/slices.py).
    counts.update(slices.requeue_stale_slices(ctx, now))
    return counts


def redispatch_lost_items(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Admitted items and page slices not started within the bound: their message was lost;
    publish again.

    A duplicate message is harmless (the claim is conditional), a lost one would strand the
    item forever; so when in doubt, publish.
    """
    return {
        "republished": _redispatch_lost(ctx, now, Item),
        "slices_republished": _redispatch_lost(ctx, now, Slice),
    }


def _redispatch_lost(ctx: TaskContext, now: datetime, table: type[Item] | type[Slice]) -> int:
    """Republish ``table``'s pending rows admitted before the bound; returns how many. Items
    and slices are admitted alike, by ``admitted_at`` and a semaphore slot under their id."""
    bound = now - timedelta(seconds=ctx.settings.redispatch_after_seconds)
    pending = ItemStatus.PENDING  # the same value in SliceStatus
    with ctx.session_factory() as session:
        lost = session.execute(
            select(table.id, table.customer_id)
            .where(table.status == pending, table.admitted_at < bound)
            .limit(BATCH_SIZE)
        ).all()
    dispatcher = ctx.dispatcher
    republished = 0
    caps: dict[str, int] = {}
    for holder_id, customer_id in lost:
        with transaction(ctx.session_factory) as session:
            moved = session.execute(
                update(table)
                .where(table.id == holder_id, table.status == pending, table.admitted_at < bound)
                .values(admitted_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if not moved:
            continue
        if customer_id not in caps:
            with ctx.session_factory() as session:
                caps[customer_id] = customer_cap(session, customer_id)
        # Re-take the slot (idempotent for a holder that still has it). If Redis lost the
        # slots and the cap is full meanwhile, the row goes back to waiting instead.
        if dispatcher.semaphore.acquire(
            customer_id,
            holder_id,
            cap=caps[customer_id],
            lease_seconds=dispatcher.admission_lease_seconds,
        ):
            dispatcher.publish(holder_id)
            republished += 1
        else:
            with transaction(ctx.session_factory) as session:
                session.execute(
                    update(table)
                    .where(table.id == holder_id, table.status == pending)
                    .values(admitted_at=None)
                )
    return republished


def expire_uploads(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Never-uploaded files past their window → expired; their pending items → upload_missing."""
    with transaction(ctx.session_factory) as session:
        statement = (
            select(File.id)
            .where(File.status == FileStatus.AWAITING_UPLOAD, File.expires_at <= now)
            .limit(BATCH_SIZE)
        )
        file_ids = list(session.scalars(_skip_locked(ctx, statement)))
        if file_ids:
            session.execute(
                update(File)
                .where(File.id.in_(file_ids), File.status == FileStatus.AWAITING_UPLOAD)
                .values(status=FileStatus.EXPIRED)
                .execution_options(synchronize_session=False)
            )
    failed = _fail_pending_items_of_files(ctx, file_ids, now) if file_ids else 0
    metrics.item_finished("failed", "upload_missing", failed)
    return {"files_expired": len(file_ids), "items_failed": failed}


def _fail_pending_items_of_files(ctx: TaskContext, file_ids: list[str], now: datetime) -> int:
    with ctx.session_factory() as session:
        batch_ids = sorted(
            set(
                session.scalars(
                    select(Item.batch_id).where(
                        Item.file_id.in_(file_ids), Item.status == ItemStatus.PENDING
                    )
                )
            )
        )
    failed = 0
    for batch_id in batch_ids:
        with transaction(ctx.session_factory) as session:
            batch = lifecycle.lock_batch(session, batch_id)
            failed += lifecycle.move_items_in_bulk(
                session,
                batch,
                ItemStatus.PENDING,
                ItemStatus.FAILED,
                now,
                extra_where=[Item.file_id.in_(file_ids)],
                completed_at=now,
                admitted_at=None,
                error_code="upload_missing",
                error_message="the upload never happened and its window expired",
            )
    return failed


# Rows one deletion step moves: four DeleteObjects calls of 1,000 keys (S3's maximum), which
# the S3 store sends concurrently.
DELETE_BATCH = 4000
# Files that expired while awaiting upload are looked at this long after their expiry (the
# index range stays small); anything older the sweeps missed is the orphan sweep's.
EXPIRED_LOOKBACK = timedelta(days=2)
ORPHAN_CURSOR_KEY = "pagelane:sweep:orphans:cursor"


def delete_expired_blobs(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Inputs past retention (from upload, or from registration for uploads never noticed)
    and results past retention from completion, 1,000 a step until none is left or the run's
    time budget (``blob_sweep_budget_seconds``) is spent; the next run continues."""
    store = ctx.blob_store
    if store is None:
        return {"inputs": 0, "results": 0}
    deadline = time.monotonic() + ctx.settings.blob_sweep_budget_seconds
    totals = {"inputs": 0, "results": 0}
    inputs_left = results_left = True
    while inputs_left or results_left:
        if inputs_left:
            deleted = _delete_expired_inputs(ctx, store, now)
            totals["inputs"] += deleted
            inputs_left = deleted == DELETE_BATCH
        if results_left:
            deleted = _delete_expired_results(ctx, store, now)
            totals["results"] += deleted
            results_left = deleted == DELETE_BATCH
        if time.monotonic() >= deadline:
            if inputs_left or results_left:
                log.warning("blob deletion sweep ran out of its time budget; continuing next run")
            break
    return totals


def _delete_expired_inputs(ctx: TaskContext, store: BlobStore, now: datetime) -> int:
    retention = timedelta(hours=ctx.settings.retention_hours)
    with transaction(ctx.session_factory) as session:
        statement = (
            select(File.id, File.blob_key)
            .where(
                File.input_deleted_at.is_(None),
                or_(
                    # Uploaded: retention from the upload.
                    and_(File.status == FileStatus.UPLOADED, File.uploaded_at <= now - retention),
                    # Expired while awaiting upload (expires_at = registration + retention):
                    # the PUT may have landed unnoticed, or after the expiry. Delete the key
                    # whether or not it holds bytes (a missing key is not an error).
                    and_(
                        File.status == FileStatus.EXPIRED,
                        File.expires_at <= now,
                        File.expires_at > now - EXPIRED_LOOKBACK,
                    ),
                ),
            )
            .limit(DELETE_BATCH)
        )
        inputs = session.execute(_skip_locked(ctx, statement)).all()
        if not inputs:
            return 0
        store.delete_many([key for _, key in inputs])
        session.execute(
            update(File)
            .where(File.id.in_([file_id for file_id, _ in inputs]))
            .values(status=FileStatus.EXPIRED, input_deleted_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(inputs)


def _delete_expired_results(ctx: TaskContext, store: BlobStore, now: datetime) -> int:
    with transaction(ctx.session_factory) as session:
        result_rows = (
            select(Item.id, Item.result_key)
            .where(
                Item.result_key.is_not(None),
                Item.result_deleted_at.is_(None),
                Item.result_expires_at <= now,
            )
            .limit(DELETE_BATCH)
        )
        results = session.execute(_skip_locked(ctx, result_rows)).all()
        if not results:
            return 0
        store.delete_many([key for _, key in results if key])
        # Not a visible item change (status stays succeeded); the result endpoint says 410.
        session.execute(
            update(Item)
            .where(Item.id.in_([item_id for item_id, _ in results]))
            .values(result_deleted_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(results)


def delete_orphan_blobs(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Blobs no live row points at (a crashed registration, an upload that landed after its
    file was swept, a result whose worker lost its lease), older than retention by the
    store's own ``last_modified``: deleted.

    The store is listed in key order from a cursor kept in Redis, at most
    ``orphan_sweep_max_keys`` keys a run (S3: one ListObjectsV2 call per 1,000), so a run's
    cost is bounded and successive runs walk the whole store, then start over. A lost cursor
    only restarts the walk. Live means: an input whose file is ``awaiting_upload`` or
    ``uploaded`` (its retention runs from the upload, which the row knows), a result whose item
    holds it and has not had it deleted. Everything else old enough goes.
    """
    store = ctx.blob_store
    if store is None:
        return {"listed": 0, "orphans": 0}
    cutoff = now - timedelta(hours=ctx.settings.retention_hours)
    try:
        raw = ctx.redis.get(ORPHAN_CURSOR_KEY)
        cursor = raw.decode() if isinstance(raw, bytes) else None
    except Exception:
        log.warning("orphan sweep: no cursor (Redis unreachable); starting from the beginning")
        cursor = None
    listed = orphans = 0
    candidates: list[str] = []
    last_key: str | None = None
    for info in store.list_prefix("", start_after=cursor):
        listed += 1
        last_key = info.key
        if info.last_modified is not None and _aware(info.last_modified) <= _aware(cutoff):
            candidates.append(info.key)
        if len(candidates) >= 1000:
            orphans += _delete_unowned(ctx, store, candidates)
            candidates = []
        if listed >= ctx.settings.orphan_sweep_max_keys:
            break
    else:
        last_key = None  # the walk reached the end: the next run starts over
    if candidates:
        orphans += _delete_unowned(ctx, store, candidates)
    try:
        if last_key is None:
            ctx.redis.delete(ORPHAN_CURSOR_KEY)
        else:
            ctx.redis.set(ORPHAN_CURSOR_KEY, last_key, ex=7 * 24 * 3600)
    except Exception:
        log.warning("orphan sweep: could not save its cursor (Redis unreachable)")
    return {"listed": listed, "orphans": orphans}


def _delete_unowned(ctx: TaskContext, store: BlobStore, keys: list[str]) -> int:
    """Delete those of ``keys`` (old enough) that no live row owns; returns how many."""
    inputs: dict[str, str] = {}  # file id -> key
    results: dict[str, str] = {}  # item id -> key
    unknown: list[str] = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 3 and parts[1] == "inputs":
            inputs[parts[2]] = key
        elif len(parts) == 4 and parts[1] == "results" and parts[3].endswith(".json"):
            results[parts[3][: -len(".json")]] = key
        else:
            unknown.append(key)  # not a key our services make: left alone
    live: set[str] = set()
    with ctx.session_factory() as session:
        if inputs:
            live.update(
                session.scalars(
                    select(File.blob_key).where(
                        File.id.in_(list(inputs)),
                        File.status.in_([FileStatus.AWAITING_UPLOAD, FileStatus.UPLOADED]),
                        File.input_deleted_at.is_(None),
                    )
                )
            )
        if results:
            live.update(
                key
                for key in session.scalars(
                    select(Item.result_key).where(
                        Item.id.in_(list(results)), Item.result_deleted_at.is_(None)
                    )
                )
                if key
            )
    doomed = [key for key in [*inputs.values(), *results.values()] if key not in live]
    if doomed:
        store.delete_many(doomed)
        log.info("orphan sweep deleted %d blobs", len(doomed))
    return len(doomed)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def prune_idempotency_keys(ctx: TaskContext, now: datetime) -> dict[str, int]:
    cutoff = now - timedelta(hours=ctx.settings.idempotency_hours)
    with transaction(ctx.session_factory) as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return {"pruned": int(result.rowcount or 0)}  # type: ignore[attr-defined]


def dispatch_pending(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """The backstop tick: admit whatever can be admitted (retries whose wait is over, too)."""
    return {"admitted": ctx.dispatcher.admit_all()}


def _skip_locked(ctx: TaskContext, statement: Any) -> Any:
    """Postgres: lock the rows taken and skip those a concurrent sweep holds (SQLite has one
    writer at a time anyway)."""
    if ctx.engine.dialect.name == "postgresql":
        return statement.with_for_update(skip_locked=True)
    return statement


# --- events (issue 16) ---------------------------------------------------------------------------


def prune_events(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Events and finished webhook deliveries go with their batch's retention: those of batches
    completed more than the retention ago, and of batches that no longer exist."""
    from service.models import Batch, DeliveryStatus, Event, WebhookDelivery

    cutoff = now - timedelta(hours=ctx.settings.retention_hours)
    with transaction(ctx.session_factory) as session:
        gone = (
            select(Batch.id)
            .where(Batch.completed_at.is_not(None), Batch.completed_at < cutoff)
            .scalar_subquery()
        )
        orphaned = ~select(Batch.id).where(Batch.id == Event.batch_id).exists()
        doomed = list(
            session.scalars(
                select(Event.batch_id)
                .where((Event.batch_id.in_(gone)) | orphaned)
                .distinct()
                .limit(BATCH_SIZE)
            )
        )
        if not doomed:
            return {"events": 0, "deliveries": 0}
        events = session.execute(delete(Event).where(Event.batch_id.in_(doomed)))
        deliveries = session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.batch_id.in_(doomed),
                WebhookDelivery.status != DeliveryStatus.PENDING,
            )
        )
    return {
        "events": int(events.rowcount or 0),  # type: ignore[attr-defined]
        "deliveries": int(deliveries.rowcount or 0),  # type: ignore[attr-defined]
    }


# --- end events


SWEEPS = {
    "dispatch_pending": dispatch_pending,
    "requeue_stale_items": requeue_stale_items,
    "redispatch_lost_items": redispatch_lost_items,
    "expire_uploads": expire_uploads,
    "delete_expired_blobs": delete_expired_blobs,
    "delete_orphan_blobs": delete_orphan_blobs,
    "prune_idempotency_keys": prune_idempotency_keys,
    "prune_events": prune_events,  # events (issue 16)
}
