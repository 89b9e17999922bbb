"""The SDK's event stream (sync and async) against the live stack's SSE, its resumption after
dropped connections, and the webhook signature verifier against the reference library."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from pagelane import ApiError, AsyncClient, Client, FileSpec, RetryPolicy
from pagelane.webhooks import WebhookVerificationError, verify
from service.events import event_body, events_after
from tests.client.conftest import Customer, LiveStack
from tests.conftest import CORPUS
from tests.support.stack import free_port

DOCS = [CORPUS / "digital-crazyones-1p.pdf", CORPUS / "digital-lorem-pdflatex-4p.pdf"]
POLICY = RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.2)


def submit(client: Client, paths: list[Any] = DOCS) -> str:
    files = client.files.create_many([FileSpec.from_path(p) for p in paths])
    for file, path in zip(files, paths, strict=True):
        client.files.upload(file, path)
    return client.batches.create([f.id for f in files], options={"ocr": "never"}).id


def server_events(live: LiveStack, batch_id: str) -> list[dict[str, Any]]:
    with live.ctx.session_factory() as session:
        return [event_body(row) for row in events_after(session, batch_id, -1, 10_000)]


class ByteCapProxy:
    """A loopback TCP proxy that cuts each connection after the server sent it ``cap`` bytes
    (the cap grows by ``step`` per connection, so the cuts fall at different places in the
    stream: inside headers, events and the blank lines between them)."""

    def __init__(self, target_port: int, cap: int, step: int = 211) -> None:
        self.target = ("127.0.0.1", target_port)
        self.cap, self.step = cap, step
        self.port = free_port()
        self.connections = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
            cap = self.cap + self.step * self.connections
            self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, cap), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, cap: int | None) -> None:
        sent = 0
        try:
            while chunk := source.recv(65536):
                if cap is not None and sent + len(chunk) >= cap:
                    sink.sendall(chunk[: cap - sent])
                    self.cuts += 1
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def customer(live: LiveStack) -> Customer:
    return live.customer("events")


def test_sync_stream_follows_a_running_batch_to_batch_completed(
    live: LiveStack, customer: Customer
) -> None:
    with Client(customer.key, live.url, retry=POLICY) as client:
        batch_id = submit(client)
        stream = client.batches.events(batch_id)
        seen = list(stream)
    expected = server_events(live, batch_id)
    assert [e.model_dump(exclude={"object"}) for e in seen] == [
        {k: v for k, v in e.items() if k != "object"} for e in expected
    ]
    types = [e.type for e in seen]
    assert types[0] == "batch.created" and types[-1] == "batch.completed"
    assert types.count("item.succeeded") == 2
    assert seen[-1].batch is not None and seen[-1].batch.status == "completed"
    assert all(e.item is not None for e in seen if e.type.startswith("item."))
    assert stream.last_id == seen[-1].seq


def test_async_stream_resumes_after_a_seq(live: LiveStack, customer: Customer) -> None:
    with Client(customer.key, live.url) as client:
        batch_id = submit(client)
        client.batches.wait(batch_id, poll_interval=0.2, timeout=120)
    expected = [e["seq"] for e in server_events(live, batch_id)]

    async def main() -> tuple[list[int], list[int], list[int]]:
        async with AsyncClient(customer.key, live.url, retry=POLICY) as client:
            everything = [e.seq async for e in client.batches.events(batch_id)]
            rest = [e.seq async for e in client.batches.events(batch_id, after=expected[2])]
            # After batch.completed: nothing, at once.
            none = [e.seq async for e in client.batches.events(batch_id, after=expected[-1])]
            return everything, rest, none

    everything, rest, none = asyncio.run(asyncio.wait_for(main(), 60))
    assert everything == expected
    assert rest == expected[3:]
    assert none == []


def test_stream_errors_are_api_errors(live: LiveStack, customer: Customer) -> None:
    with Client(customer.key, live.url, retry=POLICY) as client:
        with pytest.raises(ApiError) as missing:
            list(client.batches.events("batch_doesnotexist"))
        assert missing.value.status == 404
    with Client("pl_wrong_" + secrets.token_hex(8), live.url, retry=POLICY) as client:
        with pytest.raises(ApiError) as unauthorized:
            list(client.batches.events("batch_doesnotexist"))
        assert unauthorized.value.status == 401


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_stream_reconnects_after_cut_connections_and_sees_every_event_once(
    live: LiveStack, customer: Customer, flavour: str
) -> None:
    with Client(customer.key, live.url) as client:
        batch_id = submit(client)
        client.batches.wait(batch_id, poll_interval=0.2, timeout=120)
    expected = server_events(live, batch_id)
    proxy = ByteCapProxy(int(live.url.rsplit(":", 1)[1]), cap=900)
    try:
        if flavour == "sync":
            with Client(customer.key, proxy.url, retry=POLICY) as client:
                stream = client.batches.events(batch_id)
                seen = [e.seq for e in stream]
        else:

            async def main() -> tuple[list[int], Any]:
                async with AsyncClient(customer.key, proxy.url, retry=POLICY) as client:
                    stream = client.batches.events(batch_id)
                    return [e.seq async for e in stream], stream

            seen, stream = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        proxy.close()
    assert seen == [e["seq"] for e in expected]
    assert proxy.cuts >= 2 and stream.reconnects >= 2


def test_sync_stream_survives_cuts_while_the_batch_runs(
    live: LiveStack, customer: Customer
) -> None:
    """Cuts while events are still being written: the stream waits for new ones, is cut,
    resumes, and still ends with exactly the server's events."""
    with Client(customer.key, live.url) as client:
        batch_id = submit(client, [*DOCS, CORPUS / "digital-two-column-latex-3p.pdf"])
    proxy = ByteCapProxy(int(live.url.rsplit(":", 1)[1]), cap=1200, step=97)
    try:
        with Client(customer.key, proxy.url, retry=POLICY) as client:
            seen = [e.seq for e in client.batches.events(batch_id)]
    finally:
        proxy.close()
    assert seen == [e["seq"] for e in server_events(live, batch_id)]
    assert len(seen) == len(set(seen))


