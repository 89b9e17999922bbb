"""The lease keeper: one thread per process renews the lease of every item it extracts, and
nothing of an item once its block has ended (a late renewal would take back the Redis slot
that the finish hands to the next item)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from service.api.app import create_app
from service.models import Item
from service.settings import Settings, load_settings
from tasks.context import TaskContext
from tasks.items import Claim, claim_item
from tests.api.conftest import PDF_BYTES, Tenant
from tests.conftest import build_context, new_customer_key

LEASE_SECONDS = 5  # the shortest allowed: renewed every 1.25 s


@pytest.fixture
def env(pg_s3_settings: Settings, flush_redis: None) -> Iterator[tuple[TaskContext, Tenant]]:
    settings = load_settings(**{**pg_s3_settings.model_dump(), "lease_seconds": LEASE_SECONDS})
    ctx = build_context(settings)
    ctx.dispatcher.publish = lambda item_id: None  # no workers here: keep messages out
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    customer_id, key = new_customer_key(ctx, "leases")
    yield ctx, Tenant(client, customer_id, key)
    ctx.close()


def claims(ctx: TaskContext, tenant: Tenant, count: int) -> list[Claim]:
    files = [tenant.upload(PDF_BYTES + bytes([n])) for n in range(count)]
    batch = tenant.submit(files).get_json()
    ctx.dispatcher.admit(tenant.customer_id)
    claimed = [claim_item(ctx, item["id"]) for item in batch["items"]]
    assert all(claimed)
    return [c for c in claimed if c is not None]


def lease_ends(ctx: TaskContext, items: list[Claim]) -> list[float]:
    with ctx.session_factory() as session:
        rows = session.execute(
            select(Item.id, Item.lease_expires_at).where(Item.id.in_([c.item_id for c in items]))
        )
        ends = {row.id: row.lease_expires_at.timestamp() for row in rows}
    return [ends[c.item_id] for c in items]


def keeper_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "lease-keeper")


def test_one_thread_renews_every_held_lease_and_stops_at_the_blocks_end(
    env: tuple[TaskContext, Tenant],
) -> None:
    ctx, tenant = env
    first, second = claims(ctx, tenant, 2)
    before = lease_ends(ctx, [first, second])
    threads_before = keeper_threads()
    keeper = ctx.lease_keeper
    with keeper.keeping(first), keeper.keeping(second):
        time.sleep(LEASE_SECONDS * 0.35)  # past the first renewal of both (a quarter lease)
        renewed = lease_ends(ctx, [first, second])
        assert all(after > start for after, start in zip(renewed, before, strict=True))
    assert keeper_threads() == threads_before + 1

    # Finished: the slots are handed on, and no renewal may take them back.
    ctx.dispatcher.semaphore.release(tenant.customer_id, [first.item_id, second.item_id])
    ended = lease_ends(ctx, [first, second])
    time.sleep(LEASE_SECONDS * 0.35)
    assert lease_ends(ctx, [first, second]) == ended
    assert ctx.dispatcher.semaphore.holders(tenant.customer_id) == []

    # The next item reuses the same thread.
    (third,) = claims(ctx, tenant, 1)
    with keeper.keeping(third):
        time.sleep(LEASE_SECONDS * 0.35)
    assert keeper_threads() == threads_before + 1
    assert lease_ends(ctx, [third])[0] > ended[0]
