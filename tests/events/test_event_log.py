"""The event log: one event per committed change, numbered by the batch's change number."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service import lifecycle
from service.db import transaction
from service.events import events_after
from service.models import Event, ItemStatus
from tests.api.conftest import ApiEnv
from tests.api.test_batches import _uploaded, finish


def _events(env: ApiEnv, batch_id: str) -> list[Event]:
    with env.ctx.session_factory() as session:
        return list(
            session.scalars(select(Event).where(Event.batch_id == batch_id).order_by(Event.seq))
        )


def test_numbering_types_and_data_match_the_api(api_env: ApiEnv) -> None:
    alice = api_env.tenant("alice")
    batch = alice.submit(_uploaded(alice, 3)).get_json()
    items = [i["id"] for i in batch["items"]]
    finish(api_env.ctx, items[0], ItemStatus.RUNNING)
    finish(api_env.ctx, items[0], ItemStatus.RUNNING, pages_done=1, page_count=2)
    finish(api_env.ctx, items[0], ItemStatus.SUCCEEDED, result_key="k", pages_done=2)
    finish(api_env.ctx, items[1], ItemStatus.RUNNING)
    finish(api_env.ctx, items[1], ItemStatus.PENDING)  # a lost worker: no event, a gap
    finish(api_env.ctx, items[1], ItemStatus.RUNNING)
    finish(api_env.ctx, items[1], ItemStatus.FAILED, error_code="extraction_failed")
    cancelled = alice.post(f"/v1/batches/{batch['id']}/cancel").get_json()

    log = _events(api_env, batch["id"])
    assert [(e.seq, e.type) for e in log] == [
        (0, "batch.created"),
        (4, "item.started"),
        (5, "item.progress"),
        (6, "item.succeeded"),
        (7, "item.started"),
        (9, "item.started"),
        (10, "item.failed"),
        (10 + 2 + 1, "item.cancelled"),  # base + position + 1
        (10 + 3 + 1, "batch.completed"),  # base + total_items + 1
    ]
    assert log[0].data["status"] == "pending" and "items" not in log[0].data
    assert log[2].data["pages_done"] == 1
    assert log[-1].data == cancelled
    # every item event's data is what GET shows for the item once it stopped changing
    final = {
        i["id"]: i for i in alice.get(f"/v1/batches/{batch['id']}?limit=10").get_json()["items"]
    }
    for event in log:
        if event.type in ("item.succeeded", "item.failed", "item.cancelled"):
            assert event.data == final[event.data["id"]]
    assert len({e.id for e in log}) == len(log)


def test_a_rolled_back_change_leaves_no_event(api_env: ApiEnv) -> None:
    alice = api_env.tenant("alice")
    batch = alice.submit(_uploaded(alice, 1)).get_json()
    item_id = batch["items"][0]["id"]
    with pytest.raises(RuntimeError), transaction(api_env.ctx.session_factory) as session:
        lifecycle.move_item(
            session,
            batch_id=batch["id"],
            item_id=item_id,
            from_status=ItemStatus.PENDING,
            to_status=ItemStatus.RUNNING,
            now=lifecycle.utcnow(),
        )
        raise RuntimeError("the finish fails after the move")
    with (
        pytest.raises(lifecycle.ItemNotMovedError),
        transaction(api_env.ctx.session_factory) as session,
    ):
        lifecycle.move_item(
            session,
            batch_id=batch["id"],
            item_id=item_id,
            from_status=ItemStatus.RUNNING,  # it is not: nothing moves
            to_status=ItemStatus.SUCCEEDED,
            now=lifecycle.utcnow(),
        )
    assert [e.type for e in _events(api_env, batch["id"])] == ["batch.created"]
    with api_env.ctx.session_factory() as session:
        assert [r.seq for r in events_after(session, batch["id"], -1)] == [0]
        assert events_after(session, batch["id"], 0) == []
