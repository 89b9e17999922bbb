"""Graceful shutdown with real processes: SIGTERM, as Docker and Kubernetes send it.

* A worker finishes the items it is running (warm shutdown) and exits; nothing it held is left
  running, lost, retried or billed twice, and a second worker finishes the rest.
* The API (gunicorn) answers a request that is in flight when SIGTERM arrives, then exits.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.models import ItemStatus
from tests.conftest import CORPUS, build_context, new_customer_key
from tests.faults.test_workers import check_books, document
from tests.integration.test_metrics import start_api
from tests.support.live import Stack
from tests.support.stack import wait_for

pytestmark = pytest.mark.slow


def test_sigterm_lets_a_worker_finish_its_running_items(
    stack: Stack, report: Callable[..., None]
) -> None:
    # No beat: every item must get through on the messages alone. A lost message would hang
    # the batch, and an item taken back after its lease would show attempts == 2.
    leaving = stack.worker(concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "2"})
    tenant = stack.tenant("shutdown", concurrency=4)
    total = 8
    batch = tenant.submit(stack.upload_many(tenant, [document() for _ in range(total)])).get_json()

    def two_running() -> set[str]:
        running = {i.id for i in stack.items(batch["id"]) if i.status == ItemStatus.RUNNING}
        return running if len(running) == 2 else set()

    in_flight = wait_for(two_running, 30, 0.05, "two items to start")
    signalled = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    try:
        code = leaving.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        print(leaving.log()[-4000:])
        raise
    exited_after = time.monotonic() - signalled
    assert code == 0, leaving.log()[-4000:]

    items = {i.id: i for i in stack.items(batch["id"])}
    for item_id in in_flight:
        assert items[item_id].status == ItemStatus.SUCCEEDED, "a running item was abandoned"
        assert items[item_id].attempts == 1
    assert not [i for i in items.values() if i.status == ItemStatus.RUNNING], (
        "the worker left an item running (only its lease would bring it back)"
    )
    finished_by_first = sum(i.status == ItemStatus.SUCCEEDED for i in items.values())

    stack.worker(concurrency=2)
    stack.wait_terminal(tenant, batch["id"], timeout=90)
    books = check_books(stack, tenant, batch["id"])
    assert books["lost"] == 0 and books["succeeded"] == total
    assert all(i.attempts == 1 for i in stack.items(batch["id"])), "an item ran twice"
    report(
        in_flight=len(in_flight),
        finished_by_leaving_worker=finished_by_first,
        exited_after_s=exited_after,
        lost=0,
        billed_twice=0,
    )


def test_sigterm_lets_the_api_answer_a_request_in_flight(
    make_settings: Any,
    postgres_url: str,
    flush_redis: None,
    tmp_path: Path,
    report: Callable[..., None],
) -> None:
    settings = make_settings(database_url=postgres_url, blob_store="none")
    ctx = build_context(settings)
    _, key = new_customer_key(ctx, "drain")
    ctx.close()
    proc, url = start_api(settings, tmp_path, workers=1)
    # The upload stops halfway until SIGTERM has been sent: the request is certainly in flight
    # then, however fast OCR is on this machine; the server must read the rest, run OCR (about
    # a second or two for this page) and answer before it exits.
    request = httpx.Request(
        "POST",
        f"{url}/v1/extract/file",
        headers={"X-API-KEY": key},
        files={
            "file": (
                "phototest.tif",
                (CORPUS / "image-phototest-1bit.tif").read_bytes(),
                "image/tiff",
            )
        },
    )
    body = request.read()
    half_sent, resume = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def upload() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        resume.wait(30)
        yield body[len(body) // 2 :]

    def slow_request() -> None:
        try:
            # One keep-alive connection, already served once: the worker has certainly
            # accepted it before the upload starts on it.
            with httpx.Client(timeout=60) as http:
                assert http.get(f"{url}/healthz").status_code == 200
                outcome["response"] = http.post(
                    request.url, headers=dict(request.headers), content=upload()
                )
        except httpx.HTTPError as exc:
            outcome["error"] = exc
        outcome["done"] = time.monotonic()

    try:
        client = threading.Thread(target=slow_request)
        client.start()
        assert half_sent.wait(10)
        time.sleep(0.2)  # the server reads the first half and waits for the rest
        signalled = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # gunicorn acts on the signal before the upload resumes
        resume.set()
        client.join(timeout=60)
        code = proc.process.wait(timeout=40)
    finally:
        resume.set()
        proc.stop()
    assert "error" not in outcome, (outcome.get("error"), proc.log()[-3000:])
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["page_count"] == 1
    assert code == 0, proc.log()[-3000:]
    assert "Handling signal: term" in proc.log()
    report(answered_after_sigterm_s=outcome["done"] - signalled)
