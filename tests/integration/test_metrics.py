"""Metrics and readiness, with real processes.

A batch runs through a real worker (its metrics endpoint on a free port) while a real `pagelane
api` (gunicorn, two processes) serves /metrics: the worker's series count what happened, the
API's add up its processes and report the per-customer gauges from the database. Readiness
follows Postgres (reached through a proxy we cut off and restore) and a private Redis (stopped
and started).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.api.app import create_app
from service.models import ItemStatus
from service.settings import Settings
from tests.conftest import build_context
from tests.faults.test_redis import PrivateRedis, private_redis  # noqa: F401 - fixture
from tests.support.live import Stack, corpus_bytes
from tests.support.proxy import CuttableProxy
from tests.support.stack import REPO, Proc, free_port, settings_env, start_worker, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def start_api(settings: Settings, tmp: Path, *, workers: int = 2) -> tuple[Proc, str]:
    """`pagelane api` as production runs it (gunicorn), on a free port."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "api",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        "4",
    ]
    env = settings_env(settings)
    # Unset, `pagelane api` would make a fresh one under /tmp that outlives gunicorn (it execs);
    # a fresh one under the test's tmp dir behaves the same and is cleaned up with it.
    metrics_dir = tmp / f"api-metrics-{port}"
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # /metrics is not on the public port: gunicorn's master serves it on its own.
    env["PAGELANE_API_METRICS_PORT"] = str(free_port())
    proc = Proc(argv, env, tmp / f"api-{port}.log")
    url = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{env['PAGELANE_API_METRICS_PORT']}/metrics"
    proc.metrics_url = metrics_url  # type: ignore[attr-defined]

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, 0.2, "the API to answer /readyz")
    except AssertionError:
        print(proc.log()[-4000:])
        proc.stop()
        raise
    return proc, url


@pytest.fixture
def api(stack: Stack) -> Iterator[tuple[Proc, str]]:
    proc, url = start_api(stack.settings, stack.tmp)
    yield proc, url
    proc.stop()


def test_worker_and_api_metrics_after_a_batch(stack: Stack, api: tuple[Proc, str]) -> None:
    api_proc, api_url = api
    metrics_port = free_port()
    worker_settings = stack.settings.model_copy(update={"worker_metrics_port": metrics_port})
    worker = start_worker(
        worker_settings, stack.tmp, concurrency=2, faults={"PAGELANE_FAULT_SLEEP": "1"}
    )
    stack.procs.append(worker)
    beat = stack.beat()
    # Cap 1: the items run one after another, so the API sees one running and others pending.
    tenant = stack.tenant("metrics", concurrency=1)
    names = [
        "digital-crazyones-1p.pdf",
        "image-generated-simple-text.jpg",
        "corrupted-not-a-valid-pdf.pdf",
    ]
    batch = tenant.submit(stack.upload_many(tenant, [corpus_bytes(n) for n in names])).get_json()

    def one_running() -> bool:
        return any(i.status == ItemStatus.RUNNING for i in stack.items(batch["id"]))

    wait_for(one_running, 30, 0.05, "an item to start")
    customer = tenant.customer_id

    def scrape_while_running() -> Samples | None:
        # Retried only for the instant between one item finishing and the next starting.
        samples = scrape(api_proc.metrics_url)
        running = value(samples, "pagelane_customer_running_items", customer_id=customer)
        return samples if running == 1 else None

    during = wait_for(scrape_while_running, 10, 0.05, "the API to report the running item")
    assert value(during, "pagelane_customer_concurrency_cap", customer_id=customer) == 1
    oldest = value(during, "pagelane_oldest_pending_item_age_seconds")
    assert oldest is not None and 0 <= oldest < 60

    final = stack.wait_terminal(tenant, batch["id"])
    assert final["counts"]["succeeded"] == 2 and final["counts"]["failed"] == 1

    # --- the worker: what its pool children recorded, added up by the parent's endpoint.
    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def sweeps_recorded() -> Samples | None:
        samples = scrape(worker_url)
        runs = value(samples, "pagelane_sweep_runs_total", sweep="dispatch_pending")
        return samples if runs and runs >= 1 else None

    samples = wait_for(sweeps_recorded, 30, 0.5, "a sweep to be counted")
    finished = "pagelane_items_finished_total"
    assert value(samples, finished, outcome="succeeded", error_code="") == 2
    assert value(samples, finished, outcome="failed", error_code="extraction_failed") == 1
    assert value(samples, "pagelane_pages_total", source="text_layer") == 1
    assert value(samples, "pagelane_pages_total", source="ocr") == 1
    extractions = value(samples, "pagelane_extraction_seconds_count") or 0
    assert 2 <= extractions <= 3
    # Each extraction slept 1 s in the fault engine, and real OCR takes a while more.
    assert 2.0 <= (value(samples, "pagelane_extraction_seconds_sum") or 0) < 60
    assert value(samples, "pagelane_queue_wait_seconds_count") == 3
    assert 0 <= (value(samples, "pagelane_queue_wait_seconds_sum") or -1) < 30
    last = value(samples, "pagelane_sweep_last_success_timestamp_seconds", sweep="dispatch_pending")
    assert last is not None and abs(time.time() - last) < 60
    assert (
        value(samples, "pagelane_sweep_items_total", sweep="dispatch_pending", action="admitted")
        is not None
    )

    # --- the API: requests counted across both gunicorn processes, gauges back to idle.
    for _ in range(12):
        # A new connection each time, so both gunicorn processes get some.
        assert httpx.get(f"{api_url}/healthz", timeout=5).status_code == 200
    request_id = "req-metrics-test"
    unauthorised = httpx.get(
        f"{api_url}/v1/batches/{batch['id']}", headers={"X-Request-Id": request_id}, timeout=5
    )
    assert unauthorised.status_code == 401
    assert httpx.get(f"{api_url}/metrics", timeout=5).status_code == 404  # not public
    after = scrape(api_proc.metrics_url)
    assert (
        value(after, "pagelane_http_requests_total", route="/healthz", method="GET", status="200")
        == 12
    )
    assert value(after, "pagelane_http_request_duration_seconds_count", route="/healthz") == 12
    assert (
        value(
            after,
            "pagelane_http_requests_total",
            route="/v1/batches/<batch_id>",
            method="GET",
            status="401",
        )
        == 1
    )
    assert value(after, "pagelane_customer_running_items", customer_id=customer) is None
    assert value(after, "pagelane_oldest_pending_item_age_seconds") == 0
    assert not any(
        name.startswith("pagelane_http") and ("route", "/metrics") in labels
        for name, labels in after
    )

    # Every series the alert rules and the dashboard query is one we expose.
    monitoring = REPO / "deploy" / "monitoring"
    referenced = set(
        re.findall(
            r"pagelane_[a-z_]+",
            (monitoring / "alerts.yaml").read_text()
            + (monitoring / "grafana-dashboard.json").read_text(),
        )
    )
    exposed = {name for name, _ in {**samples, **during, **after}}
    assert referenced and referenced <= exposed, referenced - exposed

    # gunicorn's access lines are structured and carry the request id the app answered with.
    access = [
        json.loads(line)
        for line in api_proc.log().splitlines()
        if line.startswith("{") and '"gunicorn.access"' in line
    ]
    assert any(
        line.get("request_id") == request_id and "401" in line["message"] for line in access
    ), api_proc.log()[-3000:]

    # Worker lines are JSON and carry the task's ids.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    item_lines = [
        line
        for line in lines
        if line["logger"] == "pagelane.worker" and line["message"].startswith("item ")
    ]
    assert len(item_lines) >= 3
    assert all(line.get("item_id") and line.get("task_id") for line in item_lines)

    # Beat's too, from its first line: no start-up banner in JSON mode.
    beat_lines = [line for line in beat.log().splitlines() if line.strip()]
    assert beat_lines and all(line.startswith("{") for line in beat_lines), beat.log()[:2000]
    assert any(json.loads(line)["logger"] == "celery.beat" for line in beat_lines)


