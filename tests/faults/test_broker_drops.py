"""T5: the workers' connections to Redis (broker and semaphores) drop repeatedly mid-batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import build_context
from tests.faults.test_workers import check_books, document
from tests.support.live import Stack
from tests.support.proxy import CuttableProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def proxied_stack(
    stack_settings: Settings, tmp_path: Path
) -> Iterator[tuple[Stack, CuttableProxy]]:
    target = urlsplit(stack_settings.redis_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    # Workers and beat reach Redis through the proxy; the API in this process does not.
    worker_settings = stack_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{proxy.port}{target.path}"}
    )
    ctx = build_context(stack_settings)
    live = Stack(
        worker_settings,
        ctx,
        create_app(stack_settings, context=ctx, dispatcher=ctx.dispatcher).test_client(),
        tmp_path,
    )
    yield live, proxy
    live.close()
    proxy.close()


def test_t5_broker_connection_drops_repeatedly(
    proxied_stack: tuple[Stack, CuttableProxy], report: Callable[..., Any]
) -> None:
    stack, proxy = proxied_stack
    stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "0.3"})
    stack.beat()
    tenant = stack.tenant("t5", concurrency=4)
    total = 30
    batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(total)])).get_json()
    cut_sockets = 0
    for _ in range(5):
        time.sleep(2.0)
        cut_sockets += proxy.cut()
    final = stack.wait_terminal(tenant, batch["id"], timeout=180)
    books = check_books(stack, tenant, batch["id"])
    items = stack.items(batch["id"])
    assert books["lost"] == 0 and final["counts"]["succeeded"] == total
    assert all(i.lease_token is None for i in items), "an item kept a lease after finishing"
    report(
        cuts=proxy.cuts,
        sockets_cut=cut_sockets,
        items=total,
        lost=0,
        billed_twice=0,
        retried=sum(i.attempts > 1 for i in items),
    )
