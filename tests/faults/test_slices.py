"""Page-sliced execution (tasks/slices.py): a long document's item split into page slices, each
admitted, leased and retried like an item under the customer's cap; the last slice assembles
the result in page order and bills the item once.

The first tests drive the task code in process against the real Postgres, Redis and S3 (moto)
with publishing captured, so every step is deterministic; the slow ones run real workers.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

import ocr
from ocr.sandbox import Sandbox
from service.api.app import create_app
from service.models import BillingEntry, Customer, File, Item, ItemStatus, Slice, SliceStatus
from service.settings import Settings, load_settings
from service.slices import is_slice_id
from tasks.context import TaskContext
from tasks.items import process_item
from tasks.slices import page_ranges, process_slice
from tests.api.conftest import Tenant
from tests.conftest import build_context, new_customer_key
from tests.fixtures.hostile.make_hostile import scan_pdf, text_pdf
from tests.support.live import Stack
from tests.support.stack import wait_for


def scanned_pdf(pages: int, *, dpi: int = 100) -> bytes:
    """A scanned document: each page an 8-bit gray image of a few text lines (needs OCR)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    images = []
    for p in range(1, pages + 1):
        im = Image.new("L", (int(8.5 * dpi), 11 * dpi), 255)
        draw = ImageDraw.Draw(im)
        for line in range(6):
            draw.text((60, 80 + 60 * line), f"Page {p} line {line + 1} slices", fill=0, font=font)
        images.append(im)
    return scan_pdf(images)