# --- readiness ---------------------------------------------------------------------------------


def _readyz(client: Any) -> tuple[int, dict[str, str]]:
    response = client.get("/readyz")
    return response.status_code, response.get_json()["checks"]


def test_readyz_follows_postgres(make_settings: Any, postgres_url: str, flush_redis: None) -> None:
    # The app reaches Postgres through a proxy; Postgres "goes away" when the proxy's
    # connections are cut and new ones lead to a port nothing listens on.
    postgres = urlsplit(postgres_url)
    proxy = CuttableProxy(postgres.hostname or "127.0.0.1", postgres.port or 5432)
    settings = make_settings(
        database_url=postgres._replace(
            netloc=f"{postgres.username}@127.0.0.1:{proxy.port}"
        ).geturl(),
        blob_store="none",
    )
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    try:
        assert _readyz(client) == (200, {"database": "ok", "redis": "ok"})
        reachable, proxy.target = proxy.target, ("127.0.0.1", free_port())
        proxy.cut()
        status, checks = _readyz(client)
        assert status == 503 and checks["database"].startswith("error") and checks["redis"] == "ok"
        # A scrape still answers without the database (only the fleet gauges are missing).
        body, _ = metrics.render([metrics.FleetCollector(ctx.session_factory)])
        assert b"pagelane_customer_running_items{" not in body
        proxy.target = reachable
        wait_for(lambda: _readyz(client)[0] == 200, 15, 0.2, "readiness after Postgres returns")
    finally:
        ctx.close()
        proxy.close()


def test_readyz_follows_redis(
    make_settings: Any,
    postgres_url: str,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    settings = make_settings(
        database_url=postgres_url, redis_url=private_redis.url, blob_store="none"
    )
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    try:
        assert _readyz(client)[0] == 200
        private_redis.kill()
        status, checks = _readyz(client)
        assert status == 503 and checks["redis"].startswith("error")
        assert checks["database"] == "ok"
        private_redis.start()
        wait_for(lambda: _readyz(client)[0] == 200, 15, 0.2, "readiness after Redis returns")
    finally:
        ctx.close()
