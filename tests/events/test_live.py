"""Events end to end with real worker, webhooks worker and beat processes, a real receiver on
loopback (allow-private on) and a real HTTP server for SSE.

The retry schedule is compressed (first retry after 1 s, at most 4 s apart) so that a receiver
down for 2 minutes costs the suite 2 minutes, not the hours of the production schedule.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from service.api.app import create_app
from service.models import Event
from service.settings import Settings, load_settings
from tests.conftest import build_context
from tests.support.live import Stack, corpus_bytes
from tests.support.stack import free_port, wait_for

DOWN_SECONDS = float(os.environ.get("PAGELANE_TEST_WEBHOOK_DOWN_SECONDS", "120"))
DOCS = [
    "digital-crazyones-1p.pdf",
    "digital-lorem-pdflatex-4p.pdf",
    "digital-two-column-latex-3p.pdf",
    "digital-french-minutes-2p.pdf",
    "digital-multilang-hello-world-1p.pdf",
]


class Receiver:
    """A webhook receiver on loopback that records what it gets (and can fail or stall)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.headers: dict[str, str] = {}  # sent with every answer (a redirect's Location)
        self.stall_seconds = 0.0
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests += 1
                if receiver.stall_seconds:
                    time.sleep(receiver.stall_seconds)
                if receiver.status < 300:
                    receiver.received.append((dict(self.headers.items()), body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            # A followed 301/302/303 arrives as a GET: counted like a POST.
            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def events_settings(stack_settings: Settings) -> Settings:
    return load_settings(
        **{
            **stack_settings.model_dump(),
            "webhook_allow_private": True,
            "webhook_backoff_seconds": 1.0,
            "webhook_backoff_max_seconds": 4.0,
            "webhook_timeout_seconds": 2.0,
            "webhook_tick_seconds": 0.5,
            "sse_keepalive_seconds": 2.0,
            "sse_max_stream_seconds": 20.0,
        }
    )


@pytest.fixture
def events_stack(events_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    ctx = build_context(events_settings)
    app = create_app(events_settings, context=ctx, dispatcher=ctx.dispatcher)
    live = Stack(events_settings, ctx, app.test_client(), tmp_path)
    live.app = app  # type: ignore[attr-defined]
    yield live
    live.close()


def _submit(stack: Stack, tenant: Any, copies: int = 1) -> str:
    file_ids = stack.upload_many(tenant, [corpus_bytes(n) for n in DOCS] * copies)
    response = tenant.submit(file_ids)
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["id"])


def _event_ids(stack: Stack, batch_id: str) -> list[tuple[int, str]]:
    with stack.ctx.session_factory() as session:
        return [
            (seq, event_id)
            for seq, event_id in session.execute(
                select(Event.seq, Event.id).where(Event.batch_id == batch_id).order_by(Event.seq)
            )
        ]


def _check_deliveries(receiver: Receiver, secret: str, expected: list[tuple[int, str]]) -> None:
    verifier = Webhook(secret)
    first_seen: list[tuple[int, str]] = []
    seen: set[str] = set()
    for headers, body in receiver.received:
        headers = {k.lower(): v for k, v in headers.items()}
        event = verifier.verify(body, headers)  # raises on a bad signature
        assert headers["webhook-id"] == event["id"]
        if event["id"] not in seen:
            seen.add(event["id"])
            first_seen.append((event["seq"], event["id"]))
    # every event, each first seen in seq order (duplicates are allowed: at least once)
    assert first_seen == expected


@pytest.mark.slow
@pytest.mark.timeout(DOWN_SECONDS + 240)
def test_receiver_down_for_two_minutes_then_everything_arrives_signed_in_order(
    events_stack: Stack, report: Any
) -> None:
    stack = events_stack
    receiver = Receiver(free_port())
    alice = stack.tenant("alice")
    endpoint = alice.post("/v1/webhook_endpoints", {"url": receiver.url}).get_json()
    stack.worker(concurrency=2)
    stack.worker(concurrency=2, queues="webhooks")
    stack.beat()
    batch_id = _submit(stack, alice)
    stack.wait_terminal(alice, batch_id)
    time.sleep(DOWN_SECONDS)
    deliveries = alice.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?limit=200")
    retried = [d for d in deliveries.get_json()["data"] if d["attempts"] >= 2]
    assert retried and all(d["status"] == "pending" for d in retried)
    receiver.start()
    started = time.monotonic()
    expected = _event_ids(stack, batch_id)
    try:
        wait_for(
            lambda: len({h["webhook-id"] for h, _ in receiver.received}) >= len(expected),
            120,
            message="every event delivered after the receiver came back",
        )
        _check_deliveries(receiver, endpoint["secret"], expected)
    finally:
        receiver.stop()
    report(
        events=len(expected),
        down_s=DOWN_SECONDS,
        caught_up_s=time.monotonic() - started,
        max_attempts=max(d["attempts"] for d in deliveries.get_json()["data"]),
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_of_the_delivering_worker_mid_retry_loses_nothing(events_stack: Stack) -> None:
    stack = events_stack
    receiver = Receiver(free_port())
    receiver.start()
    receiver.status = 503  # failing: deliveries go into retry
    alice = stack.tenant("alice")
    endpoint = alice.post("/v1/webhook_endpoints", {"url": receiver.url}).get_json()
    stack.worker(concurrency=2)
    sender = stack.worker(concurrency=2, queues="webhooks")
    stack.beat()
    batch_id = _submit(stack, alice)
    stack.wait_terminal(alice, batch_id)
    wait_for(lambda: receiver.requests >= 4, 60, message="deliveries retrying")
    # the next attempt hangs in the receiver: kill -9 the sender in the middle of it
    receiver.stall_seconds = 30
    receiver.status = 200
    before = receiver.requests
    wait_for(lambda: receiver.requests > before, 30, message="a request in flight")
    sender.kill()
    receiver.stall_seconds = 0
    stack.worker(concurrency=2, queues="webhooks")
    expected = _event_ids(stack, batch_id)
    try:
        wait_for(
            lambda: len({h["webhook-id"] for h, _ in receiver.received}) >= len(expected),
            120,
            message="every event delivered by the new sender",
        )
        _check_deliveries(receiver, endpoint["secret"], expected)
    finally:
        receiver.stop()


def _serve(app: Any) -> tuple[str, Any]:
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


def _read_events(
    base: str, key: str, batch_id: str, drop_every: int | None, out: list[tuple[int, str, str]]
) -> int:
    """Follow the stream to batch.completed; with ``drop_every``, hang up after every
    that-many events and resume with Last-Event-ID. Returns the connections made."""
    last: str | None = None
    connections = 0
    while True:
        connections += 1
        headers = {"X-API-KEY": key}
        if last is not None:
            headers["Last-Event-ID"] = last
        got = 0
        with httpx.stream(
            "GET", f"{base}/v1/batches/{batch_id}/events", headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            frame: dict[str, str] = {}
            for line in response.iter_lines():
                if line == "":
                    if "id" in frame:
                        event = json.loads(frame["data"])
                        out.append((int(frame["id"]), frame["event"], event["id"]))
                        last = frame["id"]
                        got += 1
                        if frame["event"] == "batch.completed":
                            return connections
                        if drop_every and got % drop_every == 0:
                            break  # hang up mid-stream
                    frame = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                frame[name] = value


@pytest.mark.timeout(300)
def test_sse_client_that_drops_every_7th_event_sees_exactly_the_uninterrupted_stream(
    events_stack: Stack, report: Any
) -> None:
    stack = events_stack
    base, server = _serve(stack.app)  # type: ignore[attr-defined]
    alice = stack.tenant("alice")
    try:
        stack.worker(concurrency=2)
        stack.beat()
        batch_id = _submit(stack, alice, copies=1)
        whole: list[tuple[int, str, str]] = []
        dropped: list[tuple[int, str, str]] = []
        threads = [
            threading.Thread(target=_read_events, args=(base, alice.key, batch_id, None, whole)),
            threading.Thread(target=_read_events, args=(base, alice.key, batch_id, 7, dropped)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert whole and whole[-1][1] == "batch.completed"
        assert dropped == whole
        assert [seq for seq, _, _ in whole] == sorted({seq for seq, _, _ in whole})
        assert [(s, e) for s, e in _event_ids(stack, batch_id)] == [(s, i) for s, _, i in whole]
        types = {t for _, t, _ in whole}
        assert {"batch.created", "item.started", "item.succeeded", "batch.completed"} <= types
        report(events=len(whole), progress_events=sum(t == "item.progress" for _, t, _ in whole))
    finally:
        server.shutdown()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", [302, 307])
def test_a_receiver_that_redirects_to_loopback_is_not_followed(
    events_stack: Stack, code: int
) -> None:
    """SPEC: redirects are never followed. The redirect points at loopback (where a follow
    would reach a private service); allow-private is on only so that the redirecting receiver
    itself, also on loopback, can be registered. 307 keeps the POST and its body if followed,
    302 turns into a GET: both count at the target."""
    stack = events_stack
    target = Receiver(free_port())
    target.start()
    redirector = Receiver(free_port())
    redirector.status = code
    redirector.headers = {"Location": target.url}
    redirector.start()
    alice = stack.tenant("alice")
    endpoint = alice.post("/v1/webhook_endpoints", {"url": redirector.url}).get_json()
    stack.worker(concurrency=1, queues="webhooks")
    stack.beat()
    try:
        _submit(stack, alice)  # batch.created is enough: no extraction worker runs
        wait_for(
            lambda: redirector.requests >= 3 or target.requests,
            60,
            message="three attempts at the redirector",
        )
        assert target.requests == 0, "the redirect was followed"
        deliveries = alice.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").get_json()
        created = [d for d in deliveries["data"] if d["event_type"] == "batch.created"]
        assert len(created) == 1
        # a failed attempt, retried with backoff: never counted as delivered
        assert created[0]["status"] == "pending"
        assert created[0]["attempts"] >= 2
        assert created[0]["response_code"] == code
        assert created[0]["last_error"] == f"HTTP {code}"
        assert created[0]["completed_at"] is None
    finally:
        redirector.stop()
        target.stop()


@pytest.mark.timeout(180)
def test_sse_carries_page_progress_in_order_between_started_and_succeeded(
    events_stack: Stack,
) -> None:
    """A 4-page scan takes a few seconds of OCR (about 2 s a page); the lease keeper publishes
    pages_done every quarter lease (1.5 s with the stack's 6 s lease), and each change must
    reach the stream as item.progress, in order, between the item's started and succeeded."""
    stack = events_stack
    base, server = _serve(stack.app)  # type: ignore[attr-defined]
    alice = stack.tenant("alice")
    try:
        stack.worker(concurrency=1)
        stack.beat()
        (file_id,) = stack.upload_many(alice, [corpus_bytes("scan-four-orientations-4p.pdf")])
        response = alice.submit([file_id])
        assert response.status_code == 200, response.get_json()
        batch_id = response.get_json()["id"]
        frames: list[tuple[int, str, str]] = []
        _read_events(base, alice.key, batch_id, None, frames)
        with stack.ctx.session_factory() as session:
            data = {
                seq: event_data
                for seq, event_data in session.execute(
                    select(Event.seq, Event.data).where(Event.batch_id == batch_id)
                )
            }
    finally:
        server.shutdown()
    types = [event_type for _, event_type, _ in frames]
    assert types[0] == "batch.created" and types[-1] == "batch.completed"
    item_types = types[1:-1]
    assert item_types[0] == "item.started" and item_types[-1] == "item.succeeded"
    assert set(item_types[1:-1]) == {"item.progress"}, item_types
    assert len(item_types) - 2 >= 2, "at least two page-progress events"
    progress = [data[seq]["pages_done"] for seq, t, _ in frames if t == "item.progress"]
    assert progress == sorted(set(progress)) and progress[0] > 0 and progress[-1] <= 4
    assert all(data[seq]["page_count"] == 4 for seq, t, _ in frames if t == "item.progress")
    assert data[frames[-2][0]]["pages_done"] == 4
