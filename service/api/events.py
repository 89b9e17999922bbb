"""`GET /v1/batches/{batch_id}/events`: the batch's event log as Server-Sent Events.

Process model (docs/events.md has the reasoning and the figures): a stream is an ordinary
response of a gunicorn gthread worker, so it holds one thread while open. That is made cheap and
bounded rather than avoided:
- one watcher thread per API process polls the event table for every batch that some stream of
  the process follows (one indexed query per tick, whatever the number of streams) and wakes
  the streams whose batch moved; an idle stream sleeps on a condition and costs no CPU but a
  keep-alive comment every ``sse_keepalive_seconds``;
- a process holds at most ``sse_streams_per_process`` streams (503 ``streams_unavailable`` with
  Retry-After beyond), and ``pagelane api`` gives gunicorn that many threads on top of the ones
  for requests, so streams never starve ordinary requests;
- a stream ends after ``sse_max_stream_seconds`` even if the batch still runs; the client
  resumes with ``Last-Event-ID`` (SPEC's resume rule makes that invisible), so no thread is
  held by one idle client forever;
- open streams per API key are capped fleet-wide (``sse_streams_per_key``, 429 beyond) by leases
  in a Redis sorted set, renewed with every keep-alive, so a killed API process's streams free
  their places within a lease.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Flask, Response, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.api.common import caller, responses, service
from service.api.errors import ApiError, not_found, validation_error
from service.api.schemas import BatchPath
from service.events import event_body, events_after, latest_seqs
from service.models import TERMINAL_BATCH_STATUSES, Batch, EventType
from service.settings import Settings

log = logging.getLogger("pagelane.api.events")

tag = Tag(name="events", description="Push instead of poll: a batch's events as SSE.")
EXTENSION = "pagelane.events"
PAGE = 500


class EventsQuery(BaseModel):
    after: int | None = Field(
        None, ge=-1, description="Resume after this seq (like the Last-Event-ID header)."
    )


class EventStream(BaseModel):
    """`text/event-stream`: `id: <seq>`, `event: <type>`, `data: <event JSON>` per event."""


# --- the fleet-wide cap per key ------------------------------------------------------------------

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class StreamLeases:
    """Open streams per API key across every API process: one lease per stream in a sorted set
    (score = expiry). A stream renews its lease with each keep-alive; one whose process died
    stops counting once its lease runs out."""

    def __init__(self, client: redis.Redis, cap: int, lease_seconds: float) -> None:
        self._redis = client
        self._cap = cap
        self._lease = lease_seconds
        self._acquire = client.register_script(_ACQUIRE)

    @staticmethod
    def _key(key_id: str) -> str:
        return f"pagelane:sse:{key_id}"

    def acquire(self, key_id: str, stream_id: str) -> bool:
        now = time.time()
        return bool(
            self._acquire(
                keys=[self._key(key_id)],
                args=[now, now + self._lease, stream_id, self._cap, int(self._lease) + 60],
            )
        )

    def renew(self, key_id: str, stream_id: str) -> None:
        self._redis.zadd(self._key(key_id), {stream_id: time.time() + self._lease}, xx=True)

    def release(self, key_id: str, stream_id: str) -> None:
        self._redis.zrem(self._key(key_id), stream_id)


# --- the per-process watcher ---------------------------------------------------------------------


class EventWatcher:
    """One thread per process tells waiting streams when their batch has new events.

    Each watched batch has a condition of its own (all sharing one lock), notified only when
    that batch's latest seq grew: an idle stream is not woken by the poll ticks, nor by other
    batches' events. (One condition notified every tick cost 500 idle streams 15 % of a core:
    2,500 wake-ups a second; bench/events.py.)
    """

    def __init__(self, session_factory: sessionmaker[Session], poll_seconds: float) -> None:
        self._session_factory = session_factory
        self._poll = poll_seconds
        self._lock = threading.Lock()
        self._changed: dict[str, threading.Condition] = {}
        self._watchers: dict[str, int] = {}
        self._latest: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def watch(self, batch_id: str) -> None:
        with self._lock:
            self._watchers[batch_id] = self._watchers.get(batch_id, 0) + 1
            self._changed.setdefault(batch_id, threading.Condition(self._lock))
            if self._thread is None or not self._thread.is_alive():
                # Started lazily: in the gunicorn worker, after the fork.
                self._thread = threading.Thread(target=self._run, name="sse-watcher", daemon=True)
                self._thread.start()

    def unwatch(self, batch_id: str) -> None:
        with self._lock:
            left = self._watchers.get(batch_id, 1) - 1
            if left <= 0:
                self._watchers.pop(batch_id, None)
                self._latest.pop(batch_id, None)
                self._changed.pop(batch_id, None)
            else:
                self._watchers[batch_id] = left

    def wait_beyond(self, batch_id: str, seq: int, timeout: float) -> bool:
        """True once the batch (watched by the caller) has an event above ``seq``; False after
        ``timeout``."""
        with self._lock:
            return self._changed[batch_id].wait_for(
                lambda: self._latest.get(batch_id, -1) > seq, timeout=max(0.0, timeout)
            )

    def _run(self) -> None:
        while True:
            with self._lock:
                batch_ids = list(self._watchers)
            if batch_ids:
                try:
                    with self._session_factory() as session:
                        latest = latest_seqs(session, batch_ids)
                except Exception:  # the database hiccuped: the next tick tries again
                    log.warning("event watcher query failed", exc_info=True)
                    latest = {}
                with self._lock:
                    for batch_id, seq in latest.items():
                        changed = self._changed.get(batch_id)
                        if changed is not None and seq > self._latest.get(batch_id, -1):
                            self._latest[batch_id] = seq
                            changed.notify_all()
                    self.ticks += 1
            time.sleep(self._poll)


class StreamHub:
    """What the streams of one API process share."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], state: Any):
        self.settings = settings
        self.session_factory = session_factory
        self.watcher = EventWatcher(session_factory, settings.sse_poll_seconds)
        self.leases = StreamLeases(
            state, settings.sse_streams_per_key, lease_seconds=settings.sse_keepalive_seconds * 4
        )
        self.slots = threading.BoundedSemaphore(settings.sse_streams_per_process)
        self.open_streams = 0


