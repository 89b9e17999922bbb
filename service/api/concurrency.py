"""Sync extractions running at once per customer, across every API process: a lease-based
counter on Redis.

The model is tasks/semaphore.py's ``CustomerSemaphore`` (one sorted set per customer, members the
holders, scores their lease expiry in Redis-server time, one Lua script per call), kept apart
on purpose: the web layer may not import ``tasks`` beyond the dispatch wiring (the import
contracts), and these slots are a different resource from the workers' item slots (their own
keys, their own cap). A request holds its slot for its whole life and gives it back when it
ends; an API process killed mid-request leaves a slot that frees itself when its lease (the
sync time limit plus a margin) runs out.
"""

from __future__ import annotations

import redis

# KEYS[1] = the customer's set; ARGV = cap, lease_ms, holder. 1 when the holder got a slot.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) * 2 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
end
return 1
"""


class SyncSlots:
    """At most ``cap`` holders per customer at once, fleet-wide."""

    def __init__(self, client: redis.Redis, *, namespace: str = "pagelane") -> None:
        self._client = client
        self._namespace = namespace
        self._acquire = client.register_script(_ACQUIRE)

    def _key(self, customer_id: str) -> str:
        return f"{self._namespace}:sync-slots:{customer_id}"

    def acquire(self, customer_id: str, holder: str, *, cap: int, lease_seconds: float) -> bool:
        lease_ms = int(lease_seconds * 1000)
        return bool(self._acquire(keys=[self._key(customer_id)], args=[cap, lease_ms, holder]))

    def release(self, customer_id: str, holder: str) -> None:
        self._client.zrem(self._key(customer_id), holder)

    def holders(self, customer_id: str) -> int:
        return int(self._client.zcard(self._key(customer_id)))  # type: ignore[arg-type]
