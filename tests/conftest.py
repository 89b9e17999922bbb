"""Shared fixtures: real Postgres, real Redis, moto's S3 server on loopback.

Nothing here skips when a service is missing: a missing Postgres or Redis is a failed run, not
a green one. `.ci/run` starts them when they are not running.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import text

from service.auth import create_api_key, get_or_create_customer
from service.db import make_engine, transaction
from service.migrate import upgrade
from service.settings import Settings, load_settings
from tasks.app import make_celery
from tasks.context import TaskContext, make_task_context
from tests.corpus import CORPUS as CORPUS  # the suite imports it from here

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_DSN = os.environ.get(
    "PAGELANE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
# Each test process (the suite runs in parallel under pytest-xdist) has Redis databases of its
# own, one per package that keeps long-lived workers: suites flush their database between tests,
# and a worker of one process would take another's task messages. PAGELANE_TEST_REDIS_URL names
# the server and, for a single process (or xdist's first), the main database.
_REDIS_DATABASES = [  # (main, console, client) for process gw0, gw1, ...
    (11, 13, 14),
    (8, 9, 10),
    (5, 6, 7),
    (2, 3, 4),
]
_REDIS_ROLES = ("main", "console", "client")


def redis_url_for(role: str = "main") -> str:
    """The Redis URL this test process uses for ``role`` ("main", "console" or "client")."""
    configured = os.environ.get("PAGELANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    server, _, configured_db = configured.rpartition("/")
    process = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    if process >= len(_REDIS_DATABASES):
        raise RuntimeError(f"at most {len(_REDIS_DATABASES)} parallel test processes (pytest -n)")
    databases = dict(zip(_REDIS_ROLES, _REDIS_DATABASES[process], strict=True))
    if process == 0:
        databases["main"] = int(configured_db or 0)
    return f"{server}/{databases[role]}"


REDIS_TEST_URL = redis_url_for()
TEST_BUCKET = "pagelane-test"

pytest_plugins = ["tests.support.live"]


# Packages whose tests share one long-lived stack (package-scoped workers, a browser): under
# pytest-xdist's --dist loadgroup each runs whole in one test process, so each stack starts once.
_SHARED_STACK_PACKAGES = ("client", "console")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        package = item.path.relative_to(tests_dir).parts[0]
        if package in _SHARED_STACK_PACKAGES:
            item.add_marker(pytest.mark.xdist_group(package))
    if os.environ.get("PAGELANE_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="PAGELANE_SKIP_SLOW=1 (CI runs these)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a test's figures; they are printed together at the end of the run."""

    def add(**figures: Any) -> None:
        text = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
        request.config.stash.setdefault(FIGURES, []).append(f"{request.node.name}: {text}")

    return add


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("figures reported by the tests")
        for line in lines:
            terminalreporter.line(line)


# --- services ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, migrated to head."""
    name = f"pagelane_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
    url = f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
    engine = make_engine(load_settings(database_url=url, secret_key="x"))
    upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.ping()
    client.close()
    return REDIS_TEST_URL


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    from tests.support.s3server import start_moto_server

    server = start_moto_server()
    yield server
    server.stop()


def truncate_all(database_url: str) -> None:
    engine = make_engine(load_settings(database_url=database_url, secret_key="x"))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text(
                    "TRUNCATE billing_entries, idempotency_keys, items, batches, files, api_keys, "
                    # CASCADE: and every table that references these (quotes, ...)
                    "customers CASCADE"
                )
            )
    engine.dispose()


# --- settings and contexts -----------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "redis_url": redis_url,
            "secret_key": "test-secret-" + secrets.token_hex(8),
            "public_url": "http://pagelane.test",
        }
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def pg_s3_settings(
    make_settings: Callable[..., Settings], postgres_url: str, s3_server: Any
) -> Settings:
    """The production shape: Postgres, Redis, S3 (moto)."""
    truncate_all(postgres_url)
    return make_settings(
        database_url=postgres_url,
        blob_store="s3",
        s3_bucket=TEST_BUCKET,
        s3_endpoint_url=s3_server.endpoint_url,
    )


@pytest.fixture
def sqlite_local_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    """The embedded shape: SQLite file, local blobs."""
    settings = make_settings(blob_store="local")
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def flush_redis(redis_url: str) -> Iterator[None]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield
    client.close()


def build_context(settings: Settings) -> TaskContext:
    """What task code and tests that drive it directly need: the core plus the dispatcher (it
    publishes to Redis), built like a worker process's."""
    ctx = make_task_context(settings, make_celery(settings))
    if ctx.blob_store is not None:
        ctx.blob_store.ensure_ready()
    return ctx


def new_customer_key(
    ctx: TaskContext, name: str, *, quota: int | None = None, concurrency: int | None = None
) -> tuple[str, str]:
    """(customer_id, clear key) for a new customer."""
    with transaction(ctx.session_factory) as session:
        customer = get_or_create_customer(
            session,
            name,
            default_concurrency=ctx.settings.default_concurrency,
            quota_pages=quota,
            concurrency=concurrency,
        )
        _, key = create_api_key(session, customer)
        return customer.id, key


def put_upload(
    upload: dict[str, Any],
    data: bytes,
    flask_client: Any = None,
    public_url: str = "http://pagelane.test",
) -> int:
    """PUT bytes to a presigned upload, over real HTTP (S3) or through the app (local store)."""
    url, headers = upload["url"], upload["headers"]
    if url.startswith(public_url) and flask_client is not None:
        response = flask_client.put(url[len(public_url) :], data=data, headers=headers)
        return int(response.status_code)
    return httpx.put(url, content=data, headers=headers, timeout=30).status_code
