"""The Celery application factory and its configuration, each knob with its reason.

Workers run ``celery -A tasks.worker worker``; the API builds the same app only to publish.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from service.quotes import ChunkFile, PublishQuoteChunks
from service.settings import Settings

PROCESS_ITEM = "pagelane.process_item"
PROCESS_SLICE = "pagelane.process_slice"
QUEUE_ITEMS = "items"
QUEUE_SWEEPS = "sweeps"
# batch control: quotes have a queue of their own, so they never delay extraction
QUOTE_CHUNK = "pagelane.quote.chunk"
QUEUE_QUOTES = "quotes"
# events (issue 16): webhook deliveries run on their own queue and worker (docs/events.md)
QUEUE_WEBHOOKS = "webhooks"
WEBHOOKS_TICK = "pagelane.webhooks.tick"
WEBHOOKS_DELIVER = "pagelane.webhooks.deliver"


def celery_config(settings: Settings) -> dict[str, Any]:
    hard_limit = settings.task_time_limit_seconds
    return {
        "broker_url": settings.require_redis(),
        # Items are in Postgres; a result backend would be a second, weaker record.
        "task_ignore_result": True,
        "result_backend": None,
        # JSON only: a message can never make a worker unpickle attacker-controlled bytes.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Acknowledge after the task ran: a worker that dies mid-item leaves its message to be
        # redelivered. Safe because process_item is idempotent (conditional claim).
        "task_acks_late": True,
        # A task killed by its worker dying is acknowledged, not redelivered at once: the
        # requeue sweep brings the item back after its lease and counts the attempt, so a
        # document that kills its worker every time stops at the attempt cap (RELIABILITY T3).
        "task_reject_on_worker_lost": False,
        # Long tasks: never hold more than the one being worked on, so others can take the rest.
        "worker_prefetch_multiplier": 1,
        "task_time_limit": hard_limit,
        "task_soft_time_limit": max(hard_limit - 30, int(hard_limit * 0.9)),
        # Redis redelivers anything unacknowledged after this long; settings.py checks that it
        # exceeds twice the hard limit plus any retry wait (celery#5935).
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # retry forever: Redis restarts are routine
        "broker_heartbeat": 0,
        # On connection loss the unacknowledged message will come back; stop working on it
        # instead of finishing a task whose message a second worker may already hold.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # pdfium, Pillow and tesseract buffers grow: a child is recycled once it holds 1 GB.
        # The task count is only a backstop; a new child costs ~0.3 s (its S3 client, pools),
        # which every 200 one-page items was 1.5 ms an item (bench/throughput.py).
        "worker_max_tasks_per_child": 2000,
        "worker_max_memory_per_child": 1_000_000,  # KiB
        "task_default_queue": QUEUE_ITEMS,
        "task_routes": {
            "pagelane.sweep.*": {"queue": QUEUE_SWEEPS},
            "pagelane.quote.*": {"queue": QUEUE_QUOTES},  # batch control
            "pagelane.webhooks.*": {"queue": QUEUE_WEBHOOKS},
        },
        # Task events cost four Redis publishes an item. Flower switches them on in every
        # worker while it watches (its --enable-events default, re-sent periodically), so
        # the fleet pays for them only when someone is looking.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "beat_schedule": beat_schedule(settings),
    }


def beat_schedule(settings: Settings) -> dict[str, Any]:
    # Every entry expires before its next run, so a backlog of sweeps never piles up in the
    # broker while workers are down; every sweep is idempotent, so a late one is harmless.
    def every(seconds: float, task: str) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": timedelta(seconds=seconds),
            "options": {"expires": seconds * 0.9, "queue": QUEUE_SWEEPS},
        }

    tick = max(1.0, min(5.0, settings.lease_seconds / 6))
    return {
        "dispatch-pending": every(tick, "pagelane.sweep.dispatch_pending"),
        "requeue-stale-items": every(tick * 2, "pagelane.sweep.requeue_stale_items"),
        "redispatch-lost-items": every(
            max(1.0, min(30.0, settings.redispatch_after_seconds / 4)),
            "pagelane.sweep.redispatch_lost_items",
        ),
        "expire-uploads": every(60, "pagelane.sweep.expire_uploads"),
        # Every minute, each run deleting until done or its time budget is spent (1,000 keys a
        # DeleteObjects call): it keeps up with the largest upload rate (docs/operations.md).
        "delete-expired-blobs": every(60, "pagelane.sweep.delete_expired_blobs"),
        # Blobs no row points at; each run lists a bounded slice of the store.
        "delete-orphan-blobs": every(300, "pagelane.sweep.delete_orphan_blobs"),
        "prune-idempotency-keys": every(3600, "pagelane.sweep.prune_idempotency_keys"),
        "prune-quotes": every(3600, "pagelane.sweep.prune_quotes"),  # batch control
        "redispatch-stalled-quotes": every(60, "pagelane.sweep.redispatch_stalled_quotes"),
        # events (issue 16)
        "prune-events": every(600, "pagelane.sweep.prune_events"),
        "webhooks-tick": {
            "task": WEBHOOKS_TICK,
            "schedule": timedelta(seconds=settings.webhook_tick_seconds),
            "options": {"expires": settings.webhook_tick_seconds * 0.9, "queue": QUEUE_WEBHOOKS},
        },
    }


def quote_chunk_publisher(celery: Celery) -> PublishQuoteChunks:
    """Publishes a quote's chunks, a message each, on the quotes queue: their own queue, so
    quotes never wait behind extraction, nor delay it."""

    def publish(quote_id: str, chunks: list[list[ChunkFile]], options: dict[str, Any]) -> None:
        # One producer for all of them (a quarter of send_task's cost is acquiring one).
        with celery.producer_or_acquire() as producer:
            for files in chunks:
                celery.send_task(
                    QUOTE_CHUNK,
                    args=[quote_id, files, options],
                    queue=QUEUE_QUOTES,
                    producer=producer,
                )

    return publish


def make_celery(settings: Settings) -> Celery:
    app = Celery("pagelane", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
