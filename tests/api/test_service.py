"""Probes, the OpenAPI document, start-up checks and the sync extraction endpoint."""

from __future__ import annotations

import io
from typing import Any

import pytest
from sqlalchemy import select

from service.models import BillingEntry, Customer
from service.settings import SettingsError, load_settings
from tests.api.conftest import ApiEnv, Tenant
from tests.conftest import CORPUS


def test_probes(api_env: ApiEnv) -> None:
    assert api_env.client.get("/healthz").get_json()["status"] == "ok"
    ready = api_env.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok", "blob_store": "ok"}


def test_readyz_is_503_when_redis_is_unreachable(make_settings, postgres_url, flush_redis) -> None:
    from service.api.app import create_app
    from tests.conftest import build_context, truncate_all

    truncate_all(postgres_url)
    # Nothing listens on port 1: connecting fails at once.
    settings = make_settings(
        database_url=postgres_url, redis_url="redis://127.0.0.1:1/0", blob_store="local"
    )
    ctx = build_context(settings)
    response = (
        create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client().get("/readyz")
    )
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("error")
    assert response.get_json()["checks"]["database"] == "ok"
    ctx.close()


def test_openapi_document_is_generated_from_the_models(api_env: ApiEnv) -> None:
    document = api_env.client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path, method in [
        ("/v1/files", "post"),
        ("/v1/files/bulk", "post"),
        ("/v1/files/{file_id}", "get"),
        ("/v1/batches", "post"),
        ("/v1/batches", "get"),
        ("/v1/batches/{batch_id}", "get"),
        ("/v1/batches/{batch_id}/cancel", "post"),
        ("/v1/batches/{batch_id}/items/{item_id}/result", "get"),
        ("/v1/extract/file", "post"),
    ]:
        assert method in paths[path], (path, method)
    schemas = document["components"]["schemas"]
    assert set(schemas["CreateBatch"]["properties"]) == {
        "file_ids",
        "options",
        "metadata",
        "engine",
    }
    assert "next_cursor" in schemas["BatchResource"]["properties"]
    docs = api_env.client.get("/docs", follow_redirects=True)
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()


def test_api_refuses_a_database_behind(make_settings, tmp_path) -> None:
    from service.api.app import create_app
    from service.migrate import SchemaBehindError

    settings = make_settings(blob_store="local")  # a fresh SQLite file, never migrated
    with pytest.raises(SchemaBehindError, match="pagelane db upgrade"):
        create_app(settings)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"blob_store": "s3"}, "PAGELANE_S3_BUCKET"),
        ({"blob_store": "local", "secret_key": ""}, "PAGELANE_SECRET_KEY"),
        (
            {"task_time_limit_seconds": 3600, "visibility_timeout_seconds": 3600},
            "PAGELANE_VISIBILITY_TIMEOUT_SECONDS",
        ),
        ({"ocr_provider": "http"}, "PAGELANE_OCR_HTTP_URL"),
        ({"redis_url": "http://nope"}, "PAGELANE_REDIS_URL"),
        ({"max_pages": 0}, "PAGELANE_MAX_PAGES"),
    ],
)
def test_bad_settings_fail_at_boot_naming_the_variable(
    overrides: dict[str, Any], variable: str
) -> None:
    values = {"secret_key": "s", **overrides}
    with pytest.raises(SettingsError, match=variable):
        load_settings(**values)


# --- POST /v1/extract/file ---------------------------------------------------------------------


def _extract(tenant: Tenant, data: bytes, filename: str, **fields: Any) -> Any:
    form = {"file": (io.BytesIO(data), filename), **fields}
    return tenant.client.post(
        "/v1/extract/file", data=form, headers=tenant.headers, content_type="multipart/form-data"
    )


def test_sync_extract_returns_the_result_and_bills(api_env: ApiEnv, alice: Tenant) -> None:
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    response = _extract(alice, data, "crazy.pdf", extract_images="false")
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["object"] == "extraction" and result["page_count"] == 1
    assert result["file"]["content_type"] == "application/pdf"
    assert "The Crazy Ones" in " ".join(c["page_content"] for c in result["chunks"])
    assert all(c["chunk_type"] != "image" for c in result["chunks"])
    with api_env.ctx.session_factory() as session:
        assert session.scalar(select(Customer.pages_used)) == 1
        assert session.scalar(select(BillingEntry.pages)) == 1


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("unsupported-zip-archive.zip", 415, "unsupported_input"),
        ("unsupported-plaintext-named-as.pdf", 415, "unsupported_input"),
        ("corrupted-not-a-valid-pdf.pdf", 422, "extraction_failed"),
        ("encrypted-password-test-4p.pdf", 422, "extraction_failed"),
    ],
)
def test_sync_extract_maps_engine_errors(alice: Tenant, name: str, status: int, code: str) -> None:
    response = _extract(alice, (CORPUS / name).read_bytes(), name)
    assert response.status_code == status
    assert response.get_json()["error"] == code


def test_sync_extract_limits_and_quota(api_env: ApiEnv) -> None:
    data = (CORPUS / "digital-lorem-pdflatex-4p.pdf").read_bytes()
    short = api_env.tenant("short", quota=3)
    response = _extract(short, data, "lorem.pdf")
    assert response.status_code == 402 and response.get_json()["error"] == "payment_required"
    assert _extract(short, b"", "empty.pdf").get_json()["error"] == "unsupported_input"
    missing = short.client.post(
        "/v1/extract/file", data={}, headers=short.headers, content_type="multipart/form-data"
    )
    assert missing.status_code == 422
    bad_lang = _extract(short, data, "lorem.pdf", languages="klingon")
    assert bad_lang.status_code == 422
    with api_env.ctx.session_factory() as session:
        customer = session.scalars(select(Customer).where(Customer.name == "short")).one()
        assert (customer.pages_used, customer.pages_reserved) == (0, 0)


def test_sync_extract_page_limit(make_settings, postgres_url, s3_server, flush_redis) -> None:
    from service.api.app import create_app
    from tests.api.conftest import Tenant
    from tests.conftest import build_context, new_customer_key, truncate_all

    truncate_all(postgres_url)
    settings = make_settings(database_url=postgres_url, blob_store="local", max_pages=3)
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    _, key = new_customer_key(ctx, "pages")
    tenant = Tenant(client, "pages", key)
    response = _extract(tenant, (CORPUS / "digital-lorem-pdflatex-4p.pdf").read_bytes(), "l.pdf")
    assert response.status_code == 422
    assert response.get_json()["error"] == "page_limit_exceeded"
    ctx.close()


def test_api_accepts_a_database_ahead_of_it(make_settings) -> None:
    """Old API pods restarting after the migration job ran must keep working."""
    from sqlalchemy import text

    from service.api.app import create_app
    from service.db import make_engine
    from service.migrate import upgrade

    settings = make_settings(blob_store="local")
    engine = make_engine(settings)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    engine.dispose()
    assert create_app(settings).test_client().get("/healthz").status_code == 200


def test_ids_sort_by_creation_time() -> None:
    from service.ids import new_id

    ids = [new_id("batch", now_ms=1_700_000_000_000 + n * 1000) for n in range(600)]
    assert ids == sorted(ids)
    assert all(len(i) >= len("batch_") + 28 for i in ids)  # 144 bits: 48 of time, 96 random
