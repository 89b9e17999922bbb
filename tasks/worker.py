"""The worker-side Celery app: registers the item task and the sweeps.

Each worker child builds its own ServiceContext after fork (``worker_process_init``): database
connections and Redis sockets must never be shared across processes.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from service.clock import utcnow
from service.context import ServiceContext, make_context
from service.settings import Settings
from tasks.app import PROCESS_ITEM, make_celery
from tasks.items import process_item
from tasks.sweeps import SWEEPS

log = logging.getLogger("pagelane.worker")


class WorkerState:
    """Holds this process's context; rebuilt in each forked child."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self._context: ServiceContext | None = None

    @property
    def context(self) -> ServiceContext:
        if self._context is None:
            self._context = make_context(self.settings, celery=self.celery)
        return self._context

    def reset_after_fork(self, **_: Any) -> None:
        # Drop (without closing) anything inherited from the parent: its sockets belong to it.
        self._context = None


def make_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    state = WorkerState(settings, app)
    signals.worker_process_init.connect(state.reset_after_fork, weak=False)

    @app.task(name=PROCESS_ITEM, bind=False, ignore_result=True)
    def process_item_task(item_id: str) -> str:
        outcome = process_item(state.context, item_id)
        log.info("item %s: %s", item_id, outcome)
        return outcome

    for name, sweep in SWEEPS.items():
        _register_sweep(app, state, name, sweep)
    return app


def _register_sweep(app: Celery, state: WorkerState, name: str, sweep: Any) -> None:
    @app.task(name=f"pagelane.sweep.{name}", ignore_result=True)
    def run_sweep() -> dict[str, int]:
        counts: dict[str, int] = sweep(state.context, utcnow())
        if any(counts.values()):
            log.info("sweep %s: %s", name, counts)
        return counts
