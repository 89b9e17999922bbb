"""Fairness: customer A floods 10,000 tiny items, customer B submits 1 a moment later.

With 2 worker processes, prints B's time-to-start (goal ≤ 2 s), the most items of A ever seen
running (must be ≤ A's cap of 8) and the deepest the broker queue got (goal ≤ the sum of the
caps, 16). The flood is cancelled once the figures are in; nothing waits for 10,000 items.

Run: `make bench-fairness` (python -m bench.fairness). Postgres + Redis + local blobs.
"""

from __future__ import annotations

import os
import threading
import time

from sqlalchemy import func, select

from bench.stack import CORPUS, bench_stack
from service.models import Item, ItemStatus
from tasks.app import QUEUE_ITEMS

FLOOD = 10_000
SAMPLE_SECONDS = 20.0


def main() -> None:
    tiny = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    with bench_stack("postgres", "local") as stack:
        a = stack.tenant("A", concurrency=8)
        b = stack.tenant("B", concurrency=8)
        print(f"registering and storing {FLOOD:,} files for A ...", flush=True)
        a_files = stack.upload_many(a, [tiny + f"\n%{n}\n".encode() for n in range(FLOOD)])
        b_files = stack.upload_many(b, [tiny + b"\n%b\n"])
        stack.worker(concurrency=2)
        stack.beat()
        time.sleep(3)  # workers up

        samples: list[tuple[int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with stack.ctx.session_factory() as session:
                    running = session.scalar(
                        select(func.count()).where(
                            Item.customer_id == a.customer_id, Item.status == ItemStatus.RUNNING
                        )
                    )
                depth = stack.ctx.redis.llen(QUEUE_ITEMS)
                assert isinstance(depth, int)  # a sync client (redis-py types both kinds)
                samples.append((int(running or 0), depth))
                time.sleep(0.02)

        started = time.monotonic()
        flood = a.submit(a_files).get_json()
        submit_a_s = time.monotonic() - started
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(1.0)  # "a moment later": A's flood is already being worked on
        b_submitted = time.monotonic()
        lone = b.submit(b_files).get_json()
        lone_id = lone["items"][0]["id"]
        while True:
            with stack.ctx.session_factory() as session:
                if session.scalar(select(Item.started_at).where(Item.id == lone_id)):
                    break
            time.sleep(0.01)
        b_time_to_start = time.monotonic() - b_submitted
        time.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - started)))
        stop.set()
        sampler.join()
        with stack.ctx.session_factory() as session:
            a_done = session.scalar(
                select(func.count()).where(
                    Item.customer_id == a.customer_id, Item.status == ItemStatus.SUCCEEDED
                )
            )
        a.post(f"/v1/batches/{flood['id']}/cancel")

    max_running = max(r for r, _ in samples)
    max_depth = max(d for _, d in samples)
    elapsed = SAMPLE_SECONDS
    print()
    print(f"Fairness (2 worker processes, caps A=8 B=8, cores={os.cpu_count()})")
    print(f"  A submit of {FLOOD:,} items: {submit_a_s * 1000:.0f} ms")
    print(
        f"  B time-to-start: {b_time_to_start:.2f} s  goal <= 2 s  "
        f"{'OK' if b_time_to_start <= 2 else 'MISSED'}"
    )
    print(
        f"  A max running items observed: {max_running}  (cap 8)  "
        f"{'OK' if max_running <= 8 else 'VIOLATED'}"
    )
    print(
        f"  broker queue depth max: {max_depth}  goal <= 16 (sum of caps)  "
        f"{'OK' if max_depth <= 16 else 'MISSED'}"
    )
    print(
        f"  A items finished in the {elapsed:.0f} s window: {a_done} "
        f"({len(samples)} samples); A's remaining items were cancelled"
    )


if __name__ == "__main__":
    main()
