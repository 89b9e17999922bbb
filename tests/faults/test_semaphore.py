"""T7: the per-customer semaphore under stress from many processes, and after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
import redis

from tasks.semaphore import CustomerSemaphore
from tests.support.stack import REPO

pytestmark = pytest.mark.slow

# Each contender loops: acquire a slot, count itself in, hold briefly, count itself out,
# release. `active` can only exceed the cap if the semaphore admitted too many holders.
CONTENDER = textwrap.dedent("""
    import os, random, sys, time
    import redis
    from tasks.semaphore import CustomerSemaphore
    url, customer, cap, seconds, hold = sys.argv[1:6]
    cap, seconds = int(cap), float(seconds)
    client = redis.Redis.from_url(url)
    semaphore = CustomerSemaphore(client, namespace="stress")
    me = f"holder-{os.getpid()}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if semaphore.acquire(customer, me, cap=cap, lease_seconds=2):
            active = client.incr("stress:active")
            client.eval("if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then "
                        "redis.call('SET', KEYS[1], ARGV[1]) end", 1, "stress:max", active)
            client.incr("stress:acquired")
            if hold == "forever":
                print("holding", flush=True)
                time.sleep(3600)
            time.sleep(random.uniform(0.02, 0.05))
            client.decr("stress:active")
            semaphore.release(customer, [me])
        else:
            time.sleep(random.uniform(0, 0.002))
""")


def _spawn(redis_url: str, cap: int, seconds: float, hold: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CONTENDER, redis_url, "cust", str(cap), str(seconds), hold],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_t7_never_more_than_cap_holders(
    redis_url: str, flush_redis: None, report: Callable[..., None]
) -> None:
    client = redis.Redis.from_url(redis_url)
    cap, contenders = 8, 16
    processes = [_spawn(redis_url, cap, 6, "brief") for _ in range(contenders)]
    for process in processes:
        assert process.wait(timeout=60) == 0
    peak = int(client.get("stress:max") or 0)
    acquired = int(client.get("stress:acquired") or 0)
    assert acquired > 100, "the stress test did not contend"
    assert peak <= cap, f"{peak} concurrent holders with a cap of {cap}"
    assert peak == cap, "16 contenders should fill every slot at some point"
    report(processes=contenders, cap=cap, max_holders=peak, acquisitions=acquired)


def test_t7_slots_of_killed_holders_come_back_after_one_lease(
    redis_url: str, flush_redis: None, report: Callable[..., None]
) -> None:
    client = redis.Redis.from_url(redis_url)
    semaphore = CustomerSemaphore(client, namespace="stress")
    cap = 4
    holders = [_spawn(redis_url, cap, 30, "forever") for _ in range(cap)]
    for process in holders:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "holding"
    assert len(semaphore.holders("cust")) == cap
    assert not semaphore.acquire("cust", "latecomer", cap=cap, lease_seconds=2)
    for process in holders:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = time.monotonic()
    while semaphore.holders("cust") and time.monotonic() - killed_at < 10:
        time.sleep(0.05)
    reclaimed_after = time.monotonic() - killed_at
    assert semaphore.holders("cust") == []
    assert reclaimed_after <= 2.5, "slots must free themselves within one lease (2 s)"
    assert semaphore.acquire("cust", "latecomer", cap=cap, lease_seconds=2)
    report(
        killed_holders=cap, leaked_after_one_lease=0, reclaimed_after_s=reclaimed_after, lease_s=2
    )


def test_acquire_is_idempotent_and_renew_needs_a_live_slot(
    redis_url: str, flush_redis: None
) -> None:
    semaphore = CustomerSemaphore(redis.Redis.from_url(redis_url), namespace="unit")
    assert semaphore.acquire("c", "a", cap=1, lease_seconds=5)
    assert semaphore.acquire("c", "a", cap=1, lease_seconds=5)  # same holder: still one slot
    assert not semaphore.acquire("c", "b", cap=1, lease_seconds=5)
    assert semaphore.renew("c", "a", lease_seconds=5)
    assert not semaphore.renew("c", "b", lease_seconds=5)
    semaphore.release("c", ["a"])
    assert semaphore.acquire("c", "b", cap=1, lease_seconds=0.2)
    time.sleep(0.3)
    assert not semaphore.renew("c", "b", lease_seconds=5), "an expired lease cannot be renewed"
    assert semaphore.acquire("c", "a", cap=1, lease_seconds=5)


def test_exchange_hands_a_slot_over_in_order_and_stops_at_the_cap(
    redis_url: str, flush_redis: None
) -> None:
    """A finished item's slot goes to the next items in one call: release first, then the
    acquirers in order until the cap; a current holder in the list only renews."""
    semaphore = CustomerSemaphore(redis.Redis.from_url(redis_url), namespace="unit")
    assert semaphore.exchange("c", acquire=["a", "b"], cap=2, lease_seconds=5) == 2
    # At the cap: releasing "a" frees one slot, which "c" takes; "d" after it finds none.
    granted = semaphore.exchange("c", release=["a"], acquire=["c", "d"], cap=2, lease_seconds=5)
    assert granted == 1
    assert sorted(semaphore.holders("c")) == ["b", "c"]
    # "b" already holds a slot: renewed, not counted twice; "e" then finds the cap.
    assert semaphore.exchange("c", acquire=["b", "e"], cap=2, lease_seconds=5) == 1
    assert sorted(semaphore.holders("c")) == ["b", "c"]
    assert semaphore.exchange("c", acquire=[], cap=2, lease_seconds=5) == 0
