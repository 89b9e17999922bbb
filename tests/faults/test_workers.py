"""Worker faults (RELIABILITY T1, T2, T3, T6, T9, T12) with real worker processes.

Every test ends by checking the same books: every item terminal, no item lost, nothing billed
twice (billing rows = succeeded items, pages billed = their page counts), no reservation left.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from service.clock import utcnow
from service.models import BillingEntry, Customer, Item, ItemStatus
from tests.api.conftest import Tenant
from tests.support.live import Stack, corpus_bytes
from tests.support.stack import wait_for

pytestmark = pytest.mark.slow

CRAZY = corpus_bytes("digital-crazyones-1p.pdf")


def document(marker: str = "") -> bytes:
    """A valid one-page PDF made unique (and optionally marked) by a trailing comment."""
    return CRAZY + f"\n% {marker} {os.urandom(6).hex()}\n".encode()


def check_books(stack: Stack, tenant: Tenant, batch_id: str) -> dict[str, int]:
    items = stack.items(batch_id)
    assert all(i.status in ("succeeded", "failed", "cancelled") for i in items)
    succeeded = [i for i in items if i.status == ItemStatus.SUCCEEDED]
    with stack.ctx.session_factory() as session:
        billed = dict(
            session.execute(
                select(BillingEntry.id, BillingEntry.pages).where(BillingEntry.batch_id == batch_id)
            ).all()
        )
        # One statement, so one snapshot: other batches of this customer may be billing
        # while we look.
        billed_total = (
            select(func.coalesce(func.sum(BillingEntry.pages), 0))
            .where(BillingEntry.customer_id == tenant.customer_id)
            .scalar_subquery()
        )
        pages_used, pages_reserved, customer_billed = session.execute(
            select(Customer.pages_used, Customer.pages_reserved, billed_total).where(
                Customer.id == tenant.customer_id
            )
        ).one()
        customer_idle = not session.scalar(
            select(func.count()).where(
                Item.customer_id == tenant.customer_id,
                Item.status.in_([ItemStatus.PENDING, ItemStatus.RUNNING]),
            )
        )
    assert sorted(billed) == sorted(i.id for i in succeeded), "billed != succeeded"
    billed_pages = sum(billed.values())
    assert billed_pages == sum(i.page_count or 0 for i in succeeded)
    assert pages_used == customer_billed
    if customer_idle:
        assert pages_reserved == 0, "a reservation outlived its item"
    body = tenant.get(f"/v1/batches/{batch_id}?limit=1").get_json()
    assert body["pages_billed"] == billed_pages
    assert sum(body["counts"].values()) == len(items)
    return {
        "items": len(items),
        "succeeded": len(succeeded),
        "billed_twice": 0,
        "lost": sum(i.status in ("pending", "running") for i in items),
    }


def test_t1_kill_worker_children_repeatedly(stack: Stack, report: Callable[..., None]) -> None:
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "0.4"})
    stack.beat()
    tenant = stack.tenant("t1", concurrency=4)
    total = 40
    batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(total)])).get_json()
    worker = stack.procs[0]

    def started() -> bool:
        return any(i.status != ItemStatus.PENDING for i in stack.items(batch["id"]))

    # Kill only once the pool works: Celery gives up on a worker whose first pool cannot
    # start ("Could not start worker processes") and leaves the restart to the supervisor,
    # which is not the fault this test is about.
    wait_for(started, 60, 0.1, "the first item to start")
    kills = 0
    rng = random.Random(1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and kills < 8:
        time.sleep(rng.uniform(0.5, 1.5))
        children = worker.children()
        if children:
            os.kill(rng.choice(children), signal.SIGKILL)
            kills += 1
    assert worker.alive(), "the worker's main process died with its children"
    final = stack.wait_terminal(tenant, batch["id"], timeout=180)
    books = check_books(stack, tenant, batch["id"])
    items = stack.items(batch["id"])
    assert books["lost"] == 0
    # An item may only fail by exhausting its attempts through kills.
    assert all(i.error_code == "internal_error" for i in items if i.status == "failed")
    assert final["counts"]["succeeded"] + final["counts"]["failed"] == total
    report(
        kills=kills,
        items=total,
        succeeded=books["succeeded"],
        lost=books["lost"],
        billed_twice=0,
        retried=sum(i.attempts > 1 for i in items),
    )


def test_t2_kill_a_whole_worker_mid_batch(stack: Stack, report: Callable[..., None]) -> None:
    doomed = stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "2"})
    stack.beat()
    tenant = stack.tenant("t2", concurrency=4)
    total = 12
    batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(total)])).get_json()

    def running() -> list[Item]:
        return [i for i in stack.items(batch["id"]) if i.status == ItemStatus.RUNNING]

    stranded = wait_for(running, 30, 0.1, "items to start")
    doomed.kill()
    killed_at = utcnow()
    stranded_ids = {i.id for i in running()} | {i.id for i in stranded}
    stack.worker(concurrency=2)
    stack.wait_terminal(tenant, batch["id"], timeout=180)
    books = check_books(stack, tenant, batch["id"])
    assert books["lost"] == 0 and books["succeeded"] == total
    items = {i.id: i for i in stack.items(batch["id"])}
    delays = [
        (items[i].completed_at - killed_at).total_seconds()
        for i in stranded_ids
        if items[i].attempts > 1
    ]
    assert delays, "no item was stranded by the kill"
    report(
        stranded=len(delays),
        lost=0,
        billed_twice=0,
        recovery_p50_s=statistics.median(delays),
        recovery_max_s=max(delays),
        lease_s=stack.settings.lease_seconds,
    )


def test_t3_poison_document_stops_at_the_attempt_cap(
    stack: Stack, report: Callable[..., None]
) -> None:
    poison = b"POISON-PILL-7f3a"
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_POISON": poison.hex()})
    stack.beat()
    tenant = stack.tenant("t3")
    documents = [document() for _ in range(6)]
    documents.insert(2, document(poison.decode()))
    batch = tenant.submit(stack.upload_many(tenant, documents)).get_json()
    final = stack.wait_terminal(tenant, batch["id"], timeout=180)
    items = stack.items(batch["id"])
    poisoned = items[2]
    assert poisoned.status == "failed" and poisoned.error_code == "internal_error"
    assert poisoned.attempts == stack.settings.max_attempts
    assert all(i.status == "succeeded" for i in items if i.id != poisoned.id)
    assert final["status"] == "partially_failed"
    check_books(stack, tenant, batch["id"])
    report(
        attempts=poisoned.attempts, cap=stack.settings.max_attempts, others_succeeded=len(items) - 1
    )


def test_t6_ocr_provider_failures_retry_exactly_three_times(
    stack: Stack, report: Callable[..., None]
) -> None:
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_PROVIDER_FAILURES": "1"})
    stack.beat()
    tenant = stack.tenant("t6")
    rng = random.Random(6)
    failures = [rng.choice([0, 1, 2, 3, 4, 5]) for _ in range(12)]
    documents = [document(f"FAIL{n}") for n in failures]
    batch = tenant.submit(stack.upload_many(tenant, documents)).get_json()
    stack.wait_terminal(tenant, batch["id"], timeout=180)
    items = stack.items(batch["id"])
    retries = stack.settings.ocr_retries
    for item, n in zip(items, failures, strict=True):
        if n <= retries:
            assert item.status == "succeeded", (n, item.error_code)
            assert item.attempts == n + 1 and item.ocr_failures == n
        else:
            assert item.status == "failed" and item.error_code == "ocr_provider_error"
            assert item.attempts == retries + 1, "exactly 3 retries, then give up"
    check_books(stack, tenant, batch["id"])
    report(
        items=len(items),
        expected_ocr_provider_error=sum(n > retries for n in failures),
        got=sum(i.error_code == "ocr_provider_error" for i in items),
        max_attempts_seen=max(i.attempts for i in items),
    )


def test_t9_lost_enqueue_is_dispatched_by_the_sweeps(
    stack: Stack, report: Callable[..., None]
) -> None:
    """Crash between commit and publish, at both places it can happen."""
    tenant = stack.tenant("t9")
    dispatcher = stack.ctx.dispatcher
    published: list[str] = []
    real_publish = dispatcher.publish
    dispatcher.publish = published.append  # the API "crashes" right after committing
    try:
        never_admitted = tenant.submit(stack.upload_many(tenant, [document() for _ in range(3)]))
        # Admitted (slot taken, admitted_at set) but the message never reached the broker.
        admitted_lost = tenant.submit(stack.upload_many(tenant, [document() for _ in range(2)]))
        dispatcher.admit(tenant.customer_id)
    finally:
        dispatcher.publish = real_publish
    assert published, "the dispatcher admitted items whose messages were dropped"
    stack.worker(concurrency=2)
    started = time.monotonic()
    stack.beat()
    for response in (never_admitted, admitted_lost):
        stack.wait_terminal(tenant, response.get_json()["id"], timeout=120)
        books = check_books(stack, tenant, response.get_json()["id"])
        assert books["succeeded"] == books["items"]
    report(
        dropped_messages=len(published),
        recovered_after_s=time.monotonic() - started,
        redispatch_after_s=stack.settings.redispatch_after_seconds,
    )


def test_t12_cancel_at_random_moments(stack: Stack, report: Callable[..., None]) -> None:
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "0.3"})
    stack.beat()
    tenant = stack.tenant("t12", concurrency=3)
    rng = random.Random(12)
    outcomes: list[dict[str, int]] = []
    for _ in range(3):
        # 20 items take ~3 s here, so most random moments fall mid-batch.
        batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(20)])).get_json()
        time.sleep(rng.uniform(0.0, 2.5))
        cancelled = tenant.post(f"/v1/batches/{batch['id']}/cancel").get_json()
        final = stack.wait_terminal(tenant, batch["id"], timeout=120)
        cancel_at = final["cancel_requested_at"]
        assert cancel_at == cancelled["cancel_requested_at"]
        items = stack.items(batch["id"])
        if cancel_at is None:
            # The random moment fell after the batch had finished: cancel is a no-op then.
            assert cancelled["status"] != "cancelled" and final["counts"]["cancelled"] == 0
        else:
            cancel_time = _parse(cancel_at)
            late_starts = [i for i in items if i.started_at and i.started_at > cancel_time]
            assert late_starts == [], "an item started after the cancel committed"
        assert all(i.status != "pending" for i in items)
        with stack.ctx.session_factory() as session:
            billed = set(
                session.scalars(select(BillingEntry.id).where(BillingEntry.batch_id == batch["id"]))
            )
        assert not billed & {i.id for i in items if i.status == "cancelled"}
        check_books(stack, tenant, batch["id"])
        outcomes.append(final["counts"])
    report(
        batches=3,
        cancelled=[o["cancelled"] for o in outcomes],
        finished=[o["succeeded"] for o in outcomes],
        late_starts=0,
        cancelled_billed=0,
    )


def _parse(iso: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(iso.rstrip("Z"))


def test_t8_fairness_small_customer_is_not_stuck_behind_a_flood(
    stack: Stack, report: Callable[..., None]
) -> None:
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "0.2"})
    stack.beat()
    big = stack.tenant("flood", concurrency=3)
    small = stack.tenant("small", concurrency=3)
    flood = big.submit(stack.upload_many(big, [document() for _ in range(120)])).get_json()
    samples: list[tuple[int, int]] = []
    stop = threading.Event()
    queue_key = "items"

    def sample() -> None:
        while not stop.is_set():
            with stack.ctx.session_factory() as session:
                running = session.scalar(
                    select(func.count()).where(
                        Item.customer_id == big.customer_id, Item.status == ItemStatus.RUNNING
                    )
                )
            samples.append((int(running or 0), int(stack.ctx.redis.llen(queue_key))))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    time.sleep(1.5)
    submitted = time.monotonic()
    lone = small.submit(stack.upload_many(small, [document()])).get_json()
    lone_item = lone["items"][0]["id"]

    def lone_started() -> bool:
        with stack.ctx.session_factory() as session:
            return session.scalar(select(Item.started_at).where(Item.id == lone_item)) is not None

    wait_for(lone_started, 60, 0.05, "the small customer's item to start")
    time_to_start = time.monotonic() - submitted
    tenant_cancel = big.post(f"/v1/batches/{flood['id']}/cancel")
    assert tenant_cancel.status_code == 200
    stop.set()
    sampler.join()
    max_running = max(r for r, _ in samples)
    max_depth = max(d for _, d in samples)
    assert max_running <= 3, "the flood ran more items than its cap"
    assert max_depth <= 3 + 3, "the broker held more than the sum of the caps"
    assert time_to_start < 10
    report(
        b_time_to_start_s=time_to_start,
        a_max_running=max_running,
        a_cap=3,
        broker_depth_max=max_depth,
        sum_of_caps=6,
    )


def test_an_item_longer_than_its_lease_keeps_it(stack: Stack, report: Callable[..., None]) -> None:
    """The heartbeat renews the lease mid-page; without it the sweep would take the item back."""
    sleep = stack.settings.lease_seconds * 1.8
    stack.worker(concurrency=1, faults={"PAGELANE_FAULT_SLEEP": str(sleep)})
    stack.beat()
    tenant = stack.tenant("slow")
    batch = tenant.submit(stack.upload_many(tenant, [document()])).get_json()
    stack.wait_terminal(tenant, batch["id"], timeout=90)
    (item,) = stack.items(batch["id"])
    assert item.status == "succeeded" and item.attempts == 1
    check_books(stack, tenant, batch["id"])
    report(extraction_s=sleep, lease_s=stack.settings.lease_seconds, attempts=item.attempts)
