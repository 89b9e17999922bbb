"""A throwaway stack for benchmarks: database, Redis db, blob store, the API in-process and
real worker processes: the integration tests' Stack, on its own database and Redis db."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis

from service.api.app import create_app
from service.db import make_engine
from service.migrate import upgrade
from service.settings import load_settings
from tests.conftest import build_context
from tests.corpus import CORPUS as CORPUS  # the benchmarks import it from here
from tests.support.live import Stack

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
# Its own Redis database (flushed at start); PAGELANE_BENCH_REDIS_URL moves it, so that a bench
# can run beside the suite or another bench.
REDIS_URL = os.environ.get("PAGELANE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


@contextmanager
def bench_stack(database: str, blobs: str, **overrides: Any) -> Iterator[Stack]:
    """``database``: "postgres" or "sqlite"; ``blobs``: "s3" (moto's server in its own
    process) or "local". Redis is the machine's."""
    tmp = Path(tempfile.mkdtemp(prefix="pagelane-bench-"))
    redis.Redis.from_url(REDIS_URL).flushdb()
    database_name = f"pagelane_bench_{uuid.uuid4().hex[:8]}"
    moto: subprocess.Popen[str] | None = None
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "data_dir": tmp / "data",
        "secret_key": "bench",
        "public_url": "http://bench.invalid",
        "submit_rate_limit": "1000000/minute",
        "lease_seconds": 30,
    }
    if database == "postgres":
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database_name}"')
        values["database_url"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database_name}"
    if blobs == "s3":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        moto = subprocess.Popen(
            [sys.executable, "-m", "tests.support.s3server"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert moto.stdout is not None
        values.update(
            blob_store="s3",
            s3_bucket="pagelane-bench",
            s3_endpoint_url=moto.stdout.readline().strip(),
        )
    else:
        values.update(blob_store="local")
    values.update(overrides)
    settings = load_settings(**values)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    ctx = build_context(settings)
    stack = Stack(
        settings,
        ctx,
        create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client(),
        tmp,
    )
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
