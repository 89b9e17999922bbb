"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from service.api.common import json_response, service
from service.api.schemas import HealthResponse

tag = Tag(name="health", description="Probes for orchestrators.")


def make_health_blueprint() -> APIBlueprint:
    bp = APIBlueprint("health", __name__, abp_tags=[tag])

    @bp.get("/healthz", responses={200: HealthResponse})
    def healthz() -> Response:
        """The process is alive (no dependency checks: a DB outage must not restart the API)."""
        return json_response({"status": "ok", "checks": {}})

    @bp.get("/readyz", responses={200: HealthResponse, 503: HealthResponse})
    def readyz() -> Response:
        """Ready to serve: the database, Redis and the blob store answer."""
        ctx = service()
        checks: dict[str, str] = {}
        try:
            with ctx.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means not ready; the reason goes to the probe
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            ctx.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        if ctx.blob_store is not None:
            checks["blob_store"] = "ok" if ctx.blob_store.ping() else "error: unreachable"
        ready = all(v == "ok" for v in checks.values())
        return json_response(
            {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
        )

    return bp
