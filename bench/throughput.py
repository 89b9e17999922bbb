"""Throughput: the whole system against the bare engine, side by side in one run.

1. The born-digital PDFs of ../shared/corpus (1 to 117 pages each): pages/s of (a) ocr.extract
   in a process pool of N and (b) API → Celery → blob store → result with N worker processes;
   ratio b/a (goal ≥ 0.90).
2. 500 one-page PDFs: per-item orchestration overhead = (system time - bare time) * N / items,
   on Postgres + S3 (moto's server in its own process; goal ≤ 15 ms) and embedded (SQLite +
   local blobs; goal ≤ 5 ms).

Each figure is the best of several runs (3 by default). Run: `make bench-throughput`
(python -m bench.throughput [N] [RUNS]).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import ocr
from bench.stack import CORPUS, bench_stack
from tests.support.live import Stack

TERMINAL = {"completed", "partially_failed", "failed", "cancelled"}


def born_digital() -> list[bytes]:
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    return [
        (CORPUS / entry["name"]).read_bytes()
        for entry in manifest["files"]
        if entry["name"].startswith("digital-") and entry["expected_outcome"] == "text"
    ]


def _extract_pages(data: bytes) -> int:
    return int(ocr.extract(data)["page_count"])


def bare(documents: list[bytes], workers: int) -> tuple[float, int]:
    """(seconds, pages) for ocr.extract over the documents in a pool of ``workers``."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_extract_pages, documents[:workers]))  # warm the pool (imports)
        start = time.perf_counter()
        pages = sum(pool.map(_extract_pages, documents, chunksize=1))
        return time.perf_counter() - start, pages


def through_system(stack: Stack, documents: list[bytes]) -> tuple[float, int]:
    """(seconds from submit to the batch's completed_at, pages billed).

    The end is the batch's own completed_at (the commit of its last item), not the moment a
    poll noticed it: a poll every few milliseconds would take CPU from the workers on a small
    machine, and a slow one would add its interval to the figure."""
    tenant = stack.tenant(f"t{time.monotonic_ns()}", concurrency=64)
    file_ids = stack.upload_many(tenant, documents)
    start = datetime.now(UTC)
    batch = tenant.submit(file_ids).get_json()
    while True:
        body = tenant.get(f"/v1/batches/{batch['id']}?limit=1").get_json()
        if body["status"] in TERMINAL:
            break
        time.sleep(0.5)
    assert body["status"] == "completed", body["counts"]
    completed = datetime.fromisoformat(body["completed_at"].replace("Z", "+00:00"))
    return (completed - start).total_seconds(), int(body["pages_billed"])


def warm(stack: Stack, sample: bytes) -> None:
    through_system(stack, [sample] * 4)


def one_page_pdfs(count: int) -> list[bytes]:
    base = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    return [base + f"\n% {n}\n".encode() for n in range(count)]


def best_of(runs: int, measure: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """The fastest of ``runs`` measurements: this machine is a shared VM whose speed drifts
    by tens of percent from one run to the next, and noise only ever adds time."""
    return min((measure() for _ in range(runs)), key=lambda result: result[0])


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    corpus = born_digital() * 2
    small = one_page_pdfs(500)
    print(
        f"{len(corpus)} born-digital documents, {len(small)} one-page PDFs, N={workers}, "
        f"best of {runs} runs each",
        flush=True,
    )

    bare_s, bare_pages = best_of(runs, lambda: bare(corpus, workers))
    bare_small_s, _ = best_of(runs, lambda: bare(small, workers))
    results: dict[str, tuple[float, int, float]] = {}
    for database, blobs in (("postgres", "s3"), ("sqlite", "local")):
        with bench_stack(database, blobs) as stack:
            stack.worker(concurrency=workers)
            stack.beat()
            warm(stack, small[0])
            system_s, system_pages = (
                best_of(runs, lambda: through_system(stack, corpus))
                if blobs == "s3"
                else (float("nan"), 0)
            )
            small_s, _ = best_of(runs, lambda: through_system(stack, small))
            results[f"{database}+{blobs}"] = (system_s, system_pages, small_s)

    system_s, system_pages, _ = results["postgres+s3"]
    assert system_pages == bare_pages, (system_pages, bare_pages)
    bare_rate, system_rate = bare_pages / bare_s, system_pages / system_s
    print()
    print(f"Throughput, born-digital corpus x2 ({bare_pages} pages), N={workers}")
    print(f"  (a) ocr.extract in a pool of {workers}:        {bare_rate:7.1f} pages/s")
    print(f"  (b) API -> Celery -> S3 -> result, {workers} workers: {system_rate:7.1f} pages/s")
    print(
        f"  ratio b/a: {system_rate / bare_rate:.2f}  goal >= 0.90  "
        f"{'OK' if system_rate / bare_rate >= 0.9 else 'MISSED'}"
    )
    print(
        f"Per-item orchestration overhead, {len(small)} one-page PDFs "
        f"(bare pool: {bare_small_s * 1000 / len(small):.1f} ms/item/worker... "
        f"{bare_small_s:.2f} s total)"
    )
    for name, goal in (("postgres+s3", 15.0), ("sqlite+local", 5.0)):
        small_s = results[name][2]
        overhead_ms = (small_s - bare_small_s) * workers * 1000 / len(small)
        print(
            f"  {name:13s} system {small_s:6.2f} s -> overhead {overhead_ms:6.1f} ms/item  "
            f"goal <= {goal:.0f} ms  {'OK' if overhead_ms <= goal else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
