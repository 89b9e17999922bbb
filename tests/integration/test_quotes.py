"""A quote agrees with the batch it quotes: real worker processes quote the whole corpus, then
extract it; every predicted_error is the item's real error code, and billable_pages is what
the batch bills (SPEC "Quotes (dry run)")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from tests.api.conftest import Tenant
from tests.conftest import build_context, new_customer_key
from tests.corpus import CORPUS
from tests.support.stack import start_worker, wait_for

pytestmark = pytest.mark.slow


def test_quote_matches_the_real_outcome_on_the_corpus(
    pg_s3_settings: Any, flush_redis: None, tmp_path: Path, report: Any
) -> None:
    # The null OCR provider: OCR text is not what is compared, and every decision and error
    # of the engine (rendering, image budgets) stays the same.
    settings = pg_s3_settings.model_copy(update={"ocr_provider": "null"})
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    customer_id, key = new_customer_key(ctx, "corpus")
    tenant = Tenant(client, customer_id, key)
    names = [f["name"] for f in json.loads((CORPUS / "MANIFEST.json").read_text())["files"]]
    names = [n for n in names if (CORPUS / n).is_file()]
    files = _upload(ctx, tenant, [(CORPUS / n).read_bytes() for n in names])
    worker = start_worker(settings, tmp_path, concurrency=2, queues="items,sweeps,quotes")
    try:
        quote = tenant.post("/v1/quotes", {"file_ids": files}).get_json()
        done = wait_for(
            lambda: _completed(tenant, f"/v1/quotes/{quote['id']}"), 300, message="the quote"
        )
        batch = tenant.submit(files).get_json()
        final = wait_for(
            lambda: _completed(tenant, f"/v1/batches/{batch['id']}?limit=500"),
            900,
            message="the batch",
        )
    finally:
        worker.stop()
        ctx.close()
    items = {i["file_id"]: i for i in final["items"]}
    mismatches = []
    failed_pages = 0
    for name, predicted in zip(names, done["items"], strict=True):
        item = items[predicted["file_id"]]
        real = item["error"]["code"] if item["error"] else None
        if real != predicted["predicted_error"]:
            mismatches.append((name, predicted["predicted_error"], real))
        if item["status"] == "succeeded":
            assert item["page_count"] == predicted["page_count"], name
        elif predicted["page_count"]:
            failed_pages += predicted["page_count"]
    assert mismatches == []
    totals = done["totals"]
    assert totals["billable_pages"] == final["pages_billed"]
    assert totals["pages"] == final["pages_billed"] + failed_pages
    report(documents=len(names), billable_pages=totals["billable_pages"], mismatches=0)


def _upload(ctx: Any, tenant: Tenant, documents: list[bytes]) -> list[str]:
    """Registered through the API, the bytes put straight into the store (a zero-byte file
    cannot be registered with its real size, but its blob can be empty)."""
    from service.storage import input_key

    body = {"files": [{"size_bytes": max(1, len(d))} for d in documents]}
    created = tenant.post("/v1/files/bulk", body).get_json()["data"]
    for file, data in zip(created, documents, strict=True):
        ctx.blob_store.put(input_key(tenant.customer_id, file["id"]), data)
    return [file["id"] for file in created]


def _completed(tenant: Tenant, path: str) -> Any:
    body = tenant.get(path).get_json()
    return body if body["status"] not in ("pending", "running") else None
