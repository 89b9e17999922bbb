"""Prometheus metrics of the API and the workers.

The series names and labels are a contract: deploy/monitoring/alerts.yaml and the Grafana
dashboard query them. Change one only together with those files.

Both roles run several processes per pod (gunicorn workers, Celery prefork children), so every
process records into prometheus_client's multiprocess files under ``PROMETHEUS_MULTIPROC_DIR``
and whichever process answers a scrape adds them up. The library picks its value class when it
is first imported, so the variable must be set before that: ``pagelane api`` and ``pagelane
worker`` create a fresh directory and export it before importing this module (service/cli.py).
Without the variable (tests in one process, `flask run`) the metrics are ordinary in-process ones.

Fleet-wide facts that live in the database (items running per customer against its cap, the
oldest pending item) are not recorded by anyone: :class:`FleetCollector` reads them at scrape
time on the API, so every API instance reports the same value (the alert rules take ``max``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.clock import utcnow
from service.models import Batch, Customer, Item, ItemStatus

log = logging.getLogger("pagelane.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Metric objects are module-level by prometheus_client's design: each registers itself once per
# process under its name, and in multiprocess mode its values live in files keyed by pid, so
# there is no state here for a factory to own. Everything else (the fleet collector, the
# exposition registry) is built per app or per scrape.

# Sync extraction answers in seconds, so the API's buckets reach further than the defaults.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# One page takes milliseconds (text layer) to a minute (OCR); a document up to the hard limit.
_EXTRACTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# PagelaneQueueWaitHigh fires on a p90 above 300 s: keep buckets on both sides of it.
_QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

HTTP_REQUESTS = Counter(
    "pagelane_http_requests_total",
    "API requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "pagelane_http_request_duration_seconds",
    "API request latency by route template, up to the response being handed to the server.",
    ["route"],
    buckets=_HTTP_BUCKETS,
)
ITEMS_FINISHED = Counter(
    "pagelane_items_finished_total",
    "Batch items that reached a terminal status (error_code is empty unless failed).",
    ["outcome", "error_code"],
)
PAGES = Counter(
    "pagelane_pages_total",
    "Pages of succeeded items; a page is `ocr` if any of its chunks came from OCR.",
    ["source"],
)
EXTRACTION_SECONDS = Histogram(
    "pagelane_extraction_seconds",
    "Time spent in the extraction engine per item attempt.",
    buckets=_EXTRACTION_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "pagelane_queue_wait_seconds",
    "Time from an item's admission (slot taken, message published) to a worker claiming it.",
    buckets=_QUEUE_WAIT_BUCKETS,
)
SWEEP_RUNS = Counter(
    "pagelane_sweep_runs_total", "Sweep task runs, whether they succeeded or not.", ["sweep"]
)
SWEEP_LAST_SUCCESS = Gauge(
    "pagelane_sweep_last_success_timestamp_seconds",
    "Unix time of the sweep's last successful run.",
    ["sweep"],
    # "max" across processes, dead ones included: the newest success survives the worker
    # child that recorded it being recycled (worker_max_tasks_per_child).
    multiprocess_mode="max",
)
SWEEP_ITEMS = Counter(
    "pagelane_sweep_items_total",
    "What the sweeps did, by the keys of the counts each sweep returns.",
    ["sweep", "action"],
)


# --- recording -----------------------------------------------------------------------------


# The methods a label may name. gunicorn accepts any upper-case token as a method, and each
# distinct one would be a new series for ever: the rest are counted together as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER_METHOD


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    """One request: ``route`` must be a route template or ``unmatched`` (never a raw path),
    ``method`` is normalised here."""
    HTTP_REQUESTS.labels(route=route, method=method_label(method), status=str(status)).inc()
    HTTP_REQUEST_DURATION.labels(route=route).observe(seconds)


def item_finished(outcome: str, error_code: str = "", count: int = 1) -> None:
    """Count items that reached ``succeeded``, ``failed`` or ``cancelled`` (call after commit)."""
    if count > 0:
        ITEMS_FINISHED.labels(outcome=outcome, error_code=error_code).inc(count)


def record_pages(result: Mapping[str, Any]) -> None:
    """Pages of one extraction result, split by where their text came from."""
    page_count = int(result.get("page_count") or 0)
    ocr_pages = {c.get("page_no") for c in result.get("chunks") or () if c.get("source") == "ocr"}
    ocr = min(len(ocr_pages), page_count)
    # inc(0) too: both series exist from the first item on, so rate() never sees a gap.
    PAGES.labels(source="ocr").inc(ocr)
    PAGES.labels(source="text_layer").inc(page_count - ocr)


def observe_extraction(seconds: float) -> None:
    EXTRACTION_SECONDS.observe(seconds)


def observe_queue_wait(admitted_at: datetime | None, claimed_at: datetime) -> None:
    if admitted_at is not None:
        QUEUE_WAIT_SECONDS.observe(max(0.0, (claimed_at - admitted_at).total_seconds()))


def sweep_ran(sweep: str) -> None:
    SWEEP_RUNS.labels(sweep=sweep).inc()


def sweep_succeeded(sweep: str, counts: Mapping[str, int], at: datetime) -> None:
    SWEEP_LAST_SUCCESS.labels(sweep=sweep).set(_unix(at))
    for action, count in counts.items():
        SWEEP_ITEMS.labels(sweep=sweep, action=action).inc(count)


def _unix(value: datetime) -> float:
    # Our timestamps are naive UTC (service/clock.py).
    return (value - datetime(1970, 1, 1)).total_seconds()


# --- fleet-wide gauges from the database ---------------------------------------------------


class FleetCollector(Collector):
    """Per-customer running items and caps, and the oldest pending item, read at scrape time.

    Only customers with pending or running items are reported, so the label set stays as small
    as the set of active customers. One grouped statement; a failing database yields nothing
    (the scrape still answers with the process's own series; /readyz reports the outage).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def describe(self) -> Iterable[Any]:
        # Describing without querying keeps registration free of database access.
        return self._families()

    def collect(self) -> Iterator[Any]:
        running, cap, oldest = self._families()
        try:
            rows, now = self._query()
        except Exception:
            log.warning("fleet metrics: the database query failed", exc_info=True)
            return
        oldest_created: datetime | None = None
        for customer_id, concurrency, running_items, oldest_pending in rows:
            running.add_metric([customer_id], float(running_items or 0))
            cap.add_metric([customer_id], float(concurrency))
            if oldest_pending is not None and (
                oldest_created is None or oldest_pending < oldest_created
            ):
                oldest_created = oldest_pending
        age = 0.0 if oldest_created is None else (now - oldest_created).total_seconds()
        oldest.add_metric([], max(0.0, age))
        yield from (running, cap, oldest)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "pagelane_customer_running_items",
                "Items in status running per customer, fleet-wide (from the database).",
                labels=["customer_id"],
            ),
            GaugeMetricFamily(
                "pagelane_customer_concurrency_cap",
                "The customer's cap on running items, fleet-wide.",
                labels=["customer_id"],
            ),
            GaugeMetricFamily(
                "pagelane_oldest_pending_item_age_seconds",
                "Age (since its batch was submitted) of the oldest pending item; 0 when none.",
            ),
        )

    def _query(self) -> tuple[list[Any], datetime]:
        active = [ItemStatus.PENDING, ItemStatus.RUNNING]
        # Group by (customer, batch) first: the batches join then touches one row per active
        # batch instead of one per pending item. Batch ids are not a reliable creation order,
        # so the age comes from batches.created_at.
        per_batch = (
            select(
                Item.customer_id.label("customer_id"),
                Item.batch_id.label("batch_id"),
                func.sum(case((Item.status == ItemStatus.RUNNING, 1), else_=0)).label("running"),
                func.sum(case((Item.status == ItemStatus.PENDING, 1), else_=0)).label("pending"),
            )
            .where(Item.status.in_(active))
            .group_by(Item.customer_id, Item.batch_id)
            .subquery()
        )
        statement = (
            select(
                per_batch.c.customer_id,
                Customer.concurrency,
                func.sum(per_batch.c.running),
                func.min(case((per_batch.c.pending > 0, Batch.created_at))),
            )
            .join(Customer, Customer.id == per_batch.c.customer_id)
            .join(Batch, Batch.id == per_batch.c.batch_id)
            .group_by(per_batch.c.customer_id, Customer.concurrency)
        )
        with self._session_factory() as session:
            rows = list(session.execute(statement).all())
        return rows, utcnow()


