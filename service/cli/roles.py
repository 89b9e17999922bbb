"""The roles of a deployment, one process each: the API, workers, beat and Flower."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from service.cli.common import load

# Imported by the commands that need them: see service/cli/common.py.
if TYPE_CHECKING:
    from celery import Celery

    from service.settings import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=int,
    help="request threads per process (event streams get PAGELANE_SSE_STREAMS_PER_PROCESS more)",
)
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API under gunicorn."""
    settings = load()  # fail here, with the message, rather than inside every gunicorn worker
    # events (issue 16): an open event stream holds a gthread thread; streams get threads of
    # their own on top of the request threads, so they never starve requests (docs/events.md).
    threads += settings.sse_streams_per_process
    # The directory outlives the exec (nothing is left to remove it); it holds a few small
    # files per gunicorn worker, under the container's or machine's temp dir.
    _prepare_metrics_dir("api")
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            # Finish in-flight requests on SIGTERM before exiting (graceful drain).
            "--graceful-timeout",
            "30",
            "--timeout",
            "300",
            "--access-logfile",
            "-",
            # Structured logs for gunicorn's own lines and the app's (service/logs.py).
            "--logger-class",
            "service.logs.GunicornLogger",
            # Its when_ready hook serves /metrics on the metrics port, not this public one.
            "--config",
            "python:service.api.gunicorn_conf",
            "service.api.app:create_app()",
        ],
    )


@click.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=int)
@click.option("--queues", "-Q", default="items,sweeps,quotes", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None)
def worker(concurrency: int, queues: str, loglevel: str, hostname: str | None) -> None:
    """Run a Celery worker (one task per batch item).

    SIGTERM is Celery's warm shutdown: the worker stops taking messages, lets its running items
    finish (their results, billing and slots are written as usual), then exits. A message it
    had received but not started is unacknowledged (acks_late) and goes back to the queue.
    """
    run_worker(
        load(),
        _worker_app,
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel,
        hostname=hostname,
    )


def _worker_app(settings: Settings) -> Celery:
    # Imported when run_worker calls it, after it has set the metrics directory up.
    from tasks.worker import make_worker_app

    return make_worker_app(settings)


def run_worker(
    settings: Settings,
    make_app: Callable[[Settings], Celery],
    *,
    concurrency: int,
    queues: str,
    loglevel: str,
    hostname: str | None,
) -> None:
    """What `pagelane worker` runs, around the app ``make_app`` builds: bench/inprocess.py
    runs the same worker with its extractions in-process, to measure what the sandbox costs."""
    created_metrics_dir = _prepare_metrics_dir("worker")
    # Imported only now (make_app too imports the worker's modules only when called):
    # prometheus_client must see PROMETHEUS_MULTIPROC_DIR when it loads.
    from service import logs, metrics

    # Celery configures logging again through the setup_logging signal (tasks/worker.py); this
    # earlier call covers what happens before that, such as the metrics endpoint starting.
    logs.configure_logging(loglevel, fmt=settings.log_format)
    app = make_app(settings)
    # In this, the parent process, before the pool forks: one endpoint adds up every child's
    # files. The children inherit the listening socket but never serve it.
    metrics.start_worker_metrics_server(settings.worker_metrics_port, settings.metrics_bind)
    argv = celery_worker_argv(
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel,
        hostname=hostname,
        quiet=logs.uses_json(settings.log_format),
    )
    try:
        app.worker_main(argv=argv)
    finally:
        if created_metrics_dir is not None:
            shutil.rmtree(created_metrics_dir, ignore_errors=True)


def celery_worker_argv(
    *, concurrency: int, queues: str, loglevel: str, hostname: str | None, quiet: bool
) -> list[str]:
    """The `celery worker` arguments of every Pagelane worker (bench/celery_floor.py runs its
    no-op worker with the same ones)."""
    return [
        # Celery's start-up banner is for people at a terminal; in JSON mode it would be the
        # only lines a log shipper cannot parse (the connection and "ready" are logged).
        *(["--quiet"] if quiet else []),
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        "--without-mingle",
        "--without-gossip",
        *([f"--hostname={hostname}"] if hostname else []),
    ]


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat (exactly one per deployment: it schedules the sweeps)."""
    import redis

    from tasks.beat import BeatAlreadyRunningError, BeatLock
    from tasks.worker import make_worker_app

    settings = load()
    app = make_worker_app(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "celerybeat-schedule"
    lock = BeatLock(redis.Redis.from_url(settings.require_redis()))
    try:
        lock.acquire()
    except BeatAlreadyRunningError as exc:
        raise click.ClickException(str(exc)) from exc
    from service import logs

    # As for the worker: no plain-text banner among JSON lines.
    quiet = ["--quiet"] if logs.uses_json(settings.log_format) else []
    try:
        app.start(argv=[*quiet, "beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
    finally:
        lock.release()


def release_dead_beat_lock(redis_url: str, pid: int) -> bool:
    """Release the beat lock if the beat process ``pid`` of this host holds it (it died).

    Compare-and-delete in one script: a lock another beat took meanwhile is left alone.
    """
    import socket

    import redis

    from tasks.beat import LOCK_KEY

    script = (
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
        "return 0"
    )
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        token = f"{socket.gethostname()}:{pid}"
        return bool(client.eval(script, 1, LOCK_KEY, token))
    finally:
        client.close()


@click.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--basic-auth", default=None, help="user:password")
def flower(port: int, basic_auth: str | None) -> None:
    """Run Flower, the Celery monitoring UI."""
    from tasks.worker import make_worker_app

    app = make_worker_app(load())
    argv = ["flower", f"--port={port}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    app.start(argv=argv)


def _prepare_metrics_dir(role: str) -> str | None:
    """Give this role's processes a fresh PROMETHEUS_MULTIPROC_DIR unless one is set.

    Fresh, because files left by a previous run would be added to this one's counters. Set it
    yourself only to a directory that is emptied before each start and used by one role only.
    Returns the directory when this call created it (the caller removes it at exit).
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix=f"pagelane-metrics-{role}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path
