"""T14 and the other sweeps: an injected clock, and two sweeps running at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from service.api.app import create_app
from service.clock import utcnow
from service.db import transaction
from service.models import File, FileStatus, Item, ItemStatus
from service.settings import Settings
from tasks import sweeps
from tasks.context import TaskContext
from tests.api.conftest import PDF_BYTES, Tenant
from tests.conftest import build_context, new_customer_key


@pytest.fixture
def env(pg_s3_settings: Settings, flush_redis: None) -> Iterator[tuple[TaskContext, Tenant]]:
    ctx = build_context(pg_s3_settings)
    client = create_app(pg_s3_settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    customer_id, key = new_customer_key(ctx, "sweepy")
    yield ctx, Tenant(client, customer_id, key)
    ctx.close()


def twice_at_once(
    sweep: Callable[..., dict[str, int]], ctx: TaskContext, now: Any
) -> list[dict[str, int]]:
    results: list[dict[str, int]] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(sweep(ctx, now))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_t14_expire_uploads_exactly_where_due(
    env: tuple[TaskContext, Tenant], report: Callable[..., None]
) -> None:
    ctx, tenant = env
    due = [tenant.register(PDF_BYTES)["id"] for _ in range(30)]
    uploaded = tenant.upload(PDF_BYTES)
    later = tenant.register(PDF_BYTES)["id"]
    window = timedelta(hours=ctx.settings.retention_hours)
    with transaction(ctx.session_factory) as session:  # `later` was registered an hour after
        session.execute(
            update(File)
            .where(File.id == later)
            .values(expires_at=File.expires_at + timedelta(hours=1))
        )
    # A pending item whose file never arrived (defensive: submit normally refuses those).
    batch = tenant.submit([uploaded]).get_json()
    with transaction(ctx.session_factory) as session:
        session.execute(update(Item).where(Item.batch_id == batch["id"]).values(file_id=due[0]))

    assert sweeps.expire_uploads(ctx, utcnow()) == {"files_expired": 0, "items_failed": 0}
    now = utcnow() + window + timedelta(minutes=1)  # the injected clock
    results = twice_at_once(sweeps.expire_uploads, ctx, now)
    assert sum(r["files_expired"] for r in results) == len(due), "each file exactly once"
    assert sum(r["items_failed"] for r in results) == 1
    with ctx.session_factory() as session:
        status = dict(session.execute(select(File.id, File.status)).all())
        item = session.scalars(select(Item).where(Item.batch_id == batch["id"])).one()
    assert all(status[f] == FileStatus.EXPIRED for f in due)
    assert status[uploaded] == FileStatus.UPLOADED and status[later] == FileStatus.AWAITING_UPLOAD
    assert (item.status, item.error_code) == (ItemStatus.FAILED, "upload_missing")
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["status"] == "failed" and body["counts"]["failed"] == 1
    assert tenant.get(f"/v1/files/{due[1]}").get_json()["status"] == "expired"
    assert tenant.submit([due[1]]).status_code == 404
    report(
        files_due=len(due),
        expired=sum(r["files_expired"] for r in results),
        double_transitions=0,
        sweeps_at_once=2,
    )


def test_delete_expired_blobs_after_retention(env: tuple[TaskContext, Tenant]) -> None:
    ctx, tenant = env
    from tests.api.test_batches import succeed_with_result

    file_id = tenant.upload(PDF_BYTES)
    batch = tenant.submit([file_id]).get_json()
    item_id = batch["items"][0]["id"]
    succeed_with_result(ctx, tenant, batch["id"], item_id)
    result_url = f"/v1/batches/{batch['id']}/items/{item_id}/result"
    assert tenant.get(result_url).status_code == 302
    store = ctx.blob_store
    assert store is not None
    input_key = f"{tenant.customer_id}/inputs/{file_id}"
    assert store.head(input_key) is not None

    assert sweeps.delete_expired_blobs(ctx, utcnow()) == {"inputs": 0, "results": 0}
    later = utcnow() + timedelta(hours=ctx.settings.retention_hours, minutes=1)
    results = twice_at_once(sweeps.delete_expired_blobs, ctx, later)
    assert sum(r["inputs"] for r in results) == 1 and sum(r["results"] for r in results) == 1
    assert store.head(input_key) is None
    assert tenant.get(result_url).status_code == 410
    assert tenant.get(f"/v1/files/{file_id}").get_json()["status"] == "expired"


def test_requeue_stale_items_twice_at_once(env: tuple[TaskContext, Tenant]) -> None:
    ctx, tenant = env
    ctx.dispatcher.publish = lambda item_id: None  # no workers here: keep messages out
    from tasks.items import claim_item

    batch = tenant.submit([tenant.upload(PDF_BYTES + bytes([n])) for n in range(4)]).get_json()
    ctx.dispatcher.admit(tenant.customer_id)
    claims = [claim_item(ctx, i["id"]) for i in batch["items"]]
    assert all(claims)
    later = utcnow() + timedelta(seconds=ctx.settings.lease_seconds + 1)
    results = twice_at_once(sweeps.requeue_stale_items, ctx, later)
    assert sum(r["requeued"] for r in results) == 4 and sum(r["failed"] for r in results) == 0
    with ctx.session_factory() as session:
        items = list(session.scalars(select(Item).where(Item.batch_id == batch["id"])))
    assert all(i.status == ItemStatus.PENDING and i.attempts == 1 for i in items)
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["counts"]["pending"] == 4 and body["counts"]["running"] == 0


def test_prune_idempotency_keys(env: tuple[TaskContext, Tenant]) -> None:
    ctx, tenant = env
    file_id = tenant.upload(PDF_BYTES)
    first = tenant.submit([file_id], headers={"Idempotency-Key": "old"}).get_json()
    later = utcnow() + timedelta(hours=ctx.settings.idempotency_hours, minutes=1)
    assert sweeps.prune_idempotency_keys(ctx, utcnow()) == {"pruned": 0}
    assert sweeps.prune_idempotency_keys(ctx, later) == {"pruned": 1}
    again = tenant.submit([file_id], headers={"Idempotency-Key": "old"}).get_json()
    assert again["id"] != first["id"]