class Published:
    """The dispatcher's messages, captured instead of sent: (kind, id) in publish order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, holder: str) -> None:
        self.ids.append(holder)


@pytest.fixture
def slice_settings(pg_s3_settings: Settings, flush_redis: None) -> Settings:
    return load_settings(
        **{**pg_s3_settings.model_dump(), "slice_pages": 5, "ocr_retry_backoff_seconds": 0.2}
    )


@pytest.fixture
def ctx(slice_settings: Settings) -> Iterator[TaskContext]:
    context = build_context(slice_settings)
    context.dispatcher.publish = Published()  # type: ignore[assignment]
    yield context
    context.close()


def published(ctx: TaskContext) -> Published:
    publish = ctx.dispatcher.publish
    assert isinstance(publish, Published)
    return publish


def tenant_of(ctx: TaskContext, name: str, **kwargs: Any) -> Tenant:
    customer_id, key = new_customer_key(ctx, name, **kwargs)
    app = create_app(ctx.settings, context=ctx, dispatcher=ctx.dispatcher)
    return Tenant(app.test_client(), customer_id, key)


def in_flight(ctx: TaskContext, customer_id: str) -> int:
    """Slots held in the database: admitted items (a coordinator holds none) and slices."""
    with ctx.session_factory() as session:
        items = session.scalar(
            select(func.count()).where(
                Item.customer_id == customer_id,
                Item.admitted_at.is_not(None),
                Item.status.in_([ItemStatus.PENDING, ItemStatus.RUNNING]),
            )
        )
        slices = session.scalar(
            select(func.count()).where(
                Slice.customer_id == customer_id,
                Slice.admitted_at.is_not(None),
                Slice.status.in_([SliceStatus.PENDING, SliceStatus.RUNNING]),
            )
        )
    return int(items or 0) + int(slices or 0)


def drain(ctx: TaskContext, cap: int | None = None, customer_id: str | None = None) -> list[str]:
    """Run every published message in order (items and slices) until none is left; with
    ``cap``, check after each step that the customer never holds more than its cap."""
    outcomes = []
    queue = published(ctx).ids
    while queue:
        holder = queue.pop(0)
        run = process_slice if is_slice_id(holder) else process_item
        outcomes.append(f"{holder[:3]}:{run(ctx, holder)}")
        if cap is not None and customer_id is not None:
            assert in_flight(ctx, customer_id) <= cap
    return outcomes


def slices_of(ctx: TaskContext, item_id: str) -> list[Slice]:
    with ctx.session_factory() as session:
        return list(
            session.scalars(select(Slice).where(Slice.item_id == item_id).order_by(Slice.index))
        )


def item_row(ctx: TaskContext, item_id: str) -> Item:
    with ctx.session_factory() as session:
        item = session.get(Item, item_id)
        assert item is not None
        return item


def billing(ctx: TaskContext, customer_id: str) -> tuple[dict[str, int], int, int]:
    with ctx.session_factory() as session:
        rows = dict(
            session.execute(
                select(BillingEntry.id, BillingEntry.pages).where(
                    BillingEntry.customer_id == customer_id
                )
            ).all()
        )
        used, reserved = session.execute(
            select(Customer.pages_used, Customer.pages_reserved).where(Customer.id == customer_id)
        ).one()
    return rows, int(used), int(reserved)


def test_page_ranges_cover_the_document() -> None:
    assert page_ranges(23, 5) == [(1, 5), (6, 10), (11, 15), (16, 20), (21, 23)]
    assert page_ranges(10, 5) == [(1, 5), (6, 10)]


def test_sliced_item_is_assembled_in_page_order_identical_and_billed_once(
    ctx: TaskContext, report: Callable[..., None]
) -> None:
    document = text_pdf(23, lines_per_page=12)
    # A quota: the page count is probed whatever the document's size, and reserved.
    tenant = tenant_of(ctx, "sliced", quota=1000, concurrency=3)
    batch = tenant.submit([tenant.upload(document)]).get_json()
    item_id = batch["items"][0]["id"]
    ctx.dispatcher.admit(tenant.customer_id)
    outcomes = drain(ctx, cap=3, customer_id=tenant.customer_id)
    assert outcomes[0] == "ite:sliced"
    assert sorted(outcomes[1:]) == ["slc:slice_done"] * 4 + ["slc:succeeded"]
    item = item_row(ctx, item_id)
    assert item.status == ItemStatus.SUCCEEDED
    assert (item.page_count, item.pages_done) == (23, 23)
    slices = slices_of(ctx, item_id)
    assert [(s.first_page, s.last_page) for s in slices] == page_ranges(23, 5)
    assert all(s.status == SliceStatus.SUCCEEDED and s.attempts == 1 for s in slices)

    store = ctx.blob_store
    assert store is not None and item.result_key is not None
    assembled = json.loads(store.get(item.result_key))
    unsliced = Sandbox(1)
    try:
        reference = unsliced.extract_bytes(
            document, {}, file_id=assembled["file"]["id"], filename=assembled["file"]["filename"]
        )
    finally:
        unsliced.close()
    assert assembled["chunks"] == reference["chunks"]
    assert assembled == reference
    pages_in_order = [c["page_no"] for c in assembled["chunks"]]
    assert pages_in_order == sorted(pages_in_order) and pages_in_order[-1] == 23
    # The partial results are gone once the item is assembled.
    assert not [s.result_key for s in slices if s.result_key and store.head(s.result_key)]

    rows, used, reserved = billing(ctx, tenant.customer_id)
    assert rows == {item_id: 23} and used == 23 and reserved == 0
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["status"] == "completed" and body["pages_billed"] == 23
    report(pages=23, slices=len(slices), billed=23, identical=True)


def test_a_failing_slice_fails_the_item_with_its_code(
    ctx: TaskContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_extract = Sandbox.extract

    def failing(self: Sandbox, path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("pages") == (6, 10):
            raise ocr.errors.CorruptDocumentError("The PDF is damaged and could not be read.")
        return real_extract(self, path, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "extract", failing)
    tenant = tenant_of(ctx, "failing", quota=1000, concurrency=2)
    batch = tenant.submit([tenant.upload(text_pdf(14, lines_per_page=5))]).get_json()
    item_id = batch["items"][0]["id"]
    ctx.dispatcher.admit(tenant.customer_id)
    outcomes = drain(ctx, cap=2, customer_id=tenant.customer_id)
    assert "slc:failed" in outcomes
    item = item_row(ctx, item_id)
    assert item.status == ItemStatus.FAILED and item.error_code == "extraction_failed"
    assert {s.status for s in slices_of(ctx, item_id)} <= {"succeeded", "failed"}
    rows, used, reserved = billing(ctx, tenant.customer_id)
    assert rows == {} and used == 0 and reserved == 0
    assert in_flight(ctx, tenant.customer_id) == 0


def test_a_transient_slice_failure_retries_that_slice_then_fails_with_its_code(
    ctx: TaskContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(self: Sandbox, path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("pages") == (1, 5):
            raise ocr.errors.OCRProviderError("The OCR provider is unavailable.")
        return {"page_count": 5}  # never reached for other ranges below

    monkeypatch.setattr(Sandbox, "extract", unavailable)
    tenant = tenant_of(ctx, "transient", quota=1000, concurrency=1)
    batch = tenant.submit([tenant.upload(text_pdf(8, lines_per_page=5))]).get_json()
    item_id = batch["items"][0]["id"]
    ctx.dispatcher.admit(tenant.customer_id)
    outcomes = drain(ctx, cap=1, customer_id=tenant.customer_id)
    # The second slice runs while the first waits out its backoff (0.2 s). On a loaded machine
    # the backoff can pass within that drain and a retry run in it too: retries are counted
    # over all the drains, not per drain.
    while outcomes[-1] != "slc:failed":
        wait_for(lambda: ctx.dispatcher.admit_all(), 30, 0.2, "the retry to be admitted")
        outcomes += drain(ctx)
    assert outcomes[:2] == ["ite:sliced", "slc:retrying"]
    assert outcomes.count("slc:slice_done") == 1
    assert outcomes.count("slc:retrying") == ctx.settings.ocr_retries
    item = item_row(ctx, item_id)
    assert item.status == ItemStatus.FAILED and item.error_code == "ocr_provider_error"
    first = slices_of(ctx, item_id)[0]
    assert first.ocr_failures == ctx.settings.ocr_retries
    assert billing(ctx, tenant.customer_id) == ({}, 0, 0)


def test_an_input_swapped_after_slicing_fails_the_item_in_its_slices(ctx: TaskContext) -> None:
    """Each slice streams the input again and checks it against the digest the item's first
    task recorded: pages of two different documents are never assembled into one result."""
    tenant = tenant_of(ctx, "swapped", quota=1000, concurrency=2)
    batch = tenant.submit([tenant.upload(text_pdf(12, lines_per_page=5))]).get_json()
    item_id = batch["items"][0]["id"]
    ctx.dispatcher.admit(tenant.customer_id)
    queue = published(ctx).ids
    assert process_item(ctx, queue.pop(0)) == "sliced"
    with ctx.session_factory() as session:
        blob_key = session.execute(
            select(File.blob_key).join(Item, Item.file_id == File.id).where(Item.id == item_id)
        ).scalar_one()
    store = ctx.blob_store
    assert store is not None
    store.put(blob_key, text_pdf(12, lines_per_page=6))  # out of band: no create-only here

    outcomes = drain(ctx, cap=2, customer_id=tenant.customer_id)

    assert "slc:failed" in outcomes
    item = item_row(ctx, item_id)
    assert item.status == ItemStatus.FAILED and item.error_code == "extraction_failed"
    assert item.error_message == "the input changed after upload"
    assert billing(ctx, tenant.customer_id) == ({}, 0, 0)
    assert in_flight(ctx, tenant.customer_id) == 0


def test_the_cap_counts_slices_and_items_together(ctx: TaskContext) -> None:
    tenant = tenant_of(ctx, "capped", quota=1000, concurrency=2)
    long_doc = text_pdf(20, lines_per_page=5)
    short = [text_pdf(1, lines_per_page=3) + f"% {n}\n".encode() for n in range(3)]
    batch = tenant.submit([tenant.upload(d) for d in [long_doc, *short]]).get_json()
    ctx.dispatcher.admit(tenant.customer_id)
    assert len(published(ctx).ids) == 2
    outcomes = drain(ctx, cap=2, customer_id=tenant.customer_id)
    assert outcomes.count("slc:slice_done") == 3 and "slc:succeeded" in outcomes
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["status"] == "completed" and body["pages_billed"] == 23


def test_cancel_during_a_sliced_item_lets_it_finish(ctx: TaskContext) -> None:
    tenant = tenant_of(ctx, "cancel", quota=1000, concurrency=2)
    documents = [text_pdf(12, lines_per_page=5), text_pdf(1, lines_per_page=3)]
    batch = tenant.submit([tenant.upload(d) for d in documents]).get_json()
    item_id = batch["items"][0]["id"]
    ctx.dispatcher.admit(tenant.customer_id)
    queue = published(ctx).ids
    # Only the long item is admitted first (the short one, second, is pending or admitted).
    assert process_item(ctx, queue.pop(0)) == "sliced"
    # Cancel now: the sliced item is running, so it finishes; the other one is cancelled
    # (a message already published for it finds nothing to claim).
    cancelled = tenant.post(f"/v1/batches/{batch['id']}/cancel", {}).get_json()
    assert cancelled["counts"]["cancelled"] == 1
    drain(ctx, cap=2, customer_id=tenant.customer_id)
    item = item_row(ctx, item_id)
    assert item.status == ItemStatus.SUCCEEDED and item.pages_done == 12
    assert all(s.status == SliceStatus.SUCCEEDED for s in slices_of(ctx, item_id))
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["status"] == "completed"
    assert body["counts"]["succeeded"] == 1 and body["counts"]["cancelled"] == 1
    assert billing(ctx, tenant.customer_id)[0] == {item_id: 12}


# --- real workers -----------------------------------------------------------------------------


@pytest.fixture
def stack_settings(pg_s3_settings: Settings, flush_redis: None) -> Settings:
    """tests.support.live's shape (short leases) with slices of 4 pages."""
    return load_settings(
        **{
            **pg_s3_settings.model_dump(),
            "lease_seconds": 6,
            "redispatch_after_seconds": 8,
            "ocr_retry_backoff_seconds": 0.5,
            "task_time_limit_seconds": 120,
            "visibility_timeout_seconds": 600,
            "slice_pages": 4,
        }
    )


