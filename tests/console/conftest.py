"""A real embedded stack for the console, and a real browser to drive it.

The API is served over HTTP on loopback (werkzeug, threaded) with the local blob store, so the
browser PUTs uploads to the API's own ``/blobs/`` URLs; two real `pagelane worker` processes
extract; Postgres and Redis are the machine's. The store's public URL names ``localhost`` while
the page is opened on ``127.0.0.1``: every upload is a cross-origin request, so the CORS answers
of ``/blobs/`` are exercised by the browser itself.

The browser is Debian's ``chromium`` driven by Playwright (``executable_path``: Playwright never
downloads a browser here). Screenshots of each page go to ``tests/console/artifacts/``
(git-ignored), named in the README.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from service.api.app import create_app
from service.settings import Settings, load_settings
from tasks.context import TaskContext
from tests.conftest import build_context, new_customer_key, redis_url_for, truncate_all
from tests.support.stack import Proc, free_port, start_worker

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROMIUM = os.environ.get("PAGELANE_TEST_CHROMIUM", "/usr/bin/chromium")
# Chromium's own background traffic is refused by this machine's closed network: keep it off.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class ConsoleStack:
    settings: Settings
    ctx: TaskContext
    url: str  # where the browser opens the console (127.0.0.1)
    server: BaseWSGIServer

    def customer(self, name: str, **kwargs: Any) -> tuple[str, str]:
        return new_customer_key(self.ctx, f"{name}-{secrets.token_hex(3)}", **kwargs)


@pytest.fixture(scope="package")
def console_stack(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleStack]:
    truncate_all(postgres_url)
    redis_url = redis_url_for("console")
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("console-data"),
        database_url=postgres_url,
        redis_url=redis_url,
        secret_key="test-secret-" + secrets.token_hex(8),
        blob_store="local",
        public_url=f"http://localhost:{port}",
        lease_seconds=10,
        redispatch_after_seconds=10,
        task_time_limit_seconds=120,
        visibility_timeout_seconds=600,
    )
    ctx = build_context(settings)
    app = create_app(settings, context=ctx, dispatcher=ctx.dispatcher)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="console-api", daemon=True)
    thread.start()
    worker: Proc = start_worker(settings, tmp_path_factory.mktemp("console-procs"), concurrency=2)
    yield ConsoleStack(settings, ctx, f"http://127.0.0.1:{port}", server)
    worker.stop()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    ctx.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make system-deps)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()
