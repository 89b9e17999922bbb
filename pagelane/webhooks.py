"""Verify the webhooks a Pagelane server sends (SPEC "Events"; the Standard Webhooks scheme).

Each delivery carries ``webhook-id`` (the event id, stable across retries), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}." + body``, keyed with the base64-decoded endpoint secret (``whsec_...``).
Verify the raw body as received, before parsing it::

    event = pagelane.webhooks.verify(secret, request.body, request.headers)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from pagelane.errors import PagelaneError

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(PagelaneError):
    """The delivery is not authentic (bad or missing signature, headers, or an old timestamp)."""


def verify(
    secret: str | bytes,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivered event (parsed JSON) once its signature and timestamp check out.

    ``headers`` is any mapping of the request's headers (names matched case-insensitively);
    ``tolerance`` is how many seconds the timestamp may be away from now (replay protection).
    Raises :class:`WebhookVerificationError` otherwise.
    """
    key = _key(secret)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    matched = False
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every candidate is compared (in constant time), so timing says nothing about which.
        matched = hmac.compare_digest(given, expected) or matched
    if not matched:
        raise WebhookVerificationError("no matching signature")
    try:
        event = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not whsec_<base64>") from None
