"""A live stack for integration and fault tests (loaded as a pytest plugin by tests/conftest.py):
the API in-process (Flask test client), real worker and beat subprocesses, Postgres, Redis and
moto's S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.api.app import create_app
from service.models import Item
from service.settings import Settings, load_settings
from tasks.context import TaskContext
from tests.api.conftest import Tenant
from tests.conftest import CORPUS, build_context, new_customer_key
from tests.support.stack import Proc, start_beat, start_worker, wait_for

TERMINAL = {"completed", "partially_failed", "failed", "cancelled"}


@dataclass
class Stack:
    settings: Settings
    ctx: TaskContext
    client: Any
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def tenant(self, name: str, **kwargs: Any) -> Tenant:
        customer_id, key = new_customer_key(self.ctx, name, **kwargs)
        return Tenant(self.client, customer_id, key)

    def upload_many(self, tenant: Tenant, documents: list[bytes]) -> list[str]:
        """Register through the API in bulk; put the bytes through the store (fast)."""
        from service.storage import input_key

        store = self.ctx.blob_store
        assert store is not None
        file_ids: list[str] = []
        for start in range(0, len(documents), 1000):
            chunk = documents[start : start + 1000]
            files = [{"size_bytes": max(1, len(d))} for d in chunk]
            body = tenant.post("/v1/files/bulk", {"files": files}).get_json()
            for created, data in zip(body["data"], chunk, strict=True):
                store.put(input_key(tenant.customer_id, created["id"]), data)
                file_ids.append(created["id"])
        return file_ids

    def items(self, batch_id: str) -> list[Item]:
        """The item rows, straight from the database (for assertions beyond the API)."""
        with self.ctx.session_factory() as session:
            return list(
                session.scalars(
                    select(Item).where(Item.batch_id == batch_id).order_by(Item.position)
                )
            )

    def worker(self, **kwargs: Any) -> Proc:
        proc = start_worker(self.settings, self.tmp, **kwargs)
        self.procs.append(proc)
        return proc

    def beat(self) -> Proc:
        proc = start_beat(self.settings, self.tmp)
        self.procs.append(proc)
        return proc

    def wait_terminal(self, tenant: Tenant, batch_id: str, timeout: float = 120) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            body = tenant.get(f"/v1/batches/{batch_id}?limit=1").get_json()
            return body if body["status"] in TERMINAL else None

        return wait_for(terminal, timeout, 0.3, f"batch {batch_id} to finish")

    def close(self) -> None:
        """Stop every process, then print the tail of its log.

        Printed in teardown, so pytest shows it only when the test failed: a fault test that
        times out in CI then says what its worker and beat were doing."""
        for proc in self.procs:
            proc.stop()
        for proc in self.procs:
            print(f"---- {' '.join(proc.argv[3:5])} (pid {proc.pid}) log tail ----")
            print(proc.log()[-12000:])
        self.ctx.close()


@pytest.fixture
def stack_settings(pg_s3_settings: Settings, flush_redis: None) -> Settings:
    """The production shape with short leases and bounds, so recoveries take seconds."""
    return load_settings(
        **{
            **pg_s3_settings.model_dump(),
            "lease_seconds": 6,
            "redispatch_after_seconds": 8,
            "ocr_retry_backoff_seconds": 0.5,
            "task_time_limit_seconds": 120,
            "visibility_timeout_seconds": 600,
        }
    )


@pytest.fixture
def stack(stack_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    ctx = build_context(stack_settings)
    app = create_app(stack_settings, context=ctx, dispatcher=ctx.dispatcher)
    live = Stack(stack_settings, ctx, app.test_client(), tmp_path)
    yield live
    live.close()


def corpus_bytes(name: str) -> bytes:
    return (CORPUS / name).read_bytes()