def register_events(app: Flask, settings: Settings, session_factory: Any, state: Any) -> None:
    """Mount the events endpoint on ``app`` with this process's stream hub."""
    app.extensions[EXTENSION] = StreamHub(settings, session_factory, state)


def make_events_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "events", __name__, url_prefix="/v1/batches", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )
    bp.get(
        "/<batch_id>/events",
        responses=responses(EventStream, 401, 404, 422, 429, 503),
    )(stream_events)
    return bp


def stream_events(path: BatchPath, query: EventsQuery) -> Response:
    """The batch's events as Server-Sent Events, resumable with Last-Event-ID (or ?after=)."""
    ctx = service()
    hub: StreamHub = ctx_hub()
    principal = caller()
    after = _resume_point(query.after)
    with ctx.session_factory() as session:
        batch = session.execute(
            select(Batch.id, Batch.status).where(
                Batch.id == path.batch_id, Batch.customer_id == principal.customer_id
            )
        ).first()
    if batch is None:
        raise not_found("batch")
    if not hub.slots.acquire(blocking=False):
        raise ApiError(
            503,
            "streams_unavailable",
            "this API process holds all the event streams it can; retry (another may not)",
            headers={"Retry-After": "2"},
        )
    stream_id = secrets.token_hex(8)
    try:
        allowed = hub.leases.acquire(principal.key_id, stream_id)
    except BaseException:
        hub.slots.release()
        raise
    if not allowed:
        hub.slots.release()
        raise ApiError(
            429,
            "too_many_concurrent_requests",
            f"at most {hub.settings.sse_streams_per_key} open event streams per key",
            headers={"Retry-After": "5"},
        )
    hub.open_streams += 1
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            hub.open_streams -= 1
            hub.slots.release()
            try:
                hub.leases.release(principal.key_id, stream_id)
            except redis.RedisError:  # the lease runs out by itself
                log.warning("could not release stream lease", exc_info=True)

    renew = lambda: hub.leases.renew(principal.key_id, stream_id)  # noqa: E731
    body = _stream(hub, path.batch_id, after, batch.status in TERMINAL_BATCH_STATUSES, renew)
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # proxies must not buffer the stream
    # Closing the response (end, disconnect, or never started) gives the places back.
    response.call_on_close(release)
    return response


def ctx_hub() -> StreamHub:
    from flask import current_app

    hub = current_app.extensions.get(EXTENSION)
    if hub is None:
        raise ApiError(503, "streams_unavailable", "event streams are not configured")
    return hub


def _resume_point(after: int | None) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        try:
            value = int(header.strip())
        except ValueError:
            raise validation_error(
                ["header", "Last-Event-ID"], "must be the seq of an event", "int_parsing"
            ) from None
        if value < -1:
            raise validation_error(["header", "Last-Event-ID"], "must be >= -1", "greater_than")
        return value
    return after if after is not None else -1


def _stream(
    hub: StreamHub,
    batch_id: str,
    after: int,
    was_terminal: bool,
    renew: Callable[[], None],
) -> Iterator[str]:
    settings = hub.settings
    started = time.monotonic()
    deadline = started + settings.sse_max_stream_seconds
    keepalive = settings.sse_keepalive_seconds
    last_write = started
    hub.watcher.watch(batch_id)
    try:
        # The reconnection delay a browser EventSource should use after we end a stream.
        yield "retry: 1000\n\n"
        last = after
        first = True
        while True:
            with hub.session_factory() as session:
                rows = events_after(session, batch_id, last, PAGE)
            for row in rows:
                last = row.seq
                yield _format(row)
                last_write = time.monotonic()
                if row.type == EventType.BATCH_COMPLETED:
                    return
            if len(rows) == PAGE:
                continue
            if first and was_terminal:
                return  # resumed after batch.completed: nothing more will come
            first = False
            now = time.monotonic()
            if now >= deadline:
                return
            wait = min(deadline - now, last_write + keepalive - now)
            moved = hub.watcher.wait_beyond(batch_id, last, wait)
            if not moved and time.monotonic() - last_write >= keepalive:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
                try:
                    renew()
                except redis.RedisError:
                    log.warning("could not renew stream lease", exc_info=True)
    finally:
        hub.watcher.unwatch(batch_id)


def _format(row: Any) -> str:
    data = json.dumps(event_body(row), separators=(",", ":"), sort_keys=False)
    return f"id: {row.seq}\nevent: {row.type}\ndata: {data}\n\n"
