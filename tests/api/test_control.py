"""Batch control: retry only what failed, delete on demand (SPEC "Batch control")."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from service.clock import utcnow
from service.db import transaction
from service.models import BillingEntry, Item
from service.storage import result_key
from tests.api.conftest import PDF_BYTES, ApiEnv, Tenant

# (status, error code) per position
Outcome = tuple[str, str | None]


def _uploaded(tenant: Tenant, n: int) -> list[str]:
    return [tenant.upload(PDF_BYTES + str(i).encode(), f"d{i}.pdf") for i in range(n)]


def settle(env: ApiEnv, batch_id: str, outcomes: list[Outcome], billed: int = 0) -> None:
    """Put a submitted batch's items into final states, as workers would have (no extraction)."""
    from service.models import Batch

    now = utcnow()
    store = env.ctx.blob_store
    assert store is not None
    with transaction(env.ctx.session_factory) as session:
        items = list(
            session.scalars(select(Item).where(Item.batch_id == batch_id).order_by(Item.position))
        )
        customer_id = items[0].customer_id
        for item, (status, code) in zip(items, outcomes, strict=True):
            item.status = status
            item.error_code = code
            item.error_message = code
            item.admitted_at = None
            item.completed_at = now
            if status == "succeeded":
                key = result_key(customer_id, batch_id, item.id)
                store.put(key, b'{"object":"extraction"}', content_type="application/json")
                item.result_key = key
                item.result_expires_at = now.replace(year=now.year + 1)
                item.page_count = 1
                session.add(
                    BillingEntry(
                        id=item.id,
                        customer_id=customer_id,
                        batch_id=batch_id,
                        pages=1,
                        created_at=now,
                    )
                )
        statuses = [s for s, _ in outcomes]
        counts = {s: statuses.count(s) for s in ("succeeded", "failed", "cancelled")}
        final = (
            ("partially_failed" if counts["failed"] else "completed")
            if counts["succeeded"]
            else ("cancelled" if counts["cancelled"] and not counts["failed"] else "failed")
        )
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                status=final,
                count_pending=0,
                count_running=0,
                count_succeeded=counts["succeeded"],
                count_failed=counts["failed"],
                count_cancelled=counts["cancelled"],
                pages_billed=counts["succeeded"],
                completed_at=now,
            )
        )


def _file_ids_of(tenant: Tenant, batch_id: str) -> list[str]:
    body = tenant.get(f"/v1/batches/{batch_id}?limit=500").get_json()
    return [i["file_id"] for i in sorted(body["items"], key=lambda i: i["position"])]


MIXED: list[Outcome] = [
    ("succeeded", None),
    ("failed", "ocr_provider_error"),
    ("failed", "extraction_failed"),
    ("cancelled", None),
    ("failed", "internal_error"),
    ("failed", "payment_required"),
    ("failed", "unsupported_input"),
]


# --- retry -------------------------------------------------------------------------------------


def test_retry_takes_only_retryable_failures(api_env: ApiEnv, alice: Tenant) -> None:
    files = _uploaded(alice, len(MIXED))
    parent = alice.submit(files).get_json()["id"]
    settle(api_env, parent, MIXED)

    response = alice.post(f"/v1/batches/{parent}/retry", {})
    assert response.status_code == 201, response.get_json()
    child = response.get_json()
    assert child["parent_batch_id"] == parent
    assert child["status"] == "pending"
    assert child["total_items"] == 3
    assert _file_ids_of(alice, child["id"]) == [files[1], files[4], files[5]]
    assert alice.get(f"/v1/batches/{parent}").get_json()["parent_batch_id"] is None
    # Each item is retried once from its parent: a second retry finds nothing.
    again = alice.post(f"/v1/batches/{parent}/retry", {"include_cancelled": False})
    assert again.status_code == 409
    assert again.get_json()["error"] == "nothing_to_retry"
    # ... except the cancelled item, when asked.
    more = alice.post(f"/v1/batches/{parent}/retry", {"include_cancelled": True})
    assert more.status_code == 201
    assert _file_ids_of(alice, more.get_json()["id"]) == [files[3]]
    # The parent's succeeded item is in neither: never processed or billed again.
    assert {b["parent_batch_id"] for b in alice.get("/v1/batches").get_json()["data"]} == {
        None,
        parent,
    }


def test_retry_with_cancelled_items_keeps_position_order(api_env: ApiEnv, alice: Tenant) -> None:
    files = _uploaded(alice, len(MIXED))
    parent = alice.submit(files).get_json()["id"]
    settle(api_env, parent, MIXED)
    child = alice.post(f"/v1/batches/{parent}/retry", {"include_cancelled": True}).get_json()
    assert _file_ids_of(alice, child["id"]) == [files[1], files[3], files[4], files[5]]
    assert child["options"] == alice.get(f"/v1/batches/{parent}").get_json()["options"]


