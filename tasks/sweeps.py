"""Beat sweeps: the database-driven repairs that make lost Redis state harmless.

Each sweep is idempotent and safe to run twice at once: rows are moved by conditional updates
under the batch lock (a second sweep finds nothing left to move), and the candidate scans use
``FOR UPDATE SKIP LOCKED`` on Postgres so two sweeps split the work instead of queueing.
Each takes ``now`` as an argument so tests can drive them with an injected clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from service import lifecycle, metrics
from service.billing import release_pages
from service.db import transaction
from service.models import File, FileStatus, IdempotencyKey, Item, ItemStatus
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
    return counts


def redispatch_lost_items(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Admitted items not started within the bound: their message was lost; publish again.

    A duplicate message is harmless (the claim is conditional), a lost one would strand the
    item forever; so when in doubt, publish.
    """
    bound = now - timedelta(seconds=ctx.settings.redispatch_after_seconds)
    with ctx.session_factory() as session:
        lost = session.execute(
            select(Item.id, Item.customer_id)
            .where(Item.status == ItemStatus.PENDING, Item.admitted_at < bound)
            .limit(BATCH_SIZE)
        ).all()
    dispatcher = ctx.dispatcher
    republished = 0
    caps: dict[str, int] = {}
    for item_id, customer_id in lost:
        with transaction(ctx.session_factory) as session:
            moved = session.execute(
                update(Item)
                .where(
                    Item.id == item_id, Item.status == ItemStatus.PENDING, Item.admitted_at < bound
                )
                .values(admitted_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if not moved:
            continue
        if customer_id not in caps:
            with ctx.session_factory() as session:
                caps[customer_id] = customer_cap(session, customer_id)
        # Re-take the slot (idempotent for a holder that still has it). If Redis lost the
        # slots and the cap is full meanwhile, the item goes back to waiting instead.
        if dispatcher.semaphore.acquire(
            customer_id,
            item_id,
            cap=caps[customer_id],
            lease_seconds=dispatcher.admission_lease_seconds,
        ):
            dispatcher.publish(item_id)
            republished += 1
        else:
            with transaction(ctx.session_factory) as session:
                session.execute(
                    update(Item)
                    .where(Item.id == item_id, Item.status == ItemStatus.PENDING)
                    .values(admitted_at=None)
                )
    return {"republished": republished}


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


def delete_expired_blobs(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Inputs past retention from upload and results past retention from completion."""
    store = ctx.blob_store
    if store is None:
        return {"inputs": 0, "results": 0}
    retention = timedelta(hours=ctx.settings.retention_hours)
    with transaction(ctx.session_factory) as session:
        statement = (
            select(File.id, File.blob_key)
            .where(File.status == FileStatus.UPLOADED, File.uploaded_at <= now - retention)
            .limit(BATCH_SIZE)
        )
        inputs = session.execute(_skip_locked(ctx, statement)).all()
        store.delete_many([key for _, key in inputs])
        if inputs:
            session.execute(
                update(File)
                .where(File.id.in_([file_id for file_id, _ in inputs]))
                .values(status=FileStatus.EXPIRED, input_deleted_at=now)
                .execution_options(synchronize_session=False)
            )
    with transaction(ctx.session_factory) as session:
        result_rows = (
            select(Item.id, Item.result_key)
            .where(
                Item.result_key.is_not(None),
                Item.result_deleted_at.is_(None),
                Item.result_expires_at <= now,
            )
            .limit(BATCH_SIZE)
        )
        results = session.execute(_skip_locked(ctx, result_rows)).all()
        store.delete_many([key for _, key in results if key])
        if results:
            # Not a visible item change (status stays succeeded); the result endpoint says 410.
            session.execute(
                update(Item)
                .where(Item.id.in_([item_id for item_id, _ in results]))
                .values(result_deleted_at=now)
                .execution_options(synchronize_session=False)
            )
    return {"inputs": len(inputs), "results": len(results)}


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
    "prune_idempotency_keys": prune_idempotency_keys,
    "prune_events": prune_events,  # events (issue 16)
}
