"""The API process's context: the core parts plus what only the API uses."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from service.api.concurrency import SyncSlots
from service.api.ratelimit import SubmissionRateLimiter
from service.context import ServiceContext
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

    def close(self) -> None:
        super().close()
        self.redis.close()