# --- webhooks.verify ---------------------------------------------------------------------------


def signed(secret: str, body: bytes, *, at: datetime | None = None) -> dict[str, str]:
    when = at or datetime.now(tz=UTC)
    msg_id = "evt_" + secrets.token_hex(6)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def test_verify_accepts_what_the_reference_library_signs() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    body = json.dumps({"id": "evt_1", "type": "item.succeeded", "seq": 4}).encode()
    headers = signed(secret, body)
    assert verify(secret, body, headers) == json.loads(body)
    # Header names in any case; several signatures (a rotated secret), one matching.
    other = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    mixed = {k.title(): v for k, v in headers.items()}
    mixed["Webhook-Signature"] = (
        signed(other, body)["webhook-signature"] + " " + headers["webhook-signature"]
    )
    mixed["Webhook-Id"] = headers["webhook-id"]
    # The extra signature was made for another id: only the reference one matches.
    assert verify(secret, body, mixed)["seq"] == 4
    # The reference library agrees with the same inputs.
    Webhook(secret).verify(body, headers)


def test_verify_refuses_tampering_old_timestamps_and_wrong_secrets() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    body = b'{"id":"evt_1","type":"batch.completed"}'
    headers = signed(secret, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, body.replace(b"completed", b"created"), headers)
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(), body, headers)
    old = datetime.fromtimestamp(time.time() - 600, tz=UTC)
    with pytest.raises(WebhookVerificationError):
        verify(secret, body, signed(secret, body, at=old))
    assert verify(secret, body, signed(secret, body, at=old), tolerance=900)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        verify(secret, body, {**headers, "webhook-id": "evt_other"})
    with pytest.raises(WebhookVerificationError):
        verify(secret, body, {k: v for k, v in headers.items() if k != "webhook-signature"})
    with pytest.raises(WebhookVerificationError):
        verify(secret, body, {**headers, "webhook-signature": "v2," + "A" * 44})
