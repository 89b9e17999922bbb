"""The servers and values the storage tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import flask
import httpx
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from service.api.blobs import make_blobs_blueprint
from service.storage import BlobStore, LocalBlobStore
from tests.support.s3server import MotoServer

T = TypeVar("T")


class AdjustableClock:
    """Unix seconds that a test can move forward; real time otherwise."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class LocalBlobServer:
    store: LocalBlobStore
    base_url: str
    server: BaseWSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def start_local_blob_server(root: Path, clock: Callable[[], float]) -> LocalBlobServer:
    app = flask.Flask("pagelane-blob-test")
    # Bind first (port 0), so the store can be told its real public URL before serving.
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietRequestHandler)
    base_url = f"http://127.0.0.1:{server.server_port}"
    store = LocalBlobStore(root, public_url=base_url, secret_key="test-secret", clock=clock)
    store.ensure_ready()
    app.register_blueprint(make_blobs_blueprint(store))
    thread = threading.Thread(target=server.serve_forever, name="blob-server", daemon=True)
    thread.start()
    return LocalBlobServer(store=store, base_url=base_url, server=server, thread=thread)


@dataclass
class Backend:
    """One store under test, plus what a test needs around it."""

    name: str
    store: BlobStore
    http: httpx.Client
    clock: AdjustableClock
    prefix: str  # unique per test: tests never see each other's blobs
    moto: MotoServer | None = None

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def wait_for(condition: Callable[[], T], timeout: float = 5.0) -> T:
    """Poll ``condition`` until it returns something truthy (then return it) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.01)
