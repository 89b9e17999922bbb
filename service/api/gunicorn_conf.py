"""gunicorn settings module of `pagelane api` (``-c python:service.api.gunicorn_conf``)."""

from __future__ import annotations

from typing import Any


def when_ready(server: Any) -> None:
    """In the master, once the public socket is bound: the metrics port (metrics_server.py)."""
    from service.api.metrics_server import serve_api_metrics
    from service.settings import load_settings

    serve_api_metrics(load_settings())
