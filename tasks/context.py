"""A worker process's context: the core parts plus what only task code uses.

Built by the worker's composition root (``tasks.worker``) once per pool child, after fork, and
by tests and benchmarks that drive task code directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import redis
from celery import Celery

from ocr.sandbox import Sandbox, SandboxLimits
from service.context import ServiceContext, make_context
from service.quotes import PublishQuoteChunks
from service.settings import Settings
from tasks.app import quote_chunk_publisher
from tasks.dispatch import Dispatcher, make_dispatcher, make_state_redis
from tasks.lease import LeaseKeeper

#: Builds the sandbox a worker process extracts in (one per pool child).
SandboxFactory = Callable[[Settings], Sandbox]


def capped_sandbox(settings: Settings) -> Sandbox:
    """What every worker runs: one capped child (a pool child works on one item at a time)."""
    return Sandbox(1, SandboxLimits(memory_mb=settings.sandbox_memory_mb))


@dataclass
class TaskContext(ServiceContext):
    # State Redis: semaphores and rate limits (the broker has its own connections).
    redis: redis.Redis
    dispatcher: Dispatcher
    # the stalled-quote sweep publishes a quote's unanswered files again (tasks/quotes.py)
    publish_quote_chunks: PublishQuoteChunks
    # Only the benchmark of the isolation's cost passes another (bench/inprocess.py): there is
    # no setting for it, so no deployment can run its extractions unisolated.
    make_sandbox: SandboxFactory = capped_sandbox

    @cached_property
    def lease_keeper(self) -> LeaseKeeper:
        """Renews the leases of the items this process is extracting (one thread, started on
        first use)."""
        return LeaseKeeper(
            self.session_factory,
            self.dispatcher.semaphore,
            lease_seconds=self.settings.lease_seconds,
        )

    @cached_property
    def sandbox(self) -> Sandbox:
        """The capped child process every extraction of this process runs in. Started on
        first use, kept warm after."""
        sandbox = self.make_sandbox(self.settings)
        sandbox.start()
        return sandbox

    def close(self) -> None:
        if "lease_keeper" in self.__dict__:
            self.lease_keeper.close()
        if "sandbox" in self.__dict__:
            self.sandbox.close()
        super().close()
        self.redis.close()


def make_task_context(
    settings: Settings, celery: Celery, *, make_sandbox: SandboxFactory = capped_sandbox
) -> TaskContext:
    core = make_context(settings)
    state = make_state_redis(settings)
    return TaskContext(
        **core.core_parts(),
        redis=state,
        dispatcher=make_dispatcher(core.session_factory, state, celery, settings),
        publish_quote_chunks=quote_chunk_publisher(celery),
        make_sandbox=make_sandbox,
    )
