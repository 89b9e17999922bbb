"""Exactly one beat: a Redis lease that a second beat process cannot take.

Two beats would schedule every sweep twice. The sweeps are idempotent, so that would be
wasteful rather than wrong; still, the second beat refuses to start and says why. The lease
is renewed by a thread; if the holder dies, another beat can start once the lease runs out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import cast

import redis

log = logging.getLogger("pagelane.beat")

LOCK_KEY = "pagelane:beat:lock"

# Renew only our own lease (compare-and-extend).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class BeatAlreadyRunningError(Exception):
    pass


class BeatLock:
    def __init__(self, client: redis.Redis, *, lease_seconds: float = 30) -> None:
        self._client = client
        self._lease_ms = int(lease_seconds * 1000)
        self._token = f"{socket.gethostname()}:{os.getpid()}"
        self._renew = client.register_script(_RENEW)
        self._stop = threading.Event()

    def acquire(self) -> None:
        if not self._client.set(LOCK_KEY, self._token, nx=True, px=self._lease_ms):
            holder = cast(bytes | None, self._client.get(LOCK_KEY))
            raise BeatAlreadyRunningError(
                f"another beat holds the lock ({holder.decode() if holder else 'just expired'}); "
                "run exactly one `pagelane beat` per deployment"
            )
        threading.Thread(target=self._keep, name="beat-lock", daemon=True).start()

    def _keep(self) -> None:
        while not self._stop.wait(self._lease_ms / 3000):
            try:
                if not self._renew(keys=[LOCK_KEY], args=[self._token, self._lease_ms]):
                    # Redis lost the key (a restart): take it again if nobody else has.
                    self._client.set(LOCK_KEY, self._token, nx=True, px=self._lease_ms)
            except redis.RedisError:
                log.warning("beat lock: Redis unreachable, retrying")

    def release(self) -> None:
        self._stop.set()
        self._renew(keys=[LOCK_KEY], args=[self._token, 1])
