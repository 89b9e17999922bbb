"""An item's work, in process against the real database, Redis and blob store: the document is
probed (opened a second time) only when the customer's quota needs its page count first, and
every extraction runs in the process's capped sandbox child, so a bomb fails its own item."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ocr.sandbox import Sandbox
from service.api.app import create_app
from service.settings import Settings
from tasks.context import TaskContext
from tasks.items import process_item
from tests.api.conftest import Tenant
from tests.conftest import CORPUS, build_context, new_customer_key
from tests.fixtures.hostile.make_hostile import flate_bomb_bypass_pdf
from tests.support.live import corpus_bytes


@pytest.fixture
def ctx(pg_s3_settings: Settings, flush_redis: None) -> Iterator[TaskContext]:
    context = build_context(pg_s3_settings)
    context.dispatcher.publish = lambda item_id: None  # no workers here: keep messages out
    yield context
    context.close()


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Page counts of every probe the worker runs (in its sandbox) from here on."""
    seen: list[int] = []
    real_probe = Sandbox.probe

    def counting_probe(self: Sandbox, path: Any, **kwargs: Any) -> Any:
        probe = real_probe(self, path, **kwargs)
        seen.append(probe.page_count)
        return probe

    monkeypatch.setattr(Sandbox, "probe", counting_probe)
    return seen


def tenant_of(ctx: TaskContext, name: str, quota: int | None = None) -> Tenant:
    customer_id, key = new_customer_key(ctx, name, quota=quota)
    app = create_app(ctx.settings, context=ctx, dispatcher=ctx.dispatcher)
    return Tenant(app.test_client(), customer_id, key)


def run_one_item(ctx: TaskContext, quota: int | None) -> dict[str, Any]:
    tenant = tenant_of(ctx, f"quota-{quota}", quota)
    batch = tenant.submit([tenant.upload(corpus_bytes("digital-crazyones-1p.pdf"))]).get_json()
    ctx.dispatcher.admit(tenant.customer_id)
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


@pytest.mark.parametrize("bypass", ["image-token", "escaped-name", "padded-dict"])
def test_a_bomb_past_the_pre_check_fails_its_item_and_the_worker_goes_on(
    pg_s3_settings: Settings, flush_redis: None, bypass: str
) -> None:
    """A 320 MB Flate bomb wrapped each way ocr/streams.py's byte-pattern check misses: it
    used to be inflated in the worker itself; now its capped child dies instead, the item
    fails with extraction_failed, and the same process extracts the next item."""
    ctx = build_context(pg_s3_settings.model_copy(update={"sandbox_memory_mb": 512}))
    ctx.dispatcher.publish = lambda item_id: None
    try:
        tenant = tenant_of(ctx, f"bomb-{bypass}")
        bomb = tenant.upload(flate_bomb_bypass_pdf(bypass))
        fine = tenant.upload(corpus_bytes("digital-crazyones-1p.pdf"))
        batch = tenant.submit([bomb, fine]).get_json()
        first, second = (item["id"] for item in batch["items"])
        assert process_item(ctx, first) == "failed"
        ctx.dispatcher.admit(tenant.customer_id)
        assert process_item(ctx, second) == "succeeded"
        items = {i["id"]: i for i in tenant.get(f"/v1/batches/{batch['id']}").get_json()["items"]}
        assert items[first]["error"]["code"] == "extraction_failed"
        assert "needs more than 512 MB" in items[first]["error"]["message"]
    finally:
        ctx.close()


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


def test_an_office_document_goes_through_the_batch_lane(ctx: TaskContext) -> None:
    """A DOCX uploaded without a telling name: the worker detects it by content, converts it in
    its sandbox child and bills the rendered pages; the result carries its table."""
    tenant = tenant_of(ctx, "office")
    data = (CORPUS / "office" / "word_tables.docx").read_bytes()
    batch = tenant.submit([tenant.upload(data)]).get_json()
    ctx.dispatcher.admit(tenant.customer_id)
    item_id = batch["items"][0]["id"]
    assert process_item(ctx, item_id) == "succeeded"
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    result = tenant.get(f"/v1/batches/{batch['id']}/items/{item_id}/result?inline=true").get_json()
    assert result["file"]["content_type"] == (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    )
    assert body["pages_billed"] == result["page_count"] >= 1
    assert any(chunk["chunk_type"] == "table" for chunk in result["chunks"])
    assert {chunk["source"] for chunk in result["chunks"]} == {"text_layer"}
