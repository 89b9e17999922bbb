"""The worker-side Celery app: registers the item task and the sweeps.

Each worker child builds its own TaskContext after fork (``worker_process_init``): database
connections and Redis sockets must never be shared across processes.

Logging is ours, not Celery's (``setup_logging``: structured lines, service/logs.py), and every
task's lines carry its task id. Metrics are recorded in the children and served by the parent
(service/metrics.py; the endpoint is started by `pagelane worker`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, signals

from service import logs, metrics
from service.clock import utcnow
from service.settings import Settings
from tasks import webhooks
from tasks.app import (
    PROCESS_ITEM,
    PROCESS_SLICE,
    QUOTE_CHUNK,
    WEBHOOKS_DELIVER,
    WEBHOOKS_TICK,
    make_celery,
)
from tasks.context import SandboxFactory, TaskContext, capped_sandbox, make_task_context
from tasks.items import process_item
from tasks.quotes import prune_quotes, redispatch_stalled_quotes, run_quote_chunk
from tasks.scratch import remove_orphaned_scratch
from tasks.slices import process_slice
from tasks.sweeps import SWEEPS

log = logging.getLogger("pagelane.worker")


class WorkerState:
    """Holds this process's context; rebuilt in each forked child."""

    def __init__(self, settings: Settings, celery: Celery, make_sandbox: SandboxFactory) -> None:
        self.settings = settings
        self.celery = celery
        self.make_sandbox = make_sandbox
        self._context: TaskContext | None = None

    @property
    def context(self) -> TaskContext:
        if self._context is None:
            # Once per pool child, so a child that replaces a killed one removes its files.
            remove_orphaned_scratch()
            self._context = make_task_context(
                self.settings, self.celery, make_sandbox=self.make_sandbox
            )
        return self._context

    def reset_after_fork(self, **_: Any) -> None:
        # Drop (without closing) anything inherited from the parent: its sockets belong to it.
        self._context = None
        # Nothing is built here: Celery gives a new pool child 4 s (worker_proc_alive_timeout)
        # to report for work, so the context and its sandbox child start with the first task.

    def close_in_child(self, **_: Any) -> None:
        """A pool child exits (recycled, or the worker stops): stop its sandbox child too."""
        if self._context is not None:
            self._context.close()
            self._context = None


def make_worker_app(settings: Settings, *, make_sandbox: SandboxFactory = capped_sandbox) -> Celery:
    """The worker's app. ``make_sandbox`` is for bench/inprocess.py alone, which measures what
    the isolation costs against extractions in the pool child itself."""
    app = make_celery(settings)
    state = WorkerState(settings, app, make_sandbox)
    signals.worker_process_init.connect(state.reset_after_fork, weak=False)

    def setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
        # Any receiver of this signal stops Celery from configuring (and hijacking) the root
        # logger and from redirecting stdout; it is sent in the main process and again in each
        # pool child, and configure_logging is safe to repeat.
        logs.configure_logging(loglevel or "INFO", fmt=settings.log_format)

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="pagelane.logging")
    signals.task_prerun.connect(_bind_task_id, weak=False, dispatch_uid="pagelane.task_prerun")
    signals.task_postrun.connect(_forget_task, weak=False, dispatch_uid="pagelane.task_postrun")
    signals.worker_process_shutdown.connect(
        _child_exits, weak=False, dispatch_uid="pagelane.child_exits"
    )
    signals.worker_process_shutdown.connect(
        state.close_in_child, weak=False, dispatch_uid="pagelane.close_in_child"
    )

    @app.task(name=PROCESS_ITEM, bind=False, ignore_result=True)
    def process_item_task(item_id: str) -> str:
        started = time.perf_counter()
        outcome = process_item(state.context, item_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("item %s: %s in %.1f ms", item_id, outcome, elapsed_ms, extra={"item_id": item_id})
        return outcome

    @app.task(name=PROCESS_SLICE, bind=False, ignore_result=True)
    def process_slice_task(slice_id: str) -> str:
        started = time.perf_counter()
        outcome = process_slice(state.context, slice_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("slice %s: %s in %.1f ms", slice_id, outcome, elapsed_ms)
        return outcome

    for name, sweep in SWEEPS.items():
        _register_sweep(app, state, name, sweep)

    # batch control: quotes (their own queue) and their retention sweep
    @app.task(name=QUOTE_CHUNK, ignore_result=True)
    def quote_chunk_task(quote_id: str, files: list[Any], options: dict[str, Any]) -> int:
        started = time.perf_counter()
        answered = run_quote_chunk(state.context, quote_id, files, options)
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("quote %s: %d files in %.1f ms", quote_id, answered, elapsed_ms)
        return answered

    _register_sweep(app, state, "prune_quotes", prune_quotes)
    _register_sweep(app, state, "redispatch_stalled_quotes", redispatch_stalled_quotes)
    _register_webhooks(app, state)
    return app


def _register_webhooks(app: Celery, state: WorkerState) -> None:
    """events (issue 16): the webhook tick and sender, on the ``webhooks`` queue."""

    @app.task(name=WEBHOOKS_DELIVER, ignore_result=True)
    def deliver_task(endpoint_id: str, batch_id: str) -> dict[str, int]:
        return webhooks.deliver(state.context, endpoint_id, batch_id)

    def publish(endpoint_id: str, batch_id: str) -> None:
        # Expires before several ticks have passed: a backlog of duplicates never piles up.
        deliver_task.apply_async((endpoint_id, batch_id), expires=30)

    @app.task(name=WEBHOOKS_TICK, ignore_result=True)
    def tick_task() -> dict[str, int]:
        counts = webhooks.tick(state.context, utcnow(), publish)
        if any(counts.values()):
            log.debug("webhooks tick: %s", counts)
        return counts


def _bind_task_id(task_id: str | None = None, **_: Any) -> None:
    # A pool child runs one task after another: start each from an empty context.
    logs.clear()
    logs.bind(task_id=task_id)


def _forget_task(**_: Any) -> None:
    logs.clear()


def _child_exits(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


def _register_sweep(app: Celery, state: WorkerState, name: str, sweep: Any) -> None:
    @app.task(name=f"pagelane.sweep.{name}", ignore_result=True)
    def run_sweep() -> dict[str, int]:
        try:
            counts: dict[str, int] = sweep(state.context, utcnow())
        finally:
            metrics.sweep_ran(name)  # failures too: "runs but fails" is PagelaneSweepStale's job
        metrics.sweep_succeeded(name, counts, utcnow())
        if any(counts.values()):
            log.info("sweep %s: %s", name, counts)
        return counts
