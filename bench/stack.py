"""A throwaway stack for benchmarks: database, Redis db, blob store, the API in-process and
real worker processes. The same pieces the integration tests use, sized for measuring."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from service.app import create_app
from service.context import ServiceContext
from service.db import make_engine
from service.migrate import upgrade
from service.settings import Settings, load_settings
from service.uploads import input_key
from tests.api.conftest import Tenant
from tests.conftest import build_context, new_customer_key
from tests.support.stack import Proc, start_beat, start_worker

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
CORPUS = REPO.parent / "shared" / "corpus"


@dataclass
class BenchStack:
    settings: Settings
    ctx: ServiceContext
    client: Any
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def tenant(self, name: str, **kwargs: Any) -> Tenant:
        customer_id, key = new_customer_key(self.ctx, name, **kwargs)
        return Tenant(self.client, customer_id, key)

    def upload_many(self, tenant: Tenant, documents: list[bytes]) -> list[str]:
        store = self.ctx.blob_store
        assert store is not None
        file_ids: list[str] = []
        for start in range(0, len(documents), 1000):
            chunk = documents[start : start + 1000]
            body = tenant.post(
                "/v1/files/bulk", {"files": [{"size_bytes": len(d)} for d in chunk]}
            ).get_json()
            for created, data in zip(body["data"], chunk, strict=True):
                store.put(input_key(tenant.customer_id, created["id"]), data)
                file_ids.append(created["id"])
        return file_ids

    def workers(self, concurrency: int, **kwargs: Any) -> None:
        self.procs.append(start_worker(self.settings, self.tmp, concurrency=concurrency, **kwargs))
        self.procs.append(start_beat(self.settings, self.tmp))


@contextmanager
def bench_stack(database: str, blobs: str, **overrides: Any) -> Iterator[BenchStack]:
    """``database``: "postgres" or "sqlite"; ``blobs``: "s3" (moto's server in its own
    process) or "local". Redis is the machine's."""
    tmp = Path(tempfile.mkdtemp(prefix="pagelane-bench-"))
    redis.Redis.from_url(REDIS_URL).flushdb()
    database_name = f"pagelane_bench_{uuid.uuid4().hex[:8]}"
    moto: subprocess.Popen[str] | None = None
    values: dict[str, Any] = {
        "redis_url": REDIS_URL, "data_dir": tmp / "data", "secret_key": "bench",
        "public_url": "http://bench.invalid", "submit_rate_limit": "1000000/minute",
        "lease_seconds": 30,
    }
    if database == "postgres":
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database_name}"')
        values["database_url"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database_name}"
    if blobs == "s3":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        moto = subprocess.Popen([sys.executable, "-m", "tests.support.s3server"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert moto.stdout is not None
        values.update(blob_store="s3", s3_bucket="pagelane-bench",
                      s3_endpoint_url=moto.stdout.readline().strip())
    else:
        values.update(blob_store="local")
    values.update(overrides)
    settings = load_settings(**values)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    ctx = build_context(settings)
    stack = BenchStack(settings, ctx, create_app(settings, context=ctx).test_client(), tmp)
    try:
        yield stack
    finally:
        for proc in stack.procs:
            proc.stop()
        ctx.close()
        if moto is not None:
            moto.terminate()
        if database == "postgres":
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