def test_retry_refusals(api_env: ApiEnv, alice: Tenant) -> None:
    files = _uploaded(alice, 2)
    running = alice.submit(files).get_json()["id"]
    response = alice.post(f"/v1/batches/{running}/retry", {})
    assert response.status_code == 409
    assert response.get_json()["error"] == "batch_not_terminal"

    settle(api_env, running, [("succeeded", None), ("failed", "extraction_failed")])
    response = alice.post(f"/v1/batches/{running}/retry", {})
    assert response.status_code == 409
    assert response.get_json()["error"] == "nothing_to_retry"

    assert alice.post("/v1/batches/batch_nope/retry", {}).status_code == 404
    assert alice.post(f"/v1/batches/{running}/retry", {"bogus": 1}).status_code == 422
    bob = api_env.tenant("bob")
    assert bob.post(f"/v1/batches/{running}/retry", {}).status_code == 404


def test_retry_is_idempotent(api_env: ApiEnv, alice: Tenant) -> None:
    files = _uploaded(alice, 2)
    parent = alice.submit(files).get_json()["id"]
    settle(api_env, parent, [("failed", "internal_error"), ("cancelled", None)])
    headers = {"Idempotency-Key": "retry-1"}
    first = alice.post(f"/v1/batches/{parent}/retry", {}, headers=headers)
    second = alice.post(f"/v1/batches/{parent}/retry", {}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.get_json()["id"] == second.get_json()["id"]
    other = alice.post(f"/v1/batches/{parent}/retry", {"include_cancelled": True}, headers=headers)
    assert other.status_code == 422
    assert other.get_json()["error"] == "idempotency_key_mismatch"
    # A submit with the same key is a different request too.
    assert alice.submit(files, headers=headers).get_json()["error"] == "idempotency_key_mismatch"
    # A refused retry frees its key.
    nothing = alice.post(f"/v1/batches/{parent}/retry", {}, headers={"Idempotency-Key": "k2"})
    assert nothing.status_code == 409
    fixed = alice.post(
        f"/v1/batches/{parent}/retry",
        {"include_cancelled": True},
        headers={"Idempotency-Key": "k2"},
    )
    assert fixed.status_code == 201


def test_upload_missing_is_retried_only_once_the_bytes_are_back(
    api_env: ApiEnv, alice: Tenant
) -> None:
    store = api_env.ctx.blob_store
    assert store is not None
    files = _uploaded(alice, 2)
    parent = alice.submit(files).get_json()["id"]
    settle(api_env, parent, [("failed", "upload_missing"), ("succeeded", None)])
    key = f"{alice.customer_id}/inputs/{files[0]}"
    store.delete_many([key])
    response = alice.post(f"/v1/batches/{parent}/retry", {})
    assert response.status_code == 409
    assert response.get_json()["skipped"] == {"still_missing": 1}
    store.put(key, PDF_BYTES, content_type="application/pdf")
    response = alice.post(f"/v1/batches/{parent}/retry", {})
    assert response.status_code == 201
    assert _file_ids_of(alice, response.get_json()["id"]) == [files[0]]


def test_retry_of_a_large_batch_is_created_within_a_second(
    api_env: ApiEnv, alice: Tenant, report: Any
) -> None:
    """Figure: a 10,000-item parent with 100 failures (ids registered in the database; the
    blob store is not asked about non-upload_missing failures)."""
    n, failures = 10_000, 100
    files = _bulk_files(api_env, alice, n)
    parent = alice.submit(files).get_json()["id"]
    outcomes: list[Outcome] = [("succeeded", None)] * n
    for position in range(0, n, n // failures):
        outcomes[position] = ("failed", "ocr_provider_error")
    _settle_fast(api_env, parent, outcomes)
    started = time.perf_counter()
    response = alice.post(f"/v1/batches/{parent}/retry", {})
    seconds = time.perf_counter() - started
    assert response.status_code == 201
    assert response.get_json()["total_items"] == failures
    report(backend=api_env.backend, items=n, failures=failures, retry_seconds=seconds)
    assert seconds <= 1.0


def _bulk_files(env: ApiEnv, tenant: Tenant, n: int) -> list[str]:
    """``n`` uploaded file rows without n PUTs: registered in bulk, then marked uploaded."""
    from service.models import File

    ids: list[str] = []
    for start in range(0, n, 1000):
        body = {"files": [{"size_bytes": 10} for _ in range(min(1000, n - start))]}
        ids += [f["id"] for f in tenant.post("/v1/files/bulk", body).get_json()["data"]]
    with transaction(env.ctx.session_factory) as session:
        session.execute(
            update(File).where(File.id.in_(ids)).values(status="uploaded", uploaded_at=utcnow())
        )
    return ids


def _settle_fast(env: ApiEnv, batch_id: str, outcomes: list[Outcome]) -> None:
    from service.models import Batch

    now = utcnow()
    failed = [p for p, (s, _) in enumerate(outcomes) if s == "failed"]
    with transaction(env.ctx.session_factory) as session:
        session.execute(
            update(Item)
            .where(Item.batch_id == batch_id)
            .values(status="succeeded", admitted_at=None, completed_at=now)
        )
        session.execute(
            update(Item)
            .where(Item.batch_id == batch_id, Item.position.in_(failed))
            .values(status="failed", error_code=outcomes[failed[0]][1])
        )
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                status="partially_failed",
                count_pending=0,
                count_succeeded=len(outcomes) - len(failed),
                count_failed=len(failed),
                completed_at=now,
            )
        )


