"""The customer's web console at ``/console``: static files, no build step.

The page is plain HTML, CSS and ES modules from ``service/api/console_assets/``; it talks to
the public API with the key the user typed (kept in the tab's ``sessionStorage``, sent only as
the ``X-API-KEY`` header). These routes carry no customer data and need no key, so they are a
plain ``flask.Blueprint`` outside the OpenAPI document.

Every response gets a strict Content-Security-Policy: scripts and styles only from this origin
(no inline script or style anywhere in the assets), network access only to this origin and the
blob store's (the browser PUTs uploads straight to presigned URLs), no framing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from service.storage import BlobStore, BlobStoreError, LocalBlobStore

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("console_assets")


def blob_store_origins(store: BlobStore | None) -> list[str]:
    """The origins the browser PUTs uploads to: the one of a presigned URL (S3 signs
    locally, no request is made), or the local store's public URL."""
    if store is None:
        return []
    try:
        if isinstance(store, LocalBlobStore):
            url = store.public_url
        else:
            url = store.presign_put(
                "console/csp-probe", content_length=1, content_type=None, expires_in=60
            ).url
    except (BlobStoreError, ValueError):
        log.warning("could not presign a probe URL; the console's CSP allows only 'self'")
        return []
    parts = urlsplit(url)
    return [f"{parts.scheme}://{parts.netloc}"] if parts.scheme and parts.netloc else []


def content_security_policy(connect_origins: list[str]) -> str:
    connect = " ".join(["'self'", *sorted(set(connect_origins))])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def make_console_blueprint(store: BlobStore | None) -> Blueprint:
    blueprint = Blueprint("console", __name__)
    policy = content_security_policy(blob_store_origins(store))

    @blueprint.get("/console")
    @blueprint.get("/console/")
    def console_page() -> BaseResponse:
        response = send_from_directory(ASSETS, "index.html", max_age=0)
        # The page is tiny and changes with each release: never serve a stale one.
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/console/assets/<path:name>")
    def console_asset(name: str) -> BaseResponse:
        # send_from_directory refuses paths that leave ASSETS (404). Assets are not
        # content-hashed (no build step): revalidate each time, a 304 costs nothing.
        response = send_from_directory(ASSETS, name, max_age=0)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @blueprint.get("/")
    def home() -> BaseResponse:
        return redirect("/console", code=302)

    @blueprint.after_request
    def security_headers(response: Response) -> Response:
        headers = response.headers
        headers["Content-Security-Policy"] = policy
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        return response

    return blueprint
