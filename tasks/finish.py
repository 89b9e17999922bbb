"""The finishes that an item's lease holder writes, shared by both ways an item is worked on:
its own task (``tasks.items``) and, for a sliced item, the slice that assembles it
(``tasks.slices``). One function each, so a sliced item is billed, counted and followed by the
customer's next admissions by the very statements an unsliced one is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update

from service import lifecycle, metrics
from service.billing import settle_pages
from service.clock import utcnow
from service.db import transaction
from service.models import Batch, ItemStatus
from service.settings import Settings
from tasks.context import TaskContext
from tasks.lease import fenced_by


@dataclass(frozen=True)
class Failure:
    """Why an item (or one of its slices) failed: SPEC's error code, a message, and whether a
    retry may succeed (an OCR provider outage)."""

    code: str
    message: str
    transient: bool = False


def retry_delay(settings: Settings, ocr_failures: int) -> float:
    """Seconds until a transient failure is retried: exponential backoff with full jitter."""
    delay = settings.ocr_retry_backoff_seconds * (2**ocr_failures)
    return delay / 2 + random.uniform(0, delay / 2)


@dataclass(frozen=True)
class Success:
    """An item's result, stored under ``result_key``, ready to be finished."""

    batch_id: str
    item_id: str
    customer_id: str
    #: the item's lease token: only its holder may finish it
    lease_token: str
    #: the customer's concurrency cap, for the admissions this finish makes
    cap: int
    result_key: str
    page_count: int
    pages_billed: int
    #: pages held against the customer's quota since the probe (0 when unmetered)
    reserved: int


def succeed_item(ctx: TaskContext, success: Success) -> list[str] | None:
    """One transaction fenced by the lease token: the item succeeds (status, counters, result),
    one billing row keyed by the item id settles its reservation, and the customer's next items
    are admitted. Returns those items (the finished item's slot passes straight to them), or
    None when the lease was lost meanwhile (nothing was written)."""
    now = utcnow()
    try:
        with transaction(ctx.session_factory) as session:
            lifecycle.move_item(
                session,
                batch_id=success.batch_id,
                item_id=success.item_id,
                from_status=ItemStatus.RUNNING,
                to_status=ItemStatus.SUCCEEDED,
                now=now,
                **fenced_by(success.lease_token),
                pages_billed=success.pages_billed,
                page_count=success.page_count,
                pages_done=success.page_count,
                pages_reserved=0,
                completed_at=now,
                lease_token=None,
                lease_expires_at=None,
                admitted_at=None,
                result_key=success.result_key,
                result_expires_at=now + timedelta(hours=ctx.settings.retention_hours),
                error_code=None,
                error_message=None,
            )
            if not settle_pages(
                session,
                billing_id=success.item_id,
                customer_id=success.customer_id,
                batch_id=success.batch_id,
                reserved=success.reserved,
                pages=success.pages_billed,
                now=now,
            ):
                # Billed before (impossible while the lease fences the finish, kept exact
                # anyway): the batch's pages_billed stays the sum of its billing rows.
                session.connection().execute(
                    update(Batch)
                    .where(Batch.id == success.batch_id)
                    .values(pages_billed=Batch.pages_billed - success.pages_billed)
                    .execution_options(synchronize_session=False)
                )
            admitted = ctx.dispatcher.mark_admitted(session, success.customer_id, cap=success.cap)
    except lifecycle.ItemNotMovedError:
        return None
    metrics.item_finished("succeeded")
    return admitted
