"""`/v1/batches`: submit checks, idempotency, polling, listing, cancel, results, isolation."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import select

from service import lifecycle
from service.clock import utcnow
from service.db import transaction
from service.models import Customer, Item, ItemStatus
from tasks.context import TaskContext
from tests.api.conftest import PDF_BYTES, ApiEnv, Tenant


def _uploaded(tenant: Tenant, count: int) -> list[str]:
    return [tenant.upload(PDF_BYTES + str(n).encode()) for n in range(count)]


def finish(ctx: TaskContext, item_id: str, status: ItemStatus, **fields: Any) -> None:
    """Move an item the way a worker would (under the batch lock), without a worker."""
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        batch_id, old_status = session.execute(
            select(Item.batch_id, Item.status).where(Item.id == item_id)
        ).one()
        extra = {"completed_at": now} if status in (ItemStatus.SUCCEEDED, ItemStatus.FAILED) else {}
        lifecycle.move_item(
            session,
            batch_id=batch_id,
            item_id=item_id,
            from_status=ItemStatus(old_status),
            to_status=status,
            now=now,
            **{**extra, **fields},
        )


def succeed_with_result(ctx: TaskContext, tenant: Tenant, batch_id: str, item_id: str) -> dict:
    from datetime import timedelta

    from service.storage import result_key

    result = {
        "object": "extraction",
        "page_count": 1,
        "pages_billed": 1,
        "chunks": [],
        "warnings": [],
        "file": {},
    }
    key = result_key(tenant.customer_id, batch_id, item_id)
    assert ctx.blob_store is not None
    ctx.blob_store.put(key, json.dumps(result).encode(), content_type="application/json")
    finish(ctx, item_id, ItemStatus.RUNNING)
    finish(
        ctx,
        item_id,
        ItemStatus.SUCCEEDED,
        result_key=key,
        page_count=1,
        result_expires_at=utcnow() + timedelta(hours=1),
    )
    return result


# --- submit ----------------------------------------------------------------------------------


def test_submit_returns_the_batch_with_its_first_items(alice: Tenant) -> None:
    file_ids = _uploaded(alice, 3)
    response = alice.submit(file_ids, metadata={"project": "q3"}, options={"ocr": "never"})
    assert response.status_code == 200, response.get_json()
    batch = response.get_json()
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "pending"
    assert batch["total_items"] == 3
    assert batch["counts"] == {
        "pending": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert batch["options"] == {
        "extract_text": True,
        "extract_images": True,
        "extract_tables": True,
        "ocr": "never",
        "languages": ["eng"],
    }
    assert batch["metadata"] == {"project": "q3"}
    assert batch["pages_billed"] == 0 and batch["completed_at"] is None
    assert batch["next_cursor"]
    items = batch["items"]
    assert [i["file_id"] for i in items] == file_ids
    assert [i["position"] for i in items] == [0, 1, 2]
    first = items[0]
    assert first["object"] == "batch_item" and first["status"] == "pending"
    assert first["attempts"] == 0 and first["page_count"] is None and first["pages_done"] == 0
    assert first["result_url"] is None and first["error"] is None


def test_submit_rechecks_uploads_never_looked_at(api_env: ApiEnv, alice: Tenant) -> None:
    # Uploaded but never read back: the submit must look at the store itself.
    file_ids = _uploaded(alice, 3)
    assert alice.submit(file_ids).status_code == 200


def test_submit_rechecks_many_uploads_by_listing(api_env: ApiEnv, alice: Tenant) -> None:
    from service.uploads import HEAD_LIMIT

    file_ids = _uploaded(alice, HEAD_LIMIT + 4)
    assert alice.submit(file_ids).status_code == 200


def test_unknown_files_are_404_with_their_ids(alice: Tenant) -> None:
    file_ids = _uploaded(alice, 1)
    missing = "file_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    response = alice.submit([*file_ids, missing])
    assert response.status_code == 404
    assert response.get_json()["error"] == "file_not_found"
    assert response.get_json()["file_ids"] == [missing]


def test_files_without_bytes_are_409(alice: Tenant) -> None:
    ready = _uploaded(alice, 1)
    waiting = alice.register(PDF_BYTES)["id"]
    response = alice.submit([*ready, waiting])
    assert response.status_code == 409
    assert response.get_json() | {"message": ""} == {
        "error": "file_not_uploaded",
        "file_ids": [waiting],
        "message": "",
    }


def test_exhausted_quota_is_402(api_env: ApiEnv) -> None:
    tenant = api_env.tenant("broke", quota=0)
    response = tenant.submit(_uploaded(tenant, 1))
    assert response.status_code == 402
    assert response.get_json()["error"] == "payment_required"


@pytest.mark.parametrize(
    "body",
    [
        {"file_ids": []},
        {"file_ids": ["file_a", "file_a"]},
        {"file_ids": ["file_a"], "options": {"ocr": "sometimes"}},
        {"file_ids": ["file_a"], "options": {"languages": ["english!"]}},
        {"file_ids": ["file_a"], "options": {"extract_text": "maybe"}},
        {"file_ids": ["file_a"], "metadata": {f"k{n}": "v" for n in range(17)}},
        {"file_ids": ["file_a"], "metadata": {"k": "v" * 513}},
        {"file_ids": "file_a"},
    ],
)
def test_bad_submissions_are_422(alice: Tenant, body: dict[str, Any]) -> None:
    response = alice.post("/v1/batches", body)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_error"


def test_uninstalled_language_is_422_at_submit(alice: Tenant) -> None:
    response = alice.submit(_uploaded(alice, 1), options={"languages": ["xyz"]})
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == ["body", "options", "languages"]


def test_more_files_than_the_limit_is_422(api_env: ApiEnv, alice: Tenant) -> None:
    limit = api_env.settings.max_files_per_batch
    response = alice.submit([f"file_{n:030d}" for n in range(limit + 1)])
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == ["body", "file_ids"]


# --- idempotency ------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_same_batch(api_env: ApiEnv, alice: Tenant) -> None:
    file_ids = _uploaded(alice, 2)
    headers = {"Idempotency-Key": "run-42"}
    first = alice.submit(file_ids, headers=headers).get_json()
    second = alice.submit(file_ids, headers=headers)
    assert second.status_code == 200
    assert second.get_json()["id"] == first["id"]
    with api_env.ctx.session_factory() as session:
        assert len(list(session.scalars(select(Item.id)))) == 2


def test_same_key_other_body_is_422(alice: Tenant) -> None:
    file_ids = _uploaded(alice, 2)
    headers = {"Idempotency-Key": "run-43"}
    assert alice.submit(file_ids, headers=headers).status_code == 200
    response = alice.submit(file_ids[:1], headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"] == "idempotency_key_mismatch"


def test_keys_are_scoped_per_customer(api_env: ApiEnv, alice: Tenant) -> None:
    bob = api_env.tenant("bob")
    a = alice.submit(_uploaded(alice, 1), headers={"Idempotency-Key": "k"}).get_json()
    b = bob.submit(_uploaded(bob, 1), headers={"Idempotency-Key": "k"}).get_json()
    assert a["id"] != b["id"]


def test_rejected_submit_frees_its_key(alice: Tenant) -> None:
    waiting = alice.register(PDF_BYTES)
    headers = {"Idempotency-Key": "fix-and-retry"}
    assert alice.submit([waiting["id"]], headers=headers).status_code == 409
    from tests.conftest import put_upload

    assert put_upload(waiting["upload"], PDF_BYTES, alice.client) == 200
    assert alice.submit([waiting["id"]], headers=headers).status_code == 200


def test_concurrent_identical_submissions_create_one_batch(api_env: ApiEnv, alice: Tenant) -> None:
    file_ids = _uploaded(alice, 3)
    app = api_env.client.application
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def submit() -> None:
        client = app.test_client()
        start.wait()
        response = client.post(
            "/v1/batches",
            json={"file_ids": file_ids},
            headers={**alice.headers, "Idempotency-Key": "burst"},
        )
        with lock:
            results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [body["id"] for status, body in results if status == 200]
    in_use = [body for status, body in results if status == 409]
    assert len(ok) + len(in_use) == 20, results
    assert len(set(ok)) == 1 and ok
    assert all(b["error"] == "idempotency_key_in_use" for b in in_use)
    with api_env.ctx.session_factory() as session:
        assert len(list(session.scalars(select(Item.id)))) == 3


# --- polling ----------------------------------------------------------------------------------


def test_poll_with_cursor_returns_only_changes(api_env: ApiEnv, alice: Tenant) -> None:
    batch = alice.submit(_uploaded(alice, 5)).get_json()
    page = alice.get(f"/v1/batches/{batch['id']}?limit=2").get_json()
    assert [i["position"] for i in page["items"]] == [0, 1]
    page = alice.get(f"/v1/batches/{batch['id']}?limit=10&cursor={page['next_cursor']}").get_json()
    assert [i["position"] for i in page["items"]] == [2, 3, 4]
    cursor = page["next_cursor"]
    empty = alice.get(f"/v1/batches/{batch['id']}?cursor={cursor}").get_json()
    assert empty["items"] == [] and empty["next_cursor"] == cursor

    finish(api_env.ctx, batch["items"][1]["id"], ItemStatus.RUNNING)
    changed = alice.get(f"/v1/batches/{batch['id']}?cursor={cursor}").get_json()
    assert [(i["position"], i["status"]) for i in changed["items"]] == [(1, "running")]
    assert changed["status"] == "running" and changed["started_at"]
    times = [i["updated_at"] for i in alice.get(f"/v1/batches/{batch['id']}").get_json()["items"]]
    assert times == sorted(times)


@pytest.mark.parametrize("cursor", ["%%%", "bm90LWpzb24", "eyJ4IjoxfQ", "eyJzIjotMX0"])
def test_malformed_cursor_is_422(alice: Tenant, cursor: str) -> None:
    batch = alice.submit(_uploaded(alice, 1)).get_json()
    response = alice.get(f"/v1/batches/{batch['id']}?cursor={cursor}")
    assert response.status_code == 422
    assert response.get_json()["error"] == "invalid_cursor"


def test_poll_limit_bounds(alice: Tenant) -> None:
    batch = alice.submit(_uploaded(alice, 1)).get_json()
    assert alice.get(f"/v1/batches/{batch['id']}?limit=0").status_code == 422
    assert alice.get(f"/v1/batches/{batch['id']}?limit=501").status_code == 422
    assert alice.get(f"/v1/batches/{batch['id']}?limit=500").status_code == 200


def test_poller_sees_every_final_state_under_concurrent_writers(
    api_env: ApiEnv, alice: Tenant
) -> None:
    """T13: writers on several threads finish items while a poller follows next_cursor."""
    total = 120
    batch = alice.submit(_uploaded_fast(api_env, alice, total)).get_json()
    item_ids = [i["id"] for i in _all_items(alice, batch["id"])]
    seen: dict[str, str] = {}
    done = threading.Event()

    def writer(mine: list[str]) -> None:
        for n, item_id in enumerate(mine):
            finish(api_env.ctx, item_id, ItemStatus.RUNNING)
            finish(
                api_env.ctx,
                item_id,
                ItemStatus.SUCCEEDED if n % 3 else ItemStatus.FAILED,
                **({} if n % 3 else {"error_code": "extraction_failed"}),
            )

    writers = [threading.Thread(target=writer, args=(item_ids[k::4],)) for k in range(4)]
    for thread in writers:
        thread.start()

    def poll(cursor: str | None) -> str | None:
        query = f"?limit=7&cursor={cursor}" if cursor else "?limit=7"
        page = alice.get(f"/v1/batches/{batch['id']}{query}").get_json()
        for item in page["items"]:
            seen[item["id"]] = item["status"]
        return page["next_cursor"]

    cursor = None
    while not done.is_set():
        cursor = poll(cursor)
        if not any(t.is_alive() for t in writers):
            done.set()
    for _ in range(total):  # drain what committed after the writers stopped
        before = dict(seen)
        cursor = poll(cursor)
        if seen == before:
            break
    final = {i["id"]: i["status"] for i in _all_items(alice, batch["id"])}
    missed = [item_id for item_id in item_ids if seen.get(item_id) != final[item_id]]
    assert missed == [], f"{len(missed)} updates missed by the poller"
    assert all(status in ("succeeded", "failed") for status in final.values())


def _uploaded_fast(env: ApiEnv, tenant: Tenant, count: int) -> list[str]:
    """Register through the API, put the bytes through the store directly (faster)."""
    body = tenant.post("/v1/files/bulk", {"files": [{"size_bytes": 3}] * count}).get_json()
    from service.storage import input_key

    assert env.ctx.blob_store is not None
    for file in body["data"]:
        env.ctx.blob_store.put(input_key(tenant.customer_id, file["id"]), b"abc")
    return [f["id"] for f in body["data"]]


def _all_items(tenant: Tenant, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"?limit=500&cursor={cursor}" if cursor else "?limit=500"
        page = tenant.get(f"/v1/batches/{batch_id}{query}").get_json()
        if not page["items"]:
            latest: dict[str, dict[str, Any]] = {}
            for item in items:
                latest[item["id"]] = item
            return sorted(latest.values(), key=lambda i: i["position"])
        items += page["items"]
        cursor = page["next_cursor"]


# --- list -------------------------------------------------------------------------------------


def test_list_newest_first_with_pages_and_status(api_env: ApiEnv, alice: Tenant) -> None:
    ids = [alice.submit(_uploaded(alice, 1)).get_json()["id"] for _ in range(3)]
    page = alice.get("/v1/batches?limit=2").get_json()
    assert page["object"] == "list"
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    assert "items" not in page["data"][0]
    rest = alice.get(f"/v1/batches?limit=2&cursor={page['next_cursor']}").get_json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    alice.post(f"/v1/batches/{ids[1]}/cancel")
    cancelled = alice.get("/v1/batches?status=cancelled").get_json()
    assert [b["id"] for b in cancelled["data"]] == [ids[1]]
    assert alice.get("/v1/batches?cursor=garbage").status_code == 422
    assert alice.get("/v1/batches?status=weird").status_code == 422


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_pending_items_and_keep_running_ones(api_env: ApiEnv, alice: Tenant) -> None:
    batch = alice.submit(_uploaded(alice, 3)).get_json()
    running = batch["items"][0]["id"]
    finish(api_env.ctx, running, ItemStatus.RUNNING)
    response = alice.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 200
    body = response.get_json()
    assert "items" not in body and "next_cursor" not in body
    assert body["cancel_requested_at"] and body["status"] == "running"
    assert body["counts"]["cancelled"] == 2 and body["counts"]["running"] == 1
    finish(api_env.ctx, running, ItemStatus.SUCCEEDED)
    after = alice.get(f"/v1/batches/{batch['id']}").get_json()
    assert after["status"] == "completed" and after["completed_at"]


def test_cancel_everything_pending_makes_it_cancelled(api_env: ApiEnv, alice: Tenant) -> None:
    batch = alice.submit(_uploaded(alice, 2)).get_json()
    body = alice.post(f"/v1/batches/{batch['id']}/cancel").get_json()
    assert body["status"] == "cancelled" and body["completed_at"]
    again = alice.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.get_json() == body
    with api_env.ctx.session_factory() as session:
        assert session.scalar(select(Customer.pages_used)) == 0


def test_batch_status_rules(api_env: ApiEnv, alice: Tenant) -> None:
    def run(outcomes: list[ItemStatus]) -> str:
        batch = alice.submit(_uploaded(alice, len(outcomes))).get_json()
        for item, outcome in zip(batch["items"], outcomes, strict=True):
            finish(api_env.ctx, item["id"], ItemStatus.RUNNING)
            finish(api_env.ctx, item["id"], outcome)
        return str(alice.get(f"/v1/batches/{batch['id']}").get_json()["status"])

    assert run([ItemStatus.SUCCEEDED, ItemStatus.SUCCEEDED]) == "completed"
    assert run([ItemStatus.SUCCEEDED, ItemStatus.FAILED]) == "partially_failed"
    assert run([ItemStatus.FAILED, ItemStatus.FAILED]) == "failed"


# --- results ----------------------------------------------------------------------------------


def test_result_endpoint(api_env: ApiEnv, alice: Tenant) -> None:
    batch = alice.submit(_uploaded(alice, 2)).get_json()
    done, waiting = batch["items"][0]["id"], batch["items"][1]["id"]
    base = f"/v1/batches/{batch['id']}/items"

    not_ready = alice.get(f"{base}/{waiting}/result")
    assert not_ready.status_code == 409
    assert not_ready.get_json()["error"] == "result_not_ready"
    assert not_ready.get_json()["status"] == "pending"

    expected = succeed_with_result(api_env.ctx, alice, batch["id"], done)
    redirect = alice.get(f"{base}/{done}/result")
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    if api_env.backend == "postgres":
        import httpx

        fetched = httpx.get(location, timeout=10)
        assert fetched.status_code == 200 and fetched.json() == expected
    else:
        fetched = api_env.client.get(location[len(api_env.settings.public_url) :])
        assert fetched.status_code == 200 and json.loads(fetched.data) == expected
    inline = alice.get(f"{base}/{done}/result?inline=true")
    assert inline.status_code == 200 and inline.get_json() == expected

    polled = {i["id"]: i for i in _all_items(alice, batch["id"])}
    assert polled[done]["result_url"] == f"{base}/{done}/result"

    assert alice.get(f"{base}/item_nope000000000000000000000/result").status_code == 404

    from sqlalchemy import update

    with transaction(api_env.ctx.session_factory) as session:
        session.execute(update(Item).where(Item.id == done).values(result_deleted_at=utcnow()))
    gone = alice.get(f"{base}/{done}/result")
    assert gone.status_code == 410 and gone.get_json()["error"] == "result_expired"


# --- isolation (T17) --------------------------------------------------------------------------


def test_other_customers_see_nothing(api_env: ApiEnv, alice: Tenant) -> None:
    mallory = api_env.tenant("mallory")
    file_id = _uploaded(alice, 1)[0]
    batch = alice.submit([file_id]).get_json()
    item_id = batch["items"][0]["id"]
    succeed_with_result(api_env.ctx, alice, batch["id"], item_id)
    probes = [
        mallory.get(f"/v1/files/{file_id}"),
        mallory.get(f"/v1/batches/{batch['id']}"),
        mallory.post(f"/v1/batches/{batch['id']}/cancel"),
        mallory.get(f"/v1/batches/{batch['id']}/items/{item_id}/result"),
        mallory.get(f"/v1/batches/{batch['id']}/items/{item_id}/result?inline=true"),
        mallory.submit([file_id]),
    ]
    assert [p.status_code for p in probes] == [404] * 6
    assert mallory.get("/v1/batches").get_json()["data"] == []
    # And the owner still sees everything unchanged.
    assert alice.get(f"/v1/batches/{batch['id']}").get_json()["status"] == "completed"


# --- rate limits (T11) ------------------------------------------------------------------------


def test_submissions_are_rate_limited_per_key(
    make_settings, postgres_url, s3_server, flush_redis
) -> None:
    from service.api.app import create_app
    from tests.api.conftest import Tenant
    from tests.conftest import TEST_BUCKET, build_context, new_customer_key, truncate_all

    truncate_all(postgres_url)
    settings = make_settings(
        database_url=postgres_url,
        blob_store="s3",
        s3_bucket=TEST_BUCKET,
        s3_endpoint_url=s3_server.endpoint_url,
        submit_rate_limit="6/minute",
    )
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    _, key_a = new_customer_key(ctx, "a")
    _, key_b = new_customer_key(ctx, "b")
    a = Tenant(client, "a", key_a)
    statuses = []
    for n in range(12):
        endpoint = ("/v1/files", "/v1/files/bulk", "/v1/batches")[n % 3]
        body = (
            {"size_bytes": 1}
            if n % 3 == 0
            else {"files": [{"size_bytes": 1}]}
            if n % 3 == 1
            else {"file_ids": ["file_x" * 5]}
        )
        response = a.post(endpoint, body)
        statuses.append(response.status_code)
        assert response.headers["X-RateLimit-Limit"] == "6"
        if response.status_code == 429:
            assert response.get_json()["error"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert response.headers["X-RateLimit-Remaining"] == "0"
    assert sum(s != 429 for s in statuses) == 6
    assert statuses[6:] == [429] * 6
    b = Tenant(client, "b", key_b)
    assert b.post("/v1/files", {"size_bytes": 1}).status_code == 200
    # Reads are not limited.
    assert a.get("/v1/batches").status_code == 200
    ctx.close()
