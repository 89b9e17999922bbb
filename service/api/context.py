"""The API process's context: the core parts plus what only the API uses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis

from ocr.sandbox import Sandbox, SandboxLimits
from service.api.concurrency import SyncSlots
from service.api.ratelimit import SubmissionRateLimiter
from service.context import ServiceContext
from service.quotes import PublishQuoteChunks
from tasks.dispatch import Dispatcher


@dataclass
class ApiContext(ServiceContext):
    # State Redis (the readiness probe); the rate limiter and the dispatcher use it too.
    redis: redis.Redis
    # The API only publishes: after a batch commits, its first items are admitted here.
    dispatcher: Dispatcher
    rate_limiter: SubmissionRateLimiter
    # POST /v1/extract/file: its own rate budget, and its per-customer concurrency cap.
    sync_rate_limiter: SubmissionRateLimiter
    sync_slots: SyncSlots
    # POST /v1/quotes: a quote's chunks of files go to the workers' quotes queue.
    publish_quote_chunks: PublishQuoteChunks

    @cached_property
    def sandbox(self) -> Sandbox:
        """The capped child processes the sync endpoint extracts in, started on first use (in
        the gunicorn worker, after fork); as many as one customer may run at once."""
        limits = SandboxLimits(memory_mb=self.settings.sandbox_memory_mb)
        sandbox = Sandbox(max(2, self.settings.sync_concurrency), limits)
        sandbox.start()
        return sandbox

    def close(self) -> None:
        if "sandbox" in self.__dict__:
            self.sandbox.close()
        super().close()
        self.redis.close()
