"""Admission and claim: never more than the cap in flight, oldest first, even with dispatchers
racing; a claim that loses a race changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update

from service.api.app import create_app
from service.db import transaction
from service.models import Item
from service.settings import Settings
from tasks.context import TaskContext
from tests.api.conftest import PDF_BYTES, Tenant
from tests.conftest import build_context, new_customer_key


@pytest.fixture(params=["postgres", "sqlite"])
def env(
    request: pytest.FixtureRequest,
    pg_s3_settings: Settings,
    sqlite_local_settings: Settings,
    flush_redis: None,
) -> Iterator[tuple[TaskContext, Tenant, list[str]]]:
    settings = pg_s3_settings if request.param == "postgres" else sqlite_local_settings
    ctx = build_context(settings)
    published: list[str] = []
    ctx.dispatcher.publish = published.append  # no workers here: collect the messages
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    customer_id, key = new_customer_key(ctx, "admitted", concurrency=3)
    yield ctx, Tenant(client, customer_id, key), published
    ctx.close()


def admitted_positions(ctx: TaskContext, customer_id: str) -> list[int]:
    with ctx.session_factory() as session:
        return sorted(
            session.scalars(
                select(Item.position).where(
                    Item.customer_id == customer_id, Item.admitted_at.is_not(None)
                )
            )
        )


def test_admits_the_oldest_up_to_the_cap(env: tuple[TaskContext, Tenant, list[str]]) -> None:
    ctx, tenant, published = env
    batch = tenant.submit([tenant.upload(PDF_BYTES + bytes([n])) for n in range(10)]).get_json()
    # The submit admitted; admitting again finds no free slot.
    assert ctx.dispatcher.admit(tenant.customer_id) == 0
    assert admitted_positions(ctx, tenant.customer_id) == [0, 1, 2]
    assert published == [i["id"] for i in batch["items"][:3]]


def test_racing_dispatchers_admit_the_cap_once(
    env: tuple[TaskContext, Tenant, list[str]],
) -> None:
    ctx, tenant, published = env
    tenant.submit([tenant.upload(PDF_BYTES + bytes([n])) for n in range(10)])
    # Start over with nothing admitted and every slot free, then admit from four threads.
    with transaction(ctx.session_factory) as session:
        session.execute(update(Item).values(admitted_at=None))
    ctx.dispatcher.semaphore.release(tenant.customer_id, published)
    published.clear()
    barrier = threading.Barrier(4)
    counts: list[int] = []

    def admit() -> None:
        barrier.wait()
        counts.append(ctx.dispatcher.admit(tenant.customer_id))

    threads = [threading.Thread(target=admit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 3 and len(published) == 3 and len(set(published)) == 3
    assert len(admitted_positions(ctx, tenant.customer_id)) == 3
    with ctx.session_factory() as session:
        marked = session.scalar(
            select(func.count()).where(
                Item.customer_id == tenant.customer_id, Item.admitted_at.is_not(None)
            )
        )
    assert marked == 3


def test_one_statement_marks_exactly_the_free_slots(
    env: tuple[TaskContext, Tenant, list[str]],
) -> None:
    """The marking statement itself, not the slot check behind it, stops at the cap minus
    the items in flight."""
    ctx, tenant, _ = env
    tenant.submit([tenant.upload(PDF_BYTES + bytes([n])) for n in range(10)])
    with transaction(ctx.session_factory) as session:
        session.execute(update(Item).values(admitted_at=None))
    with transaction(ctx.session_factory) as session:
        marked = ctx.dispatcher.mark_admitted(session, tenant.customer_id, cap=2)
    with ctx.session_factory() as session:
        ids = list(
            session.scalars(
                select(Item.id).where(Item.admitted_at.is_not(None)).order_by(Item.position)
            )
        )
    assert marked == ids and len(ids) == 2
    assert admitted_positions(ctx, tenant.customer_id) == [0, 1]
    # Two in flight: a cap of 5 leaves three to admit, a cap of 2 none.
    with transaction(ctx.session_factory) as session:
        assert ctx.dispatcher.mark_admitted(session, tenant.customer_id, cap=2) == []
        assert len(ctx.dispatcher.mark_admitted(session, tenant.customer_id, cap=5)) == 3
    assert admitted_positions(ctx, tenant.customer_id) == [0, 1, 2, 3, 4]


def test_a_cancel_between_read_and_lock_leaves_the_claim_with_nothing(
    env: tuple[TaskContext, Tenant, list[str]],
) -> None:
    """The claim reads the item, then takes the batch lock; a cancel that commits in between
    must win, and the claim's counter changes must roll back with it."""
    from tasks.items import claim_item

    ctx, tenant, published = env
    if ctx.settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("SQLite's claim holds the write lock from BEGIN IMMEDIATE: no race to lose")
    batch = tenant.submit([tenant.upload(PDF_BYTES + bytes([n])) for n in range(3)]).get_json()
    semaphore = ctx.dispatcher.semaphore
    acquire = semaphore.acquire

    def cancel_then_acquire(*args: object, **kwargs: object) -> bool:
        # The claim calls this between its read and the batch lock.
        assert tenant.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200
        return acquire(*args, **kwargs)  # type: ignore[arg-type]

    semaphore.acquire = cancel_then_acquire  # type: ignore[method-assign]
    assert claim_item(ctx, published[0]) is None
    body = tenant.get(f"/v1/batches/{batch['id']}").get_json()
    assert body["status"] == "cancelled"
    assert body["counts"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 3,
    }
