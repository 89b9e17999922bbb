"""The floor under the per-item overhead: an item task that does nothing of ours.

Its worker is built by the same factory (``tasks.app.make_celery``: JSON, late acks, prefetch 1,
the same broker options) and started with the same arguments (``celery_worker_argv``) as
`pagelane worker`. Its one task records when it ran and, given two blob keys, does the blob
calls an item cannot do without: GET its input and PUT a result of the given size, through our
blob store (S3 or local, from the settings). No database, no semaphore, no extraction.

Messages are queued before the worker starts and the clock runs from the first task's end to
the last's, so the figure is the broker round trips, the prefork pool's hand-off, the
acknowledgements and the blob calls. bench/throughput.py prints it beside the per-item
orchestration overhead, as the part of it that no code of ours can cut.

The worker runs as ``python -m bench.celery_floor N`` with the settings in its environment.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from celery import Celery

from service.cli.roles import celery_worker_argv
from service.settings import Settings, load_settings
from service.storage import BlobStore, make_blob_store
from tasks.app import make_celery
from tests.support.stack import settings_env

FLOOR_TASK = "bench.floor_item"
QUEUE = "bench-floor"
TIMES = "bench:floor:times"
REPO = Path(__file__).resolve().parents[1]


def make_floor_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    client = redis.Redis.from_url(settings.require_redis())
    stores: list[BlobStore] = []  # built in the pool child on first use, like the worker's

    @app.task(name=FLOOR_TASK, ignore_result=True)
    def floor_item(input_key: str | None, result_key: str | None, result_bytes: int) -> None:
        if input_key and result_key:
            if not stores:
                stores.append(make_blob_store(settings))
            stores[0].get(input_key)
            stores[0].put(result_key, b" " * result_bytes, content_type="application/json")
        # One Redis call: our item task makes several, so this understates the floor slightly.
        client.rpush(TIMES, repr(time.time()))

    return app


def measure(
    settings: Settings,
    *,
    workers: int,
    items: int,
    blobs: Sequence[tuple[str, str]] = (),
    result_bytes: int = 0,
) -> float:
    """Seconds per item and worker process, (last end - first end) * N / (items - 1), of
    ``items`` floor tasks; with ``blobs`` (input key, result key), one pair per task."""
    client = redis.Redis.from_url(settings.require_redis())
    client.delete(TIMES, QUEUE)
    app = make_floor_app(settings)
    pairs: list[tuple[str | None, str | None]] = list(blobs) or [(None, None)] * items
    with app.producer_or_acquire() as producer:
        for input_key, result_key in pairs[:items]:
            app.send_task(
                FLOOR_TASK,
                args=[input_key, result_key, result_bytes],
                queue=QUEUE,
                producer=producer,
            )
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.celery_floor", str(workers)],
            env=settings_env(settings),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while int(client.llen(TIMES)) < items:  # type: ignore[arg-type]
                if worker.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the floor worker died or stalled:\n{output}")
                time.sleep(0.05)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    times = sorted(float(t) for t in client.lrange(TIMES, 0, -1))  # type: ignore[union-attr]
    client.delete(TIMES, QUEUE)
    return (times[-1] - times[0]) * workers / (items - 1)


def main() -> None:
    app = make_floor_app(load_settings())
    argv = celery_worker_argv(
        concurrency=int(sys.argv[1]), queues=QUEUE, loglevel="WARNING", hostname=None, quiet=True
    )
    app.worker_main(argv=argv)


if __name__ == "__main__":
    main()
