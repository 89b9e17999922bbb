"""The console's server side without a browser: the download endpoints (a streamed zip with flat
memory, errors CSV, Markdown), GET /v1/account, the local store's CORS, the OpenAPI document.

These run on the embedded shape (SQLite + local blobs) through Flask's test client; items are
finished directly in the database with result blobs in the store, so 2,000 results cost seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from service.api.app import create_app
from service.api.downloads import markdown_table, render_markdown
from service.api.openapi import SECURITY
from service.clock import utcnow
from service.db import transaction
from service.models import Batch, Item
from service.settings import Settings
from service.storage import input_key, result_key
from tests.api.conftest import Tenant
from tests.conftest import build_context, new_customer_key


@pytest.fixture
def env(sqlite_local_settings: Settings, flush_redis: None) -> Any:
    ctx = build_context(sqlite_local_settings)
    app = create_app(sqlite_local_settings, context=ctx, dispatcher=ctx.dispatcher)
    app.config["TESTING"] = True
    yield ctx, app.test_client()
    ctx.close()


def tenant(env: Any, name: str, **kwargs: Any) -> Tenant:
    ctx, client = env
    customer_id, key = new_customer_key(ctx, name, **kwargs)
    return Tenant(client, customer_id, key)


def finished_batch(
    env: Any, who: Tenant, n: int, *, fail_every: int = 0, result_bytes: int = 200
) -> tuple[str, list[str]]:
    """A batch of ``n`` items finished in the database: succeeded with a result blob of about
    ``result_bytes`` each, except every ``fail_every``-th, failed with extraction_failed."""
    ctx, _ = env
    store = ctx.blob_store
    file_ids = []
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        files = [{"size_bytes": 10, "filename": f"dir/doc-{start + i}.pdf"} for i in range(count)]
        body = who.post("/v1/files/bulk", {"files": files}).get_json()
        for created in body["data"]:
            store.put(input_key(who.customer_id, created["id"]), b"%PDF-1.4 x")
            file_ids.append(created["id"])
    response = who.submit(file_ids)
    assert response.status_code == 200, response.get_json()
    batch_id = response.get_json()["id"]
    now = utcnow()
    item_ids = []
    with transaction(ctx.session_factory) as session:
        items = session.query(Item).filter(Item.batch_id == batch_id).order_by(Item.position)
        for item in items:
            item_ids.append(item.id)
            failed = fail_every and item.position % fail_every == fail_every - 1
            if failed:
                item.status, item.error_code = "failed", "extraction_failed"
                item.error_message = "=HYPERLINK(bad) The PDF is corrupted"
            else:
                key = result_key(who.customer_id, batch_id, item.id)
                filler = os.urandom(result_bytes // 2).hex()
                result = {
                    "object": "extraction",
                    "page_count": 1,
                    "pages_billed": 1,
                    "file": {"id": item.file_id},
                    "chunks": [{"chunk_type": "text", "page_content": filler}],
                    "warnings": [],
                }
                store.put(key, json.dumps(result).encode())
                item.status, item.result_key, item.page_count = "succeeded", key, 1
                item.result_expires_at = now + timedelta(hours=1)
            item.completed_at = now
        session.execute(update(Batch).where(Batch.id == batch_id).values(status="completed"))
    return batch_id, item_ids


def test_results_zip_streams_every_result_and_a_manifest(env: Any) -> None:
    alice = tenant(env, "alice")
    batch_id, item_ids = finished_batch(env, alice, 5, fail_every=3)
    response = alice.get(f"/v1/batches/{batch_id}/results.zip")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in response.headers  # produced while sent
    assert f'filename="{batch_id}-results.zip"' in response.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == [
            "results/00000-doc-0.json",
            "results/00001-doc-1.json",
            "results/00003-doc-3.json",
            "results/00004-doc-4.json",
            "manifest.csv",
        ]
        assert json.loads(archive.read(names[0]))["object"] == "extraction"
        manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [m["item_id"] for m in manifest] == item_ids
    assert manifest[2]["status"] == "failed" and manifest[2]["entry"] == ""
    assert manifest[2]["error_code"] == "extraction_failed"
    # A formula in a cell is neutralised for spreadsheets.
    assert manifest[2]["error_message"].startswith("'=HYPERLINK")


def test_results_zip_of_2000_items_downloads_in_flat_memory(env: Any, report: Any) -> None:
    """2,000 results of ~20 KB (40 MB of JSON, incompressible): the server's peak memory while
    streaming stays a small fraction of the archive, and does not grow with the batch."""
    alice = tenant(env, "alice")
    small, _ = finished_batch(env, alice, 200, result_bytes=20_000)
    large, _ = finished_batch(env, alice, 2000, result_bytes=20_000)

    def stream(batch_id: str) -> tuple[int, int, int]:
        tracemalloc.start()
        try:
            response = alice.get(f"/v1/batches/{batch_id}/results.zip", buffered=False)
            assert response.status_code == 200
            total, chunks = 0, 0
            for chunk in response.response:
                total += len(chunk)
                chunks += 1
            response.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return total, chunks, peak

    _, _, small_peak = stream(small)
    large_total, large_chunks, large_peak = stream(large)
    report(
        zip_mb=large_total / 1e6,
        chunks=large_chunks,
        peak_mb_200=small_peak / 1e6,
        peak_mb_2000=large_peak / 1e6,
    )
    assert large_total > 20_000_000  # the archive really is big
    assert large_chunks >= 2000  # sent entry by entry, not at the end
    # A whole-archive buffer would peak above 20 MB here; streaming holds a few results, a
    # page of rows and the central directory (a small record per entry).
    assert large_peak < 6_000_000, large_peak
    assert large_peak < small_peak + 3_000_000, (small_peak, large_peak)


def test_errors_csv(env: Any) -> None:
    alice = tenant(env, "alice")
    batch_id, item_ids = finished_batch(env, alice, 6, fail_every=2)
    response = alice.get(f"/v1/batches/{batch_id}/errors.csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["item_id"] for r in rows] == [item_ids[1], item_ids[3], item_ids[5]]
    assert rows[0]["filename"] == "dir/doc-1.pdf"
    assert {r["error_code"] for r in rows} == {"extraction_failed"}
    assert rows[0]["error_message"].startswith("'=")


def test_result_markdown(env: Any) -> None:
    ctx, _ = env
    alice = tenant(env, "alice")
    batch_id, item_ids = finished_batch(env, alice, 2, fail_every=2)
    key = result_key(alice.customer_id, batch_id, item_ids[0])
    ctx.blob_store.put(
        key,
        json.dumps(
            {
                "object": "extraction",
                "chunks": [
                    {"chunk_type": "text", "page_no": 1, "page_content": "Hello world"},
                    {
                        "chunk_type": "table",
                        "page_no": 2,
                        "page_content": "ignored when cells exist",
                        "n_rows": 2,
                        "n_cols": 2,
                        "cells": [
                            {"text": "Name", "row": 0, "col": 0},
                            {"text": "Qty", "row": 0, "col": 1},
                            {"text": "a|b", "row": 1, "col": 0},
                            {"text": "3\n4", "row": 1, "col": 1},
                        ],
                    },
                    {"chunk_type": "image", "page_no": 2, "image_width": 10, "image_height": 5},
                ],
                "warnings": ["page 2: low contrast"],
            }
        ).encode(),
    )
    response = alice.get(f"/v1/batches/{batch_id}/items/{item_ids[0]}/result.md?download=true")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert 'filename="doc-0.md"' in response.headers["Content-Disposition"]
    assert response.get_data(as_text=True) == (
        "# dir/doc-0.pdf\n\n## Page 1\n\nHello world\n\n## Page 2\n\n"
        "| Name | Qty |\n|---|---|\n| a\\|b | 3 4 |\n\n*[image 10x5]*\n\n"
        "## Warnings\n\n- page 2: low contrast\n"
    )
    failed = alice.get(f"/v1/batches/{batch_id}/items/{item_ids[1]}/result.md")
    assert failed.status_code == 409 and failed.get_json()["error"] == "result_not_ready"


def test_markdown_table_without_cells_uses_the_rendered_text() -> None:
    assert markdown_table({"page_content": "| a |\n|---|", "cells": []}) == "| a |\n|---|"
    assert render_markdown({"chunks": []}, "x\ny") == "# x y\n"


def test_downloads_are_authenticated_and_404_across_customers(env: Any) -> None:
    _, client = env
    alice, bob = tenant(env, "alice"), tenant(env, "bob")
    batch_id, item_ids = finished_batch(env, alice, 2)
    paths = [
        f"/v1/batches/{batch_id}/results.zip",
        f"/v1/batches/{batch_id}/errors.csv",
        f"/v1/batches/{batch_id}/items/{item_ids[0]}/result.md",
    ]
    for path in paths:
        assert client.get(path).status_code == 401
        response = bob.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["error"] == "not_found"
        assert alice.get(path).status_code == 200
    assert bob.get("/v1/batches/batch_nope/results.zip").status_code == 404


def test_account(env: Any) -> None:
    _, client = env
    alice = tenant(env, "alice", quota=100, concurrency=3)
    body = alice.get("/v1/account").get_json()
    assert body == {
        "object": "account",
        "customer_id": alice.customer_id,
        "page_quota": 100,
        "pages_used": 0,
        "pages_reserved": 0,
        "pages_remaining": 100,
        "concurrency": 3,
    }
    unlimited = tenant(env, "bob").get("/v1/account").get_json()
    assert unlimited["page_quota"] is None and unlimited["pages_remaining"] is None
    assert client.get("/v1/account").status_code == 401


def test_openapi_documents_the_new_endpoints(env: Any) -> None:
    _, client = env
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in (
        "/v1/account",
        "/v1/batches/{batch_id}/results.zip",
        "/v1/batches/{batch_id}/errors.csv",
        "/v1/batches/{batch_id}/items/{item_id}/result.md",
    ):
        operation = paths[path]["get"]
        assert operation["security"] == SECURITY, path
        assert {"200", "401", "404"} <= set(operation["responses"]) or path == "/v1/account"
    assert not any(p.startswith(("/console", "/blobs")) for p in paths)


def test_local_blob_urls_answer_cors_preflight(env: Any) -> None:
    _, client = env
    alice = tenant(env, "alice")
    created = alice.post(
        "/v1/files", {"size_bytes": 3, "filename": "a.pdf", "content_type": "application/pdf"}
    ).get_json()
    url = created["upload"]["url"].split("pagelane.test", 1)[1]
    origin = "http://localhost:5173"
    preflight = client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    # No credentials are ever allowed: the signature in the URL is the only one.
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    put = client.put(
        url, data=b"abc", headers={"Origin": origin, "Content-Type": "application/pdf"}
    )
    assert put.status_code == 200
    assert put.headers["Access-Control-Allow-Origin"] == "*"
    # A forged URL is still refused, CORS or not.
    assert client.put(url.replace("sig=", "sig=0"), data=b"abc").status_code == 403


def test_console_csp_allows_the_s3_origin(pg_s3_settings: Settings, flush_redis: None) -> None:
    from urllib.parse import urlsplit

    ctx = build_context(pg_s3_settings)
    try:
        app = create_app(pg_s3_settings, context=ctx, dispatcher=ctx.dispatcher)
        response = app.test_client().get("/console")
        csp = response.headers["Content-Security-Policy"]
        connect = next(d for d in csp.split("; ") if d.startswith("connect-src"))
        endpoint = urlsplit(pg_s3_settings.s3_endpoint_url)
        assert connect == f"connect-src 'self' {endpoint.scheme}://{endpoint.netloc}"
    finally:
        ctx.close()
