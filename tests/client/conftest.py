"""A live stack on loopback for the client: the real API served over HTTP, Postgres, Redis,
moto's S3 server (the SDK PUTs to its presigned URLs directly) and a real `pagelane worker`.

The stack is shared by the package (starting a worker costs seconds); the tests stay apart by
using one customer (one API key) each. It uses a Redis database of its own: the other suites'
fixtures flush theirs between tests, and a second test session running at the same time (its
workers consume the same queue names) must not take this one's task messages.

Requests can be answered by a :class:`FaultInjector` in front of the app instead of the app
itself, to make a server return 503 or lack an endpoint on cue.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from service.api.app import create_app
from service.context import ServiceContext
from service.models import Batch, File
from service.settings import Settings, load_settings
from tests.conftest import (
    CORPUS,
    TEST_BUCKET,
    build_context,
    new_customer_key,
    redis_url_for,
    truncate_all,
)
from tests.support.stack import REPO, Proc, start_worker

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# --- fault injection -----------------------------------------------------------------------------


@dataclass
class Fault:
    """Answer ``times`` requests matching ``method`` and ``path`` (a regex) with ``status``."""

    method: str
    path: str
    status: int
    body: bytes = b'{"error": "unavailable", "message": "injected by the test"}'
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None  # None: until removed
    hits: int = 0


class FaultInjector:
    """WSGI middleware: requests matching a fault get its canned answer; the rest go to the
    app. Every request's (method, path) is recorded."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults.remove(fault)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            self.requests.append((method, path))
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.method == method
                    and re.fullmatch(f.path, path)
                    and (f.times is None or f.hits < f.times)
                ),
                None,
            )
            if fault is not None:
                fault.hits += 1
        if fault is None:
            return self._app(environ, start_response)
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = [("Content-Type", "application/json"), *fault.headers.items()]
        start_response(f"{fault.status} Injected", headers)
        return [fault.body]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class ServedApp:
    url: str
    faults: FaultInjector
    server: BaseWSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def serve(app: WSGIApp) -> ServedApp:
    """Serve ``app`` over HTTP on a free loopback port, in a thread of this process."""
    faults = FaultInjector(app)
    server = make_server("127.0.0.1", 0, faults, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    return ServedApp(f"http://127.0.0.1:{server.server_port}", faults, server, thread)


# --- the live stack ------------------------------------------------------------------------------


@dataclass
class LiveStack:
    settings: Settings
    ctx: ServiceContext
    api: ServedApp
    s3: Any  # tests.support.s3server.MotoServer
    tmp: Path

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def faults(self) -> FaultInjector:
        return self.api.faults

    def customer(self, name: str, **kwargs: Any) -> Customer:
        customer_id, key = new_customer_key(self.ctx, f"{name}-{secrets.token_hex(3)}", **kwargs)
        return Customer(self, customer_id, key)

    def serve_variant(self, **overrides: Any) -> ServedApp:
        """Another API process image over the same database, Redis and S3, with different
        settings (a low rate limit, say). The caller stops it."""
        settings = load_settings(**{**self.settings.model_dump(), **overrides})
        return serve(create_app(settings, context=self.ctx, dispatcher=self.ctx.dispatcher))


@dataclass
class Customer:
    """One API key's view of the server, and counts of what the server did for it."""

    stack: LiveStack
    id: str
    key: str

    def env(self, api_url: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGELANE_", "EXTRACT_"))}
        env.update(
            PAGELANE_API_URL=api_url or self.stack.url,
            PAGELANE_API_KEY=self.key,
            PYTHONPATH=str(REPO),
        )
        return env

    def batch_count(self) -> int:
        return self._count(Batch)

    def file_count(self) -> int:
        return self._count(File)

    def _count(self, model: Any) -> int:
        with self.stack.ctx.session_factory() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(model).where(model.customer_id == self.id)
                )
                or 0
            )

    def s3_requests(self, method: str, kind: str) -> int:
        """Requests moto received for this customer's ``inputs`` or ``results`` objects."""
        prefix = f"/{TEST_BUCKET}/{self.id}/{kind}/"
        return sum(
            1
            for r in self.stack.s3.recorded_requests()
            if r.method == method and r.path.startswith(prefix)
        )


@pytest.fixture(scope="package")
def live_settings(
    postgres_url: str, redis_url: str, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    truncate_all(postgres_url)
    redis_url = redis_url_for("client")
    redis.Redis.from_url(redis_url).flushdb()
    return load_settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=postgres_url,
        redis_url=redis_url,
        secret_key="test-secret-" + secrets.token_hex(8),
        blob_store="s3",
        s3_bucket=TEST_BUCKET,
        s3_endpoint_url=s3_server.endpoint_url,
        lease_seconds=6,
        redispatch_after_seconds=8,
        task_time_limit_seconds=120,
        visibility_timeout_seconds=600,
    )


@pytest.fixture(scope="package")
def live(
    live_settings: Settings, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    """The API over HTTP and one worker (2 processes) for every test of the package."""
    ctx = build_context(live_settings)
    api = serve(create_app(live_settings, context=ctx, dispatcher=ctx.dispatcher))
    tmp = tmp_path_factory.mktemp("stack")
    # `quotes` too: `pagelane run --quote` and client.quotes need a worker that counts pages.
    worker: Proc = start_worker(live_settings, tmp, concurrency=2, queues="items,sweeps,quotes")
    stack = LiveStack(live_settings, ctx, api, s3_server, tmp)
    yield stack
    worker.stop()
    api.stop()
    ctx.close()


# --- inputs ------------------------------------------------------------------------------------


def copy_corpus(destination: Path, layout: dict[str, str]) -> Path:
    """Copy corpus files into ``destination``: ``layout`` maps relative path → corpus name."""
    for relative, name in layout.items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CORPUS / name, target)
    return destination


# --- the CLI as a subprocess -------------------------------------------------------------------


class CliProcess:
    """`python -m pagelane.cli ...` (the client commands of `pagelane`) with its output collected
    line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pagelane.cli", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A shell that runs the tests in the background leaves SIGINT ignored, and Python
            # keeps an ignored SIGINT ignored: restore it so Ctrl-C below reaches the CLI.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(
                    f"exited {self.process.returncode} before {what}:\n{self.output}"
                )
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.output}")

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self._reader.join(timeout=5)
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    process = CliProcess(args, env)
    code = process.finish(timeout)
    return code, process.output
