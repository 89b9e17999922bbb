"""`/v1/files`, auth, the error envelope and request ids."""

from __future__ import annotations

from tests.api.conftest import PDF_BYTES, ApiEnv, Tenant, sha
from tests.conftest import put_upload


def test_missing_and_unknown_keys_are_401(api_env: ApiEnv) -> None:
    for headers in ({}, {"X-API-KEY": "pl_nope"}, {"Authorization": "Bearer pl_nope"}):
        response = api_env.client.post("/v1/files", json={"size_bytes": 1}, headers=headers)
        assert response.status_code == 401
        body = response.get_json()
        assert body["error"] == "unauthorized" and body["message"]
        assert response.headers["X-Request-Id"]


def test_bearer_auth_is_accepted(api_env: ApiEnv, alice: Tenant) -> None:
    response = api_env.client.post(
        "/v1/files", json={"size_bytes": 10}, headers={"Authorization": f"Bearer {alice.key}"}
    )
    assert response.status_code == 200


def test_revoked_key_is_401(api_env: ApiEnv, alice: Tenant) -> None:
    from sqlalchemy import update

    from service.clock import utcnow
    from service.db import transaction
    from service.models import ApiKey

    with transaction(api_env.ctx.session_factory) as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))
    assert alice.post("/v1/files", {"size_bytes": 10}).status_code == 401


def test_keys_are_stored_hashed(api_env: ApiEnv, alice: Tenant) -> None:
    from sqlalchemy import select

    from service.models import ApiKey

    with api_env.ctx.session_factory() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert alice.key not in (stored.key_hash, stored.prefix)
    assert stored.key_hash == sha(alice.key.encode())


def test_register_upload_and_read_back(api_env: ApiEnv, alice: Tenant) -> None:
    created = alice.register(PDF_BYTES, "report.pdf")
    assert created["id"].startswith("file_")
    assert created["object"] == "file"
    assert created["status"] == "awaiting_upload"
    assert created["customer_id"] == alice.customer_id
    assert created["size_bytes"] == len(PDF_BYTES)
    assert created["filename"] == "report.pdf"
    assert created["sha256"] is None
    assert created["created_at"].endswith("Z") and created["expires_at"].endswith("Z")
    upload = created["upload"]
    assert upload["method"] == "PUT" and upload["url"] and upload["expires_at"].endswith("Z")

    before = alice.get(f"/v1/files/{created['id']}").get_json()
    assert before["status"] == "awaiting_upload" and "upload" not in before

    assert put_upload(upload, PDF_BYTES, api_env.client) == 200
    after = alice.get(f"/v1/files/{created['id']}")
    assert after.status_code == 200
    assert after.get_json()["status"] == "uploaded"


def test_upload_with_a_different_length_is_refused(api_env: ApiEnv, alice: Tenant) -> None:
    created = alice.register(PDF_BYTES)
    assert put_upload(created["upload"], PDF_BYTES + b"extra", api_env.client) in (400, 403)
    assert alice.get(f"/v1/files/{created['id']}").get_json()["status"] == "awaiting_upload"


def test_too_large_is_413(api_env: ApiEnv, alice: Tenant) -> None:
    limit = api_env.settings.max_file_bytes
    response = alice.post("/v1/files", {"size_bytes": limit + 1})
    assert response.status_code == 413
    assert response.get_json()["error"] == "document_too_large"
    assert alice.post("/v1/files", {"size_bytes": limit}).status_code == 200


def test_validation_errors_are_422_with_detail(alice: Tenant) -> None:
    for body in (
        {},
        {"size_bytes": 0},
        {"size_bytes": "x"},
        {"size_bytes": 5, "sha256": "zz"},
        {"size_bytes": 5, "filename": "a" * 513},
        {"size_bytes": 5, "surprise": 1},
    ):
        response = alice.post("/v1/files", body)
        assert response.status_code == 422, body
        payload = response.get_json()
        assert payload["error"] == "validation_error"
        assert payload["message"]
        assert payload["detail"] and {"loc", "msg", "type"} <= set(payload["detail"][0])


def test_malformed_json_is_422(alice: Tenant) -> None:
    response = alice.client.post(
        "/v1/files",
        data=b"{not json",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_error"


def test_bulk_registers_in_order(alice: Tenant) -> None:
    files = [{"size_bytes": n + 1, "filename": f"f{n}.pdf"} for n in range(25)]
    response = alice.post("/v1/files/bulk", {"files": files})
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "list"
    assert [f["filename"] for f in body["data"]] == [f["filename"] for f in files]
    assert all(f["upload"]["url"] for f in body["data"])
    assert len({f["id"] for f in body["data"]}) == 25


def test_bulk_limits(alice: Tenant) -> None:
    assert alice.post("/v1/files/bulk", {"files": []}).status_code == 422
    too_many = [{"size_bytes": 1}] * 1001
    assert alice.post("/v1/files/bulk", {"files": too_many}).status_code == 422


def test_declared_sha256_is_kept_for_the_worker(api_env: ApiEnv, alice: Tenant) -> None:
    from service.models import File

    digest = sha(PDF_BYTES)
    created = alice.post("/v1/files", {"size_bytes": len(PDF_BYTES), "sha256": digest.upper()})
    assert created.status_code == 200
    with api_env.ctx.session_factory() as session:
        row = session.get(File, created.get_json()["id"])
        assert row is not None and row.sha256_declared == digest


def test_unknown_file_is_404(alice: Tenant) -> None:
    response = alice.get("/v1/files/file_doesnotexist0000000000")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_request_id_is_echoed_or_made(api_env: ApiEnv) -> None:
    made = api_env.client.get("/healthz")
    assert made.headers["X-Request-Id"].startswith("req_")
    echoed = api_env.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"


def test_unknown_route_uses_the_envelope(api_env: ApiEnv) -> None:
    response = api_env.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_uploads_not_configured_is_503(make_settings, postgres_url, flush_redis) -> None:
    from service.api.app import create_app
    from tests.conftest import build_context, new_customer_key, truncate_all

    truncate_all(postgres_url)
    settings = make_settings(database_url=postgres_url, blob_store="none")
    ctx = build_context(settings)
    _, key = new_customer_key(ctx, "nostore")
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    response = client.post("/v1/files", json={"size_bytes": 3}, headers={"X-API-KEY": key})
    assert response.status_code == 503
    assert response.get_json()["error"] == "uploads_not_configured"
    ctx.close()
