"""Resource ids: a type prefix, then 48 bits of milliseconds and 96 random bits, base32.

The time part makes ids roughly sortable by creation; the 96 random bits make them unguessable
(SPEC: at least 96). Lower-case base32hex keeps them URL- and S3-key-safe.
"""

from __future__ import annotations

import base64
import secrets
import time


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    raw = millis.to_bytes(6, "big") + secrets.token_bytes(12)
    # base32hex (0-9, a-v) keeps the bytes' order, so ids sort by their time part; the
    # standard alphabet (a-z, then 2-7) would not.
    return f"{prefix}_{base64.b32hexencode(raw).decode().rstrip('=').lower()}"


def new_ids_in_order(prefix: str, count: int) -> list[str]:
    """`count` ids sharing one timestamp, returned sorted, so list order equals id order."""
    millis = int(time.time() * 1000)
    return sorted(new_id(prefix, now_ms=millis) for _ in range(count))
