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