# --- exposition ----------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory the processes of this role share, or None in single-process mode."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


class _ThisProcess(Collector):
    """The default registry's series (single-process mode), forwarded into a scrape registry."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def scrape_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry for one scrape: every process's series of this role, plus ``extra``."""
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return registry


def render(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The text exposition (body, content type) for a scrape."""
    return generate_latest(scrape_registry(extra)), CONTENT_TYPE_LATEST


def start_worker_metrics_server(port: int, addr: str = "127.0.0.1") -> bool:
    """Serve this worker's metrics (all its pool children) on ``port``; False if it cannot.

    Called in the worker's main process before the pool forks. A port already taken does not
    stop the worker from processing items: it logs the problem, and the scrape failing makes
    PagelaneWorkerDown say so.
    """
    if port <= 0:
        return False
    try:
        start_http_server(port, addr=addr, registry=scrape_registry())
    except OSError as exc:
        log.error(
            "worker metrics: cannot listen on %s:%d (%s); set PAGELANE_WORKER_METRICS_PORT "
            "to a free port, or 0 to turn the endpoint off",
            addr,
            port,
            exc,
        )
        return False
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
    return True


def mark_process_dead(pid: int) -> None:
    """A pool child exits: drop its live-gauge files (counters and "max" gauges are kept)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)
