"""A Hypothesis state machine over the item lifecycle, on the real code and real Postgres.

Rules drive the same functions the API, workers and sweeps use (submit, admit, claim,
succeed, fail, transient failure, cancel, lease expiry, stale finishes by a worker that lost
its lease) in any order; after every step the invariants are checked against the database:
terminal states are absorbing, counters match the rows, cancelled items are never billed,
billed pages equal the page counts of succeeded items, and nothing stays reserved for an item
that is not running.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select

from service import lifecycle
from service.api.app import create_app
from service.clock import utcnow
from service.db import transaction
from service.models import Batch, BillingEntry, Customer, Item, ItemStatus
from service.settings import Settings
from tasks import sweeps
from tasks.context import TaskContext
from tasks.items import Claim, Failure, _fail, _reserve, _succeed, claim_item
from tests.api.conftest import PDF_BYTES, Tenant
from tests.conftest import build_context, new_customer_key, truncate_all

TERMINAL = {ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED}


class ItemLifecycle(RuleBasedStateMachine):
    ctx: TaskContext
    tenant: Tenant

    def __init__(self) -> None:
        super().__init__()
        truncate_all(self.ctx.settings.resolved_database_url)
        self.ctx.redis.flushdb()
        customer_id, key = new_customer_key(self.ctx, "prop", quota=40, concurrency=3)
        self.tenant = Tenant(self.tenant.client, customer_id, key)
        self.file_ids = [self.tenant.upload(PDF_BYTES + bytes([n])) for n in range(3)]
        self.batches: list[str] = []
        self.claims: list[Claim] = []
        self.stale_claims: list[Claim] = []
        self.terminal_seen: dict[str, str] = {}
        self.clock_offset = timedelta(0)

    # --- rules -----------------------------------------------------------------------------

    @rule(size=st.integers(1, 3))
    def submit(self, size: int) -> None:
        response = self.tenant.submit(self.file_ids[:size])
        assert response.status_code in (200, 402)
        if response.status_code == 200:
            self.batches.append(response.get_json()["id"])

    @rule()
    def admit(self) -> None:
        self.ctx.dispatcher.admit(self.tenant.customer_id)

    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        with self.ctx.session_factory() as session:
            admitted = list(
                session.scalars(
                    select(Item.id).where(
                        Item.status == ItemStatus.PENDING, Item.admitted_at.is_not(None)
                    )
                )
            )
        if admitted:
            claimed = claim_item(self.ctx, data.draw(st.sampled_from(admitted)))
            if claimed is not None:
                self.claims.append(claimed)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), pages=st.integers(1, 9))
    def succeed(self, data: st.DataObject, pages: int) -> None:
        claimed = self.claims.pop(data.draw(st.integers(0, len(self.claims) - 1)))
        reserved = _reserved(self.ctx, claimed, pages)
        key = f"{claimed.customer_id}/results/x.json"
        _succeed(self.ctx, claimed, key, pages, pages, reserved, "0" * 64)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), transient=st.booleans())
    def fail(self, data: st.DataObject, transient: bool) -> None:
        claimed = self.claims.pop(data.draw(st.integers(0, len(self.claims) - 1)))
        reserved = _reserved(self.ctx, claimed, 2)
        code = "ocr_provider_error" if transient else "extraction_failed"
        _fail(self.ctx, claimed, Failure(code, "injected", transient), reserved)

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        batch_id = data.draw(st.sampled_from(self.batches))
        with transaction(self.ctx.session_factory) as session:
            lifecycle.cancel_batch(session, batch_id)  # returns (batch, cancelled)

    @rule()
    def leases_run_out(self) -> None:
        """Every running item's worker is presumed dead; its claim becomes stale."""
        self.clock_offset += timedelta(seconds=self.ctx.settings.lease_seconds + 1)
        sweeps.requeue_stale_items(self.ctx, utcnow() + self.clock_offset)
        self.stale_claims += self.claims
        self.claims = []

    @precondition(lambda self: self.stale_claims)
    @rule(data=st.data())
    def stale_worker_finishes(self, data: st.DataObject) -> None:
        """A worker that lost its lease tries to finish: it must change nothing."""
        claimed = data.draw(st.sampled_from(self.stale_claims))
        before = _snapshot(self.ctx, claimed.item_id)
        outcome = _succeed(self.ctx, claimed, "stale.json", 5, 5, 5, "0" * 64)
        if before["lease_token"] != claimed.lease_token or before["status"] != "running":
            assert outcome == "lease_lost"
            assert _snapshot(self.ctx, claimed.item_id) == before

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        with self.ctx.session_factory() as session:
            items = list(session.scalars(select(Item)))
            batches = {b.id: b for b in session.scalars(select(Batch))}
            billed = dict(session.execute(select(BillingEntry.id, BillingEntry.pages)).all())
            customer = session.get(Customer, self.tenant.customer_id)
            assert customer is not None
        for item in items:
            if item.id in self.terminal_seen:
                assert item.status == self.terminal_seen[item.id], "terminal state changed"
            elif item.status in TERMINAL:
                self.terminal_seen[item.id] = item.status
            if item.status == ItemStatus.CANCELLED:
                assert item.id not in billed, "a cancelled item was billed"
            if item.status != ItemStatus.RUNNING:
                assert item.pages_reserved == 0, "a reservation outlived its run"
        succeeded = {i.id: i.page_count for i in items if i.status == ItemStatus.SUCCEEDED}
        assert billed == succeeded, "billing rows != succeeded items"
        assert customer.pages_used == sum(billed.values())
        assert customer.pages_reserved == sum(i.pages_reserved for i in items)
        for batch in batches.values():
            mine = [i for i in items if i.batch_id == batch.id]
            for status in ItemStatus:
                counted = getattr(batch, f"count_{status.value}")
                assert counted == sum(i.status == status for i in mine), (batch.id, status)
            assert batch.pages_billed == sum(billed.get(i.id, 0) for i in mine)
            all_terminal = all(i.status in TERMINAL for i in mine)
            assert (batch.completed_at is not None) == all_terminal
            seqs = [i.change_seq for i in mine]
            assert len(set(seqs)) == len(seqs) and max(seqs) <= batch.change_seq


def _reserved(ctx: TaskContext, claimed: Claim, pages: int) -> int:
    """What the worker does between claim and extraction: the pages it holds afterwards."""
    return pages if _reserve(ctx, claimed, pages) == "reserved" else 0


def _snapshot(ctx: TaskContext, item_id: str) -> dict[str, Any]:
    with ctx.session_factory() as session:
        item = session.get(Item, item_id)
        assert item is not None
        billed = session.scalar(select(func.count()).where(BillingEntry.id == item_id))
        return {
            "status": item.status,
            "lease_token": item.lease_token,
            "change_seq": item.change_seq,
            "billed": billed,
        }


@pytest.fixture
def lifecycle_env(pg_s3_settings: Settings, flush_redis: None) -> Iterator[TaskContext]:
    ctx = build_context(pg_s3_settings)
    ctx.dispatcher.publish = lambda item_id: None  # no workers: the machine plays them
    yield ctx
    ctx.close()


def test_item_lifecycle_state_machine(lifecycle_env: TaskContext) -> None:
    ItemLifecycle.ctx = lifecycle_env
    client = create_app(
        lifecycle_env.settings, context=lifecycle_env, dispatcher=lifecycle_env.dispatcher
    ).test_client()
    ItemLifecycle.tenant = Tenant(client, "", "")
    runner = ItemLifecycle.TestCase()
    runner.settings = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    runner.runTest()
