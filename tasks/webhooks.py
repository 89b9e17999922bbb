"""Webhook delivery tasks, on their own queue (``webhooks``) and their own worker process, so a
slow receiver (up to the 10 s timeout) never holds a slot that extraction needs.

- ``tick`` (beat, every ``webhook_tick_seconds``): fan new events out into deliveries
  (service.webhooks.fan_out), then publish ``deliver`` for every (endpoint, batch) whose oldest
  pending delivery is due and not held by a sender.
- ``deliver(endpoint_id, batch_id)``: send that pair's deliveries one after another, in seq
  order, each under a lease (a sender killed mid-request leaves a lease that runs out; the next
  tick sends the delivery again: at least once, never lost), until one fails (it waits for its
  backoff) or none is due.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select

from service import events, webhooks
from service.clock import utcnow
from service.db import transaction
from service.models import DeliveryStatus, Event, WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from tasks.context import TaskContext

log = logging.getLogger("pagelane.webhooks")

# A sender stops after this long and leaves the rest to the next tick (fairness between pairs).
DELIVER_BUDGET_SECONDS = 60.0
USER_AGENT = "pagelane-webhooks/1"


@dataclass(frozen=True)
class Attempt:
    ok: bool
    response_code: int | None
    error: str | None


def tick(ctx: TaskContext, now: datetime, publish: Any) -> dict[str, int]:
    """Fan out, then publish a sender per due (endpoint, batch) pair."""
    postgres = ctx.engine.dialect.name == "postgresql"
    fanned = 0
    while True:
        with transaction(ctx.session_factory) as session:
            handled = webhooks.fan_out(session, utcnow(), skip_locked=postgres)
        fanned += handled
        if handled < webhooks.FAN_OUT_PAGE:
            break
    with ctx.session_factory() as session:
        groups = webhooks.due_groups(session, utcnow())
    for endpoint_id, batch_id in groups:
        publish(endpoint_id, batch_id)
    return {"events_fanned_out": fanned, "senders": len(groups)}


def deliver(ctx: TaskContext, endpoint_id: str, batch_id: str) -> dict[str, int]:
    settings = ctx.settings
    lease = settings.webhook_timeout_seconds * 3 + 5
    started = time.monotonic()
    counts = {"succeeded": 0, "failed_attempts": 0}
    while time.monotonic() - started < DELIVER_BUDGET_SECONDS:
        with transaction(ctx.session_factory) as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            if endpoint is None or endpoint.deleted_at is not None:
                pending = session.scalars(
                    select(WebhookDelivery.id).where(
                        WebhookDelivery.endpoint_id == endpoint_id,
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                    )
                ).all()
                webhooks.give_up(session, pending, "the endpoint was deleted", utcnow())
                return counts
            delivery = webhooks.claim_head(session, endpoint_id, batch_id, utcnow(), lease)
            if delivery is None:
                return counts
            event = session.get(Event, delivery.event_id)
            url, stored_secret = endpoint.url, endpoint.secret
            delivery_id, event_id = delivery.id, delivery.event_id
            body = events.event_body(event) if event is not None else None
        if body is None:  # deleted by retention meanwhile: nothing left to send
            with transaction(ctx.session_factory) as session:
                webhooks.give_up(session, [delivery_id], "the event is past retention", utcnow())
            continue
        secret = webhooks.open_secret(stored_secret, settings)
        attempt = send(url, secret, event_id, body, settings)
        with transaction(ctx.session_factory) as session:
            status = webhooks.record_attempt(
                session,
                delivery_id,
                ok=attempt.ok,
                response_code=attempt.response_code,
                error=attempt.error,
                now=utcnow(),
                settings=settings,
            )
        if attempt.ok:
            counts["succeeded"] += 1
        else:
            counts["failed_attempts"] += 1
            log.info(
                "webhook %s to %s failed: %s",
                event_id,
                endpoint_id,
                attempt.error or attempt.response_code,
            )
            if status == DeliveryStatus.PENDING:
                return counts  # it waits for its backoff, and its successors with it
    return counts


def send(url: str, secret: str, event_id: str, body: dict[str, Any], settings: Settings) -> Attempt:
    """One signed POST: the address checked, no redirects, ``webhook_timeout_seconds`` in all."""
    try:
        target = webhooks.check_url(url, allow_private=settings.webhook_allow_private)
    except webhooks.InvalidWebhookUrlError as exc:
        return Attempt(False, None, f"refused: {exc}")
    payload = json.dumps(body, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, event_id, timestamp, payload),
    }
    try:
        return asyncio.run(
            asyncio.wait_for(_post(target, headers, payload), settings.webhook_timeout_seconds)
        )
    except TimeoutError:
        return Attempt(False, None, f"no response within {settings.webhook_timeout_seconds:g} s")


async def _post(target: webhooks.Target, headers: dict[str, str], payload: bytes) -> Attempt:
    url, extensions = target.url, {}
    if target.address is not None:
        # Connect to the address that was checked, not to whatever a second lookup returns;
        # the Host header and TLS SNI (and certificate check) still use the name.
        parts = urlsplit(target.url)
        ip = f"[{target.address}]" if ":" in target.address else target.address
        netloc = f"{ip}:{target.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {**headers, "host": parts.netloc}
        extensions = {"sni_hostname": target.host}
    try:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST", url, content=payload, headers=headers, extensions=extensions
            )
            response = await client.send(request)
            peer = _peer_address(response)
            if target.address is not None and peer is not None and peer != target.address:
                return Attempt(False, None, f"refused: connected to {peer}, not {target.address}")
            await response.aclose()
    except httpx.HTTPError as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:500])
    return Attempt(200 <= response.status_code < 300, response.status_code, None)


def _peer_address(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    try:
        address = stream.get_extra_info("server_addr")
    except Exception:  # transports that do not expose it
        return None
    return str(address[0]) if address else None