# --- delete ------------------------------------------------------------------------------------


def test_delete_file(api_env: ApiEnv, alice: Tenant) -> None:
    store = api_env.ctx.blob_store
    assert store is not None
    files = _uploaded(alice, 3)
    batch = alice.submit(files).get_json()["id"]
    bob = api_env.tenant("bob")
    assert bob.client.delete(f"/v1/files/{files[0]}", headers=bob.headers).status_code == 404

    response = alice.client.delete(f"/v1/files/{files[0]}", headers=alice.headers)
    assert response.status_code == 204
    assert store.head(f"{alice.customer_id}/inputs/{files[0]}") is None
    assert alice.get(f"/v1/files/{files[0]}").status_code == 404
    assert alice.client.delete(f"/v1/files/{files[0]}", headers=alice.headers).status_code == 404
    # The batch that still needed it fails that item at once; the others are untouched.
    body = alice.get(f"/v1/batches/{batch}").get_json()
    by_file = {i["file_id"]: i for i in body["items"]}
    assert by_file[files[0]]["status"] == "failed"
    assert by_file[files[0]]["error"]["code"] == "upload_missing"
    assert {by_file[f]["status"] for f in files[1:]} == {"pending"}
    assert body["counts"]["failed"] == 1 and body["counts"]["pending"] == 2
    # A deleted file cannot be submitted again, nor retried.
    refused = alice.submit([files[0]])
    assert refused.status_code == 404
    assert refused.get_json()["error"] == "file_not_found"


def test_delete_file_before_upload(api_env: ApiEnv, alice: Tenant) -> None:
    created = alice.register(PDF_BYTES)
    assert alice.client.delete(f"/v1/files/{created['id']}", headers=alice.headers).status_code == (
        204
    )
    assert alice.get(f"/v1/files/{created['id']}").status_code == 404


def test_delete_batch(api_env: ApiEnv, alice: Tenant) -> None:
    store = api_env.ctx.blob_store
    assert store is not None
    files = _uploaded(alice, 3)
    batch = alice.submit(files).get_json()["id"]
    response = alice.client.delete(f"/v1/batches/{batch}", headers=alice.headers)
    assert response.status_code == 409
    assert response.get_json()["error"] == "batch_not_terminal"

    settle(api_env, batch, [("succeeded", None), ("failed", "internal_error"), ("succeeded", None)])
    items = alice.get(f"/v1/batches/{batch}").get_json()["items"]
    keys = [result_key(alice.customer_id, batch, i["id"]) for i in items if i["result_url"]]
    assert len(keys) == 2 and all(store.head(k) is not None for k in keys)
    bob = api_env.tenant("bob")
    assert bob.client.delete(f"/v1/batches/{batch}", headers=bob.headers).status_code == 404

    assert alice.client.delete(f"/v1/batches/{batch}", headers=alice.headers).status_code == 204
    assert all(store.head(k) is None for k in keys)
    assert alice.get(f"/v1/batches/{batch}").status_code == 404
    assert alice.get(f"{items[0]['result_url']}").status_code == 404
    assert alice.post(f"/v1/batches/{batch}/retry", {}).status_code == 404
    assert alice.post(f"/v1/batches/{batch}/cancel").status_code == 404
    assert batch not in [b["id"] for b in alice.get("/v1/batches").get_json()["data"]]
    assert alice.client.delete(f"/v1/batches/{batch}", headers=alice.headers).status_code == 404
    # Billing rows stay for accounting; the input files are not the batch's to delete.
    with api_env.ctx.session_factory() as session:
        billed = session.scalar(
            select(func.sum(BillingEntry.pages)).where(BillingEntry.batch_id == batch)
        )
    assert billed == 2
    assert alice.get(f"/v1/files/{files[0]}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/v1/batches/{batch_id}/retry", {"201", "401", "402", "404", "409", "422", "429"}),
        ("delete", "/v1/batches/{batch_id}", {"204", "401", "404", "409"}),
        ("delete", "/v1/files/{file_id}", {"204", "401", "404"}),
    ],
)
def test_endpoints_are_documented(alice: Tenant, method: str, path: str, statuses: set) -> None:
    document = alice.get("/openapi.json").get_json()
    operation = document["paths"][path][method]
    assert statuses <= set(operation["responses"])
