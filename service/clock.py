"""Time in one place: every timestamp we store is naive UTC, every one we show ends in ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    # Naive UTC: SQLite has no time zones and Postgres `timestamp without time zone` keeps
    # microseconds exactly; mixing aware and naive values is the bug this avoids.
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"
