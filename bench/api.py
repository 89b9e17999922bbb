"""API latency on the production shape: Postgres, Redis and S3 on moto's server (loopback).

Prints, measured side by side in one run:
  * POST /v1/batches with 10,000 already-uploaded file ids vs 100 ids (median; goal ≤ 1 s)
  * the same 10,000-id submit when no upload has been seen yet (the blob-store re-check runs):
    files/s of the re-check
  * GET /v1/batches/{id} pages of 100 on a 10,000-item vs a 100-item batch (goal ratio ≤ 1.5)
  * POST /v1/files/bulk with 1,000 files (goal ≤ 1 s)

Run: `make bench-api`, i.e. `python -m bench.api` from the repository root (needs Postgres
and Redis on 127.0.0.1, like the tests).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

from service.api.app import create_app
from service.db import make_engine
from service.migrate import upgrade
from service.settings import load_settings
from service.storage import input_key
from tests.conftest import build_context, new_customer_key

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL = os.environ.get("PAGELANE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    name = f"pagelane_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    # moto in its own process, as S3 would be: in this process it would fight the API code
    # for the GIL and make every S3 call look slower than it is.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.s3server"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert server.stdout is not None
    endpoint_url = server.stdout.readline().strip()
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", endpoint_url)
    finally:
        server.terminate()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(database_url: str, endpoint_url: str) -> None:
    settings = load_settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        blob_store="s3",
        s3_bucket="pagelane-bench",
        s3_endpoint_url=endpoint_url,
        data_dir=Path(tempfile.mkdtemp()),
        submit_rate_limit="100000/minute",
    )
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    # A customer whose cap is 0 so submits admit nothing: we time the API, not the workers.
    customer_id, key = new_customer_key(ctx, "bench", concurrency=1)
    headers = {"X-API-KEY": key}
    store = ctx.blob_store
    assert store is not None

    def register(count: int) -> list[str]:
        ids: list[str] = []
        while len(ids) < count:
            n = min(1000, count - len(ids))
            body = client.post(
                "/v1/files/bulk", json={"files": [{"size_bytes": 3}] * n}, headers=headers
            ).get_json()
            ids += [f["id"] for f in body["data"]]
        return ids

    def put_all(ids: list[str]) -> None:
        for file_id in ids:
            store.put(input_key(customer_id, file_id), b"abc")

    def submit(ids: list[str]) -> str:
        response = client.post("/v1/batches", json={"file_ids": ids}, headers=headers)
        assert response.status_code == 200, response.get_json()
        return str(response.get_json()["id"])

    print("preparing 10,000 + 100 uploaded files on moto ...", flush=True)
    big_ids = register(10_000)
    small_ids = register(100)
    put_all(big_ids + small_ids)
    submit(big_ids)  # first submit: the re-check marks them uploaded (not timed here)
    submit(small_ids)

    bulk_ms = median_ms(lambda: register(1000), 5)
    submit_big_ms = median_ms(lambda: submit(big_ids), 5)
    submit_small_ms = median_ms(lambda: submit(small_ids), 5)

    unseen = register(10_000)
    put_all(unseen)
    start = time.perf_counter()
    unseen_batch = submit(unseen)
    recheck_s = time.perf_counter() - start

    small_batch = submit(small_ids)

    def poll(batch_id: str) -> None:
        response = client.get(f"/v1/batches/{batch_id}?limit=100", headers=headers)
        assert response.status_code == 200

    # Alternate the two so both see the same machine load (other processes come and go).
    big_samples, small_samples = [], []
    for _ in range(40):
        big_samples.append(median_ms(lambda: poll(unseen_batch), 1))
        small_samples.append(median_ms(lambda: poll(small_batch), 1))
    poll_big_ms = statistics.median(big_samples)
    poll_small_ms = statistics.median(small_samples)
    head_keys = [input_key(customer_id, file_id) for file_id in unseen[:50]]
    head_ms = median_ms(lambda: [store.head(key) for key in head_keys], 3) / len(head_keys)
    ctx.close()

    print()
    print("API benchmark (Postgres + Redis + S3 on moto, loopback, one process)")
    print(
        f"  POST /v1/batches 10,000 ids (uploaded)  median {submit_big_ms:8.1f} ms  "
        f"goal <= 1000 ms  {'OK' if submit_big_ms <= 1000 else 'MISSED'}"
    )
    print(f"  POST /v1/batches    100 ids (uploaded)  median {submit_small_ms:8.1f} ms")
    print(f"    ratio 10,000 / 100 ids: {submit_big_ms / submit_small_ms:.1f}x for 100x the items")
    print(
        f"  POST /v1/batches 10,000 ids, re-check    {recheck_s * 1000:8.1f} ms  "
        f"-> {10_000 / recheck_s:,.0f} files/s re-checked (listing, 1,000 keys a call)"
    )
    print(
        f"    one HEAD per file would take {head_ms * 10:,.1f} s ({head_ms:.1f} ms a HEAD): "
        f"listing is {head_ms * 10_000 / (recheck_s * 1000):.1f}x faster"
    )
    print(f"  GET poll page of 100, 10,000-item batch  median {poll_big_ms:8.2f} ms")
    print(f"  GET poll page of 100,    100-item batch  median {poll_small_ms:8.2f} ms")
    print(
        f"    ratio: {poll_big_ms / poll_small_ms:.2f}  goal <= 1.5  "
        f"{'OK' if poll_big_ms / poll_small_ms <= 1.5 else 'MISSED'}"
    )
    print(
        f"  POST /v1/files/bulk 1,000 files          median {bulk_ms:8.1f} ms  goal <= 1000 ms  "
        f"{'OK' if bulk_ms <= 1000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
