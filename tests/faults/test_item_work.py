"""An item's work, in process against the real database, Redis and blob store: the document is
probed (opened a second time) only when the customer's quota needs its page count first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ocr
from service.api.app import create_app
from service.settings import Settings
from tasks.context import TaskContext
from tasks.items import process_item
from tests.api.conftest import Tenant
from tests.conftest import build_context, new_customer_key
from tests.support.live import corpus_bytes


@pytest.fixture
def ctx(pg_s3_settings: Settings, flush_redis: None) -> Iterator[TaskContext]:
    context = build_context(pg_s3_settings)
    context.dispatcher.publish = lambda item_id: None  # no workers here: keep messages out
    yield context
    context.close()


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Page counts of every ocr.probe call from here on."""
    seen: list[int] = []
    real_probe = ocr.probe

    def counting_probe(data: bytes, **kwargs: Any) -> ocr.Probe:
        probe = real_probe(data, **kwargs)
        seen.append(probe.page_count)
        return probe

    monkeypatch.setattr(ocr, "probe", counting_probe)
    return seen


def run_one_item(ctx: TaskContext, quota: int | None) -> dict[str, Any]:
    customer_id, key = new_customer_key(ctx, f"quota-{quota}", quota=quota)
    tenant = Tenant(
        create_app(ctx.settings, context=ctx, dispatcher=ctx.dispatcher).test_client(),
        customer_id,
        key,
    )
    batch = tenant.submit([tenant.upload(corpus_bytes("digital-crazyones-1p.pdf"))]).get_json()
    ctx.dispatcher.admit(customer_id)
    assert process_item(ctx, batch["items"][0]["id"]) == "succeeded"
    body: dict[str, Any] = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    return body


def test_an_unmetered_customers_document_is_opened_once(
    ctx: TaskContext, probes: list[int]
) -> None:
    body = run_one_item(ctx, quota=None)
    assert body["status"] == "completed" and body["pages_billed"] == 1
    assert probes == []


def test_a_metered_customers_document_is_probed_before_its_pages_are_reserved(
    ctx: TaskContext, probes: list[int]
) -> None:
    body = run_one_item(ctx, quota=10)
    assert body["status"] == "completed" and body["pages_billed"] == 1
    assert probes == [1]


def test_an_input_swapped_after_its_first_read_fails_the_item(ctx: TaskContext) -> None:
    """The sha256 is recorded when the worker first reads the upload (even if that item then
    fails); a later read of other bytes fails with "the input changed after upload"."""
    import hashlib

    from sqlalchemy import select

    from service.models import File

    customer_id, key = new_customer_key(ctx, "swapper")
    tenant = Tenant(
        create_app(ctx.settings, context=ctx, dispatcher=ctx.dispatcher).test_client(),
        customer_id,
        key,
    )
    original = b"%PDF-1.7\nnot really a document\n%%EOF\n"
    file_id = tenant.upload(original)

    def run() -> dict[str, Any]:
        batch = tenant.submit([file_id]).get_json()
        ctx.dispatcher.admit(customer_id)
        process_item(ctx, batch["items"][0]["id"])
        body: dict[str, Any] = tenant.get(f"/v1/batches/{batch['id']}").get_json()
        return body["items"][0]

    first = run()
    assert first["status"] == "failed"  # not a PDF pdfium can open
    assert first["error"]["message"] != "the input changed after upload"
    with ctx.session_factory() as session:
        recorded = session.scalar(select(File.sha256).where(File.id == file_id))
    assert recorded == hashlib.sha256(original).hexdigest()

    # A store that ignored the create-only condition (or a bucket written out of band).
    assert ctx.blob_store is not None
    ctx.blob_store.put(f"{customer_id}/inputs/{file_id}", corpus_bytes("digital-crazyones-1p.pdf"))
    second = run()
    assert second["status"] == "failed"
    assert (second["error"]["code"], second["error"]["message"]) == (
        "extraction_failed",
        "the input changed after upload",
    )
