"""Webhooks: endpoints, their secrets, the fan-out of events into deliveries, and the rules a
sender follows (order, backoff, SSRF). The HTTP sending itself is tasks/webhooks.py.

- **Fan-out.** Events are written on the workers' hot path with ``fanned_out = false``; a beat
  tick turns them into one delivery row per matching endpoint and marks them. Nothing is lost
  between the two: the flag is in the database, and a tick that dies rolls back.
- **Order.** Per endpoint and batch, deliveries are sent in seq order: only the oldest pending
  delivery of an (endpoint, batch) is ever sent (the head), and a sender moves on to the next
  only once the head succeeded or was given up. Different batches and endpoints run in parallel.
- **Backoff.** A failed attempt (no 2xx within the timeout, a refused address, a redirect) is
  retried after ``backoff * 2**(attempts-1)`` seconds (at most ``backoff_max``), scaled by a
  random factor in [0.5, 1] (jitter); once ``retry_hours`` have passed since the delivery was
  created, and at least 8 attempts were made, it is marked failed and the next one goes.
- **SSRF.** A URL's host is resolved and every address checked (loopback, private, link-local,
  multicast, reserved and unspecified are refused) at registration and again at each send, and
  the sender connects to the address it checked (no second resolution a rebinding DNS could
  answer differently); redirects are never followed. ``PAGELANE_WEBHOOK_ALLOW_PRIVATE=1``
  lifts the address check and allows plain http (the embedded mode, tests).
- **Secrets** are stored so they can sign: encrypted (Fernet) with a key derived from
  ``PAGELANE_SECRET_KEY`` when that is set, else in clear (``plain:``); the API shows a secret
  once, at creation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from service.clock import isoformat
from service.ids import new_id
from service.models import DeliveryStatus, Event, WebhookDelivery, WebhookEndpoint
from service.settings import Settings

MIN_ATTEMPTS = 8
FAN_OUT_PAGE = 1000


class InvalidWebhookUrlError(ValueError):
    """The URL is not one deliveries may be sent to; the message says why."""


# --- secrets and signatures (Standard Webhooks) --------------------------------------------------


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _fernet(settings: Settings) -> Fernet | None:
    if not settings.secret_key:
        return None
    digest = hashlib.sha256(b"pagelane-webhook-secrets:" + settings.secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal_secret(secret: str, settings: Settings) -> str:
    fernet = _fernet(settings)
    if fernet is None:
        return "plain:" + secret
    return "fernet:" + fernet.encrypt(secret.encode()).decode()


def open_secret(stored: str, settings: Settings) -> str:
    scheme, _, value = stored.partition(":")
    if scheme == "plain":
        return value
    fernet = _fernet(settings)
    if fernet is None:
        raise RuntimeError("webhook secrets are encrypted: PAGELANE_SECRET_KEY is needed")
    return fernet.decrypt(value.encode()).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: v1,<base64 HMAC-SHA256 of "id.timestamp.body">."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- SSRF ----------------------------------------------------------------------------------------


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL, and the address checked for it (None: allow-private,
    the system resolver decides)."""

    url: str
    host: str
    port: int
    address: str | None


def check_url(url: str, *, allow_private: bool) -> Target:
    """Resolve ``url``'s host and check it may receive deliveries; raises
    :class:`InvalidWebhookUrlError`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrlError(f"not a URL: {exc}") from exc
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise InvalidWebhookUrlError(
            "the URL must be https" + ("" if allow_private else " (http needs allow-private)")
        )
    if not parts.hostname:
        raise InvalidWebhookUrlError("the URL has no host")
    if parts.username or parts.password:
        raise InvalidWebhookUrlError("credentials in the URL are not allowed")
    if len(url) > 2048:
        raise InvalidWebhookUrlError("the URL is longer than 2048 characters")
    port = port or (443 if parts.scheme == "https" else 80)
    if allow_private:
        return Target(url, parts.hostname, port, None)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidWebhookUrlError(f"the host {parts.hostname} does not resolve") from exc
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not address_allowed(a)]
    if not addresses or refused:
        raise InvalidWebhookUrlError(
            f"the host {parts.hostname} resolves to a non-public address ({', '.join(refused)})"
        )
    return Target(url, parts.hostname, port, addresses[0])


# --- backoff -------------------------------------------------------------------------------------


def next_attempt_delay(attempts: int, settings: Settings) -> float:
    """Seconds before attempt ``attempts + 1`` (exponential, capped, jittered)."""
    delay = min(
        settings.webhook_backoff_max_seconds,
        settings.webhook_backoff_seconds * 2 ** max(0, attempts - 1),
    )
    return delay * random.uniform(0.5, 1.0)


# --- fan-out -------------------------------------------------------------------------------------


def endpoint_wants(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return endpoint.events is None or event_type in endpoint.events


def fan_out(session: Session, now: datetime, *, skip_locked: bool) -> int:
    """Deliveries for events not fanned out yet (one page); returns the events handled."""
    statement = (
        select(Event.id, Event.customer_id, Event.batch_id, Event.seq, Event.type, Event.created_at)
        .where(Event.fanned_out.is_(False))
        .order_by(Event.created_at)
        .limit(FAN_OUT_PAGE)
    )
    if skip_locked:
        statement = statement.with_for_update(skip_locked=True)
    rows = session.execute(statement).all()
    if not rows:
        return 0
    customers = {row.customer_id for row in rows}
    endpoints: dict[str, list[WebhookEndpoint]] = {}
    for endpoint in session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.customer_id.in_(customers), WebhookEndpoint.deleted_at.is_(None)
        )
    ):
        endpoints.setdefault(endpoint.customer_id, []).append(endpoint)
    deliveries = [
        _new_delivery(endpoint, row, now)
        for row in rows
        for endpoint in endpoints.get(row.customer_id, [])
        if endpoint.created_at <= row.created_at and endpoint_wants(endpoint, row.type)
    ]
    if deliveries:
        session.execute(insert(WebhookDelivery), deliveries)
    session.execute(
        update(Event)
        .where(Event.id.in_([row.id for row in rows]))
        .values(fanned_out=True)
        .execution_options(synchronize_session=False)
    )
    return len(rows)


def _new_delivery(endpoint: WebhookEndpoint, event: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": new_id("whd"),
        "endpoint_id": endpoint.id,
        "customer_id": endpoint.customer_id,
        "event_id": event.id,
        "event_type": event.type,
        "batch_id": event.batch_id,
        "seq": event.seq,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def replay(session: Session, endpoint: WebhookEndpoint, since: datetime, now: datetime) -> int:
    """A new delivery of every event of the endpoint's customer since ``since`` that it wants."""
    count = 0
    last: tuple[datetime, str] | None = None
    while True:
        statement = (
            select(Event.id, Event.batch_id, Event.seq, Event.type, Event.created_at)
            .where(Event.customer_id == endpoint.customer_id, Event.created_at >= since)
            .order_by(Event.created_at, Event.id)
            .limit(FAN_OUT_PAGE)
        )
        if last is not None:
            statement = statement.where(
                or_(
                    Event.created_at > last[0],
                    and_(Event.created_at == last[0], Event.id > last[1]),
                )
            )
        rows = session.execute(statement).all()
        if not rows:
            return count
        wanted = [_new_delivery(endpoint, r, now) for r in rows if endpoint_wants(endpoint, r.type)]
        if wanted:
            session.execute(insert(WebhookDelivery), wanted)
        count += len(wanted)
        last = (rows[-1].created_at, rows[-1].id)


