"""The API's Prometheus endpoint, on a port of its own (not the public one).

`/metrics` carries customer ids in its labels and takes no key, so it is not served on the
API's public port: gunicorn's master process serves it on ``PAGELANE_API_METRICS_PORT`` (9807),
bound to ``PAGELANE_METRICS_BIND`` (127.0.0.1 unless a deployment that scrapes from outside the
container says otherwise), adding up every gunicorn worker's multiprocess files as the worker's
9808 endpoint does for its pool children. :func:`when_ready` is the gunicorn hook
(``pagelane api`` passes ``-c python:service.api.gunicorn_conf``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.registry import Collector
from sqlalchemy.orm import sessionmaker

from service import metrics
from service.db import make_engine
from service.settings import Settings

log = logging.getLogger("pagelane.metrics")


class _FleetOnce(Collector):
    """The fleet gauges, with no database connection kept between scrapes: this runs in
    gunicorn's master, whose forked workers must not inherit an open connection."""

    def __init__(self, settings: Settings) -> None:
        self._engine = make_engine(settings)
        self._fleet = metrics.FleetCollector(sessionmaker(self._engine))

    def describe(self) -> Iterable[Any]:
        return self._fleet.describe()

    def collect(self) -> Iterator[Any]:
        try:
            yield from self._fleet.collect()
        finally:
            self._engine.dispose()


def serve_api_metrics(settings: Settings) -> bool:
    """Serve the API role's metrics (every gunicorn worker's, plus the fleet gauges) on the
    metrics port; False when the port is 0 or cannot be bound (the API still serves)."""
    port, addr = settings.api_metrics_port, settings.metrics_bind
    if port <= 0:
        return False
    registry = metrics.scrape_registry([_FleetOnce(settings)])
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.error(
            "API metrics: cannot listen on %s:%d (%s); set PAGELANE_API_METRICS_PORT to a free "
            "port, or 0 to turn the endpoint off",
            addr,
            port,
            exc,
        )
        return False
    log.info("API metrics on http://%s:%d/metrics", addr, port)
    return True