def running_now(stack: Stack, customer_id: str) -> int:
    """Work running for the customer right now: slices, and items that are not coordinators
    (a coordinator has no expiring lease and holds no slot)."""
    with stack.ctx.session_factory() as session:
        items = session.scalar(
            select(func.count()).where(
                Item.customer_id == customer_id,
                Item.status == ItemStatus.RUNNING,
                Item.lease_expires_at.is_not(None),
            )
        )
        slices = session.scalar(
            select(func.count()).where(
                Slice.customer_id == customer_id, Slice.status == SliceStatus.RUNNING
            )
        )
    return int(items or 0) + int(slices or 0)


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_slice(stack: Stack, report: Callable[..., None]) -> None:
    """Two one-process workers share a 16-page scan (4 slices) and a few one-page items under
    a cap of 2; one worker is killed -9 mid-slice. Only that slice is redone; the item is
    assembled, billed once; running work never exceeds the cap."""
    doomed = stack.worker(concurrency=1)
    stack.worker(concurrency=1)
    stack.beat()
    tenant = stack.tenant("killed", quota=10_000, concurrency=2)
    scan = scanned_pdf(16)
    others = [text_pdf(1, lines_per_page=3) + f"% {n}\n".encode() for n in range(3)]
    batch = tenant.submit(stack.upload_many(tenant, [scan, *others])).get_json()
    item_id = batch["items"][0]["id"]
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, running_now(stack, tenant.customer_id))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:

        def slice_midway() -> list[Slice]:
            running = [s for s in slices_of(stack.ctx, item_id) if s.status == SliceStatus.RUNNING]
            return running if any(s.pages_done >= 1 for s in running) else []

        wait_for(slice_midway, 120, 0.1, "a slice to be under way")
        before = {s.id: s.pages_done for s in slices_of(stack.ctx, item_id)}
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.process.wait(timeout=10)
        stack.wait_terminal(tenant, batch["id"], timeout=240)
    finally:
        stop.set()
        sampler.join()
    item = item_row(stack.ctx, item_id)
    assert item.status == ItemStatus.SUCCEEDED and item.page_count == 16
    slices = slices_of(stack.ctx, item_id)
    redone = [s for s in slices if s.attempts > 1]
    assert len(redone) <= 1, [(s.index, s.attempts) for s in slices]
    # Pages redone: at least what the lost slice had reported, at most the whole slice.
    pages_redone = sum(before[s.id] for s in redone)
    slice_pages_redone = sum(s.last_page - s.first_page + 1 for s in redone)
    assert pages_redone <= slice_pages_redone <= stack.settings.slice_pages
    rows, used, reserved = billing(stack.ctx, tenant.customer_id)
    assert rows[item_id] == 16 and used == sum(rows.values()) == 16 + 3 and reserved == 0
    assert peak <= 2, peak
    report(
        slices=len(slices),
        redone_slices=len(redone),
        pages_redone_reported=pages_redone,
        pages_redone_at_most=slice_pages_redone,
        billed=rows[item_id],
        peak_running=peak,
        cap=2,
    )