# --- sending: which delivery goes next -----------------------------------------------------------


def due_groups(session: Session, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(endpoint, batch) pairs whose head delivery is due and not held by a sender."""
    heads = (
        select(
            WebhookDelivery.endpoint_id,
            WebhookDelivery.batch_id,
            func.min(WebhookDelivery.seq).label("seq"),
        )
        .where(WebhookDelivery.status == DeliveryStatus.PENDING)
        .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.batch_id)
        .subquery()
    )
    rows = session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.batch_id)
        .join(
            heads,
            and_(
                heads.c.endpoint_id == WebhookDelivery.endpoint_id,
                heads.c.batch_id == WebhookDelivery.batch_id,
                heads.c.seq == WebhookDelivery.seq,
            ),
        )
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(
                WebhookDelivery.lease_expires_at.is_(None),
                WebhookDelivery.lease_expires_at < now,
            ),
        )
        .distinct()
        .limit(limit)
    ).all()
    return [(r.endpoint_id, r.batch_id) for r in rows]


def claim_head(
    session: Session, endpoint_id: str, batch_id: str, now: datetime, lease_seconds: float
) -> WebhookDelivery | None:
    """The (endpoint, batch)'s oldest pending delivery, leased to the caller, if it is due and
    no other sender holds it."""
    head = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.batch_id == batch_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .order_by(WebhookDelivery.seq, WebhookDelivery.created_at, WebhookDelivery.id)
        .limit(1)
    ).first()
    if head is None or head.next_attempt_at is None or head.next_attempt_at > now:
        return None
    taken = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == head.id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            or_(
                WebhookDelivery.lease_expires_at.is_(None),
                WebhookDelivery.lease_expires_at < now,
            ),
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return head if taken else None


def record_attempt(
    session: Session,
    delivery_id: str,
    *,
    ok: bool,
    response_code: int | None,
    error: str | None,
    now: datetime,
    settings: Settings,
) -> str:
    """The outcome of one attempt; returns the delivery's status after it."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return delivery.status if delivery is not None else DeliveryStatus.FAILED
    delivery.attempts += 1
    delivery.response_code = response_code
    delivery.last_error = None if ok else (error or f"HTTP {response_code}")[:1000]
    delivery.lease_expires_at = None
    if ok:
        delivery.status = DeliveryStatus.SUCCEEDED
        delivery.completed_at = now
        delivery.next_attempt_at = None
    else:
        retry_at = now + timedelta(seconds=next_attempt_delay(delivery.attempts, settings))
        window_over = retry_at > delivery.created_at + timedelta(hours=settings.webhook_retry_hours)
        if window_over and delivery.attempts >= MIN_ATTEMPTS:
            delivery.status = DeliveryStatus.FAILED
            delivery.completed_at = now
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = retry_at
    return delivery.status


def give_up(session: Session, delivery_ids: Sequence[str], reason: str, now: datetime) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(list(delivery_ids)),
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(
            status=DeliveryStatus.FAILED,
            last_error=reason,
            completed_at=now,
            next_attempt_at=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )


# --- resources -----------------------------------------------------------------------------------


def endpoint_body(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": endpoint.events,
        "created_at": isoformat(endpoint.created_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def delivery_body(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "batch_id": delivery.batch_id,
        "seq": delivery.seq,
        "status": delivery.status,
        "response_code": delivery.response_code,
        "attempts": delivery.attempts,
        "next_attempt_at": isoformat(delivery.next_attempt_at),
        "last_error": delivery.last_error,
        "created_at": isoformat(delivery.created_at),
        "completed_at": isoformat(delivery.completed_at),
    }
