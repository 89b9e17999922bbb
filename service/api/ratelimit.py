"""Submission rate limits: the `limits` library's moving window on Redis, per API key.

A moving window gives the guarantee SPEC states literally: in any 60 s, exactly the configured
number of submissions pass on a key. `POST /v1/files`, `/v1/files/bulk` and `/v1/batches` share
one budget (scope ``submit``); `POST /v1/extract/file` has its own (scope ``sync``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # unix seconds when a slot frees up

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return headers


class SubmissionRateLimiter:
    def __init__(
        self, redis_url: str, rate: str, *, namespace: str = "pagelane", scope: str = "submit"
    ) -> None:
        self._item: RateLimitItem = parse(rate)
        self._scope = scope
        self._limiter = MovingWindowRateLimiter(
            RedisStorage(redis_url, key_prefix=f"{namespace}:rl")
        )

    def hit(self, key_id: str) -> RateDecision:
        allowed = self._limiter.hit(self._item, self._scope, key_id)
        stats = self._limiter.get_window_stats(self._item, self._scope, key_id)
        return RateDecision(
            allowed=allowed,
            limit=self._item.amount,
            remaining=max(0, stats.remaining),
            reset_at=stats.reset_time,
        )
