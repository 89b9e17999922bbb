"""A fleet-wide counting semaphore per customer, on Redis, with per-holder leases.

One sorted set per customer: members are item ids, scores the lease expiry in Redis-server
milliseconds. Each operation is one Lua script, so it is atomic across every worker process and
machine; expired holders are dropped before counting, so a dead worker's slot frees itself when
its lease runs out. Re-acquiring by a current holder only extends its lease (idempotent).

Time comes from the Redis server (``TIME``), not from the callers, so machines with skewed
clocks still agree on who has expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

# KEYS[1] = set; ARGV = cap, lease_ms, number of releasers, the releasers, the acquirers.
# Drops the releasers, then gives the acquirers a slot each in order, stopping at the first
# that finds none; returns how many got one.
_EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap, lease, releasing = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 3 + releasing do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
local granted = 0
for i = 4 + releasing, #ARGV do
  local holding = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if (not holding) and redis.call('ZCARD', KEYS[1]) >= cap then
    break
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  granted = granted + 1
end
-- The key outlives its longest lease, so an idle customer leaves nothing behind.
if granted > 0 and redis.call('PTTL', KEYS[1]) < lease * 2 then
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
return granted
"""

# KEYS[1] = set; ARGV = holder, lease_ms. Returns 1 when the holder still had its slot.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) * 2 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2) end
return 1
"""

# KEYS[1] = set. Returns the live holders.
_HOLDERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class CustomerSemaphore:
    """``cap`` concurrent holders per customer, fleet-wide."""

    def __init__(self, client: redis.Redis, *, namespace: str = "pagelane") -> None:
        self._client = client
        self._namespace = namespace
        self._exchange = client.register_script(_EXCHANGE)
        self._renew = client.register_script(_RENEW)
        self._holders = client.register_script(_HOLDERS)

    def _key(self, customer_id: str) -> str:
        return f"{self._namespace}:sem:{customer_id}"

    def acquire(self, customer_id: str, holder: str, *, cap: int, lease_seconds: float) -> bool:
        """A slot for ``holder``, or a longer lease on the one it holds."""
        granted = self.exchange(customer_id, acquire=[holder], cap=cap, lease_seconds=lease_seconds)
        return granted == 1

    def exchange(
        self,
        customer_id: str,
        *,
        release: Sequence[str] = (),
        acquire: Sequence[str],
        cap: int,
        lease_seconds: float,
    ) -> int:
        """Release ``release``, then acquire for ``acquire`` in order until one finds no slot,
        atomically (a finished item handing its slot to the next); returns how many got one."""
        if not release and not acquire:
            return 0
        lease_ms = int(lease_seconds * 1000)
        args: list[str | int] = [cap, lease_ms, len(release), *release, *acquire]
        return int(self._exchange(keys=[self._key(customer_id)], args=args))

    def renew(self, customer_id: str, holder: str, *, lease_seconds: float) -> bool:
        lease_ms = int(lease_seconds * 1000)
        return bool(self._renew(keys=[self._key(customer_id)], args=[holder, lease_ms]))

    def release(self, customer_id: str, holders: Iterable[str]) -> None:
        members = list(holders)
        if members:
            self._client.zrem(self._key(customer_id), *members)

    def holders(self, customer_id: str) -> list[str]:
        raw = self._holders(keys=[self._key(customer_id)])
        return [h.decode() if isinstance(h, bytes) else h for h in raw]
