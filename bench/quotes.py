"""Quotes: a quote of 1,000 one-page PDFs against the time the workers need just to open them.

(a) the floor: a process pool of N (the workers' concurrency) fetching each input from the blob
store and opening it with ``ocr.probe`` (sniff, open, count pages): what any quote must do;
(b) the quote: POST /v1/quotes → completed, with N real worker processes on the ``quotes``
queue (server timestamps: completed_at - created_at), which also read each page's text layer.
Goal: b <= 1.2 * a. (The retry-creation figure, 10,000 items with 100 failures, is in
tests/api/test_control.py.) Run: python -m bench.quotes [N] [FILES] [postgres|sqlite]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import Any

import ocr
from bench.stack import CORPUS, bench_stack
from service.settings import Settings
from service.storage import input_key, make_blob_store
from tests.support.stack import wait_for

_STORE: Any = None


def _init(settings: Settings) -> None:
    global _STORE
    _STORE = make_blob_store(settings)


def _open(key: str) -> int:
    return ocr.probe(_STORE.get(key)).page_count


def floor(settings: Settings, keys: list[str], workers: int) -> float:
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(settings,)) as pool:
        list(pool.map(_open, keys[: workers * 2]))  # warm: imports, store clients
        start = time.perf_counter()
        pages = sum(pool.map(_open, keys, chunksize=25))
        seconds = time.perf_counter() - start
    assert pages == len(keys)
    return seconds


def quote_seconds(tenant: Any, file_ids: list[str]) -> tuple[float, dict[str, Any]]:
    quote = tenant.post("/v1/quotes", {"file_ids": file_ids}).get_json()

    def done() -> Any:
        body = tenant.get(f"/v1/quotes/{quote['id']}").get_json()
        return body if body["status"] == "completed" else None

    body = wait_for(done, 600, 0.05, "the quote")
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    completed = datetime.fromisoformat(body["completed_at"].replace("Z", "+00:00"))
    return (completed - created).total_seconds(), body


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    database = sys.argv[3] if len(sys.argv) > 3 else "sqlite"
    blobs = "s3" if database == "postgres" else "local"
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    with bench_stack(database, blobs) as stack:
        tenant = stack.tenant("bench")
        file_ids = stack.upload_many(tenant, [data] * n)
        keys = [input_key(tenant.customer_id, f) for f in file_ids]
        stack.worker(concurrency=workers, queues="quotes")
        quote_seconds(tenant, file_ids[: workers * 4])  # warm the worker children
        bare = floor(stack.settings, keys, workers)
        seconds, body = quote_seconds(tenant, file_ids)
        assert body["totals"]["pages"] == n
    print(f"quote of {n} one-page PDFs, {workers} worker processes, {database}+{blobs}")
    print(f"  (a) workers just opening them (fetch + ocr.probe): {bare:.2f} s")
    print(f"  (b) the quote, POST to completed:                   {seconds:.2f} s")
    print(f"  b / a = {seconds / bare:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
