"""The Flask application factory: the API's composition root.

It builds the API's context on the core parts (Redis, the dispatcher that publishes to the
workers, the rate limiter), registers the blueprints and the request hooks.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from typing import Any, cast

from flask import Response, current_app, g, redirect, request
from flask_openapi3 import Info, OpenAPI

import ocr
from service import logs, metrics
from service.api.account import make_account_blueprint
from service.api.auth import require_api_key
from service.api.batches import make_batches_blueprint
from service.api.blobs import make_blobs_blueprint
from service.api.concurrency import SyncSlots
from service.api.console import make_console_blueprint
from service.api.context import ApiContext
from service.api.control import make_control_blueprint
from service.api.downloads import make_downloads_blueprint
from service.api.errors import (
    body_too_large,
    register_error_handlers,
    validation_error_response,
)
from service.api.events import make_events_blueprint, register_events
from service.api.extract import (
    DiskUploadRequest,
    admit_sync_request,
    make_extract_blueprint,
    release_sync_slot,
)
from service.api.files import FileIdConverter, make_files_blueprint
from service.api.health import make_health_blueprint
from service.api.openapi import finish_document
from service.api.quotes import make_quotes_blueprint
from service.api.ratelimit import SubmissionRateLimiter
from service.api.webhooks import make_webhooks_blueprint
from service.context import ServiceContext, make_context
from service.migrate import check_schema_current
from service.settings import Settings, load_settings
from service.storage import LocalBlobStore
from tasks.app import make_celery, quote_chunk_publisher
from tasks.dispatch import Dispatcher, make_dispatcher, make_state_redis

log = logging.getLogger("pagelane.api")

# Requests larger than this are refused before any parsing (a 10,000-id batch is ~400 KB). Only
# the endpoints in LARGE_BODY_ENDPOINTS take more: documents up to the configured file size.
JSON_BODY_LIMIT = 8 * 1024 * 1024
# The multipart envelope around a document: boundaries, part headers and the option fields.
MULTIPART_OVERHEAD = 1024 * 1024
SYNC_EXTRACT_ENDPOINT = "extract.extract_file"
BLOB_UPLOAD_ENDPOINT = "blobs.receive_upload"


def create_app(
    settings: Settings | None = None,
    *,
    context: ServiceContext | None = None,
    dispatcher: Dispatcher | None = None,
    check_schema: bool = True,
) -> OpenAPI:
    """The API on ``settings`` (default: the environment). ``context`` supplies the core parts
    (tests share theirs), ``dispatcher`` the admission of submitted items (default: one that
    publishes to the workers through the broker)."""
    settings = settings or (context.settings if context else load_settings())
    context = _api_context(settings, context or make_context(settings), dispatcher)
    if check_schema:
        check_schema_current(context.engine)
    if context.blob_store is not None:
        # Fail at boot on a missing bucket or unwritable directory, not on the first upload.
        context.blob_store.ensure_ready()

    app = OpenAPI(
        __name__,
        info=Info(
            title="Pagelane",
            version="1.0.0",
            description="Async batch lane for document extraction (the extract.page batch API).",
        ),
        security_schemes={
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        },
        validation_error_status=422,
        validation_error_callback=validation_error_response,
        doc_prefix="/docs",
        doc_url="/openapi.json",
    )
    # Every route reads at most 8 MiB; the two document routes raise their own request's limit
    # (_limit_request_body). werkzeug enforces it on Content-Length before reading, and on a
    # chunked body while reading (the stream ends in 413 at the limit).
    app.config["MAX_CONTENT_LENGTH"] = JSON_BODY_LIMIT
    app.request_class = DiskUploadRequest
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["pagelane"] = context
    register_events(app, settings, context.session_factory, context.redis)

    app.url_map.converters["fileid"] = FileIdConverter
    extract = make_extract_blueprint()
    for blueprint in (
        make_files_blueprint(),
        make_batches_blueprint(),
        extract,
        make_control_blueprint(),
        make_quotes_blueprint(),
        make_events_blueprint(),
        make_webhooks_blueprint(),
        make_downloads_blueprint(),
        make_account_blueprint(),
    ):
        blueprint.before_request(require_api_key)
        if blueprint is extract:
            # After the key, before the body is read: the rate budget and a concurrency slot.
            blueprint.before_request(admit_sync_request)
            blueprint.teardown_request(release_sync_slot)
        app.register_api(blueprint)
    app.register_api(make_health_blueprint())
    # The web console: static pages (no key needed to load them; every call they make does).
    app.register_blueprint(make_console_blueprint(context.blob_store))

    if isinstance(context.blob_store, LocalBlobStore):
        app.register_blueprint(make_blobs_blueprint(context.blob_store))

    # Generated once, now that every route is registered, then completed (service/api/openapi.py).
    finish_document(
        app.api_doc,
        languages=sorted(ocr.available_languages()),
        max_file_bytes=settings.max_file_bytes,
        max_files_per_batch=settings.max_files_per_batch,
    )

    @app.get("/openapi.json", doc_ui=False)
    def openapi_document() -> Any:
        return app.api_doc

    @app.get("/docs", doc_ui=False)
    def docs_home() -> Any:
        return redirect("/docs/swagger", code=302)

    # /metrics is not on this (public) port: service/api/metrics_server.py.

    app.before_request(_assign_request_id)
    app.before_request(_limit_request_body)
    app.after_request(_finish_response)
    app.teardown_request(_forget_log_context)
    register_error_handlers(app)
    return app


def _api_context(
    settings: Settings, core: ServiceContext, dispatcher: Dispatcher | None
) -> ApiContext:
    state = make_state_redis(settings)
    # The API only publishes messages (items, quote chunks); its Celery app never consumes.
    celery = make_celery(settings)
    if dispatcher is None:
        dispatcher = make_dispatcher(core.session_factory, state, celery, settings)

    return ApiContext(
        **core.core_parts(),
        redis=state,
        dispatcher=dispatcher,
        rate_limiter=SubmissionRateLimiter(settings.require_redis(), settings.submit_rate_limit),
        sync_rate_limiter=SubmissionRateLimiter(
            settings.require_redis(), settings.sync_rate_limit, scope="sync"
        ),
        sync_slots=SyncSlots(state),
        publish_quote_chunks=quote_chunk_publisher(celery),
    )


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    # Accept a caller's id only if it is short and tame; it ends up in logs.
    g.request_id = (
        incoming
        if 0 < len(incoming) <= 64 and incoming.isascii()
        else ("req_" + secrets.token_hex(12))
    )
    g.request_started = time.perf_counter()
    # gthread reuses its threads: start from an empty context, not the previous request's.
    logs.clear()
    logs.bind(request_id=g.request_id)


def _limit_request_body() -> None:
    """The body limit of this request's route; a body over it is 413 at once, before
    authentication, rate limits or any parsing."""
    settings = cast(ApiContext, current_app.extensions["pagelane"]).settings
    if request.endpoint == SYNC_EXTRACT_ENDPOINT:
        request.max_content_length = settings.max_file_bytes + MULTIPART_OVERHEAD
    elif request.endpoint == BLOB_UPLOAD_ENDPOINT:
        # The view lowers it to the length signed into the URL once the signature checks out.
        request.max_content_length = settings.max_file_bytes + 1
    else:
        _buffer_unsized_body(JSON_BODY_LIMIT)
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise body_too_large(limit)


def _buffer_unsized_body(limit: int) -> None:
    """A chunked body (no Content-Length) on a small-body route: read at most ``limit`` + 1
    bytes of it now, 413 beyond, and hand the rest of the request a sized copy.

    werkzeug stops a chunked body at ``max_content_length`` by raising, except when it reads
    the whole body at once (``get_data``, hence ``get_json``): that silently returns the first
    ``limit`` bytes, and a truncated JSON document would then be a confusing 422."""
    environ = request.environ
    if request.content_length is not None or not environ.get("wsgi.input_terminated"):
        return
    stream = environ["wsgi.input"]
    body = bytearray()
    while len(body) <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise body_too_large(limit)
    environ["wsgi.input"] = io.BytesIO(bytes(body))
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.__dict__.pop("content_length", None)  # werkzeug caches it on the request


def _finish_response(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    for name, value in (g.get("rate_limit_headers") or {}).items():
        response.headers.setdefault(name, value)
    _observe_request(response.status_code)
    return response


def _observe_request(status: int) -> None:
    # The route template, not the path: ids in paths would make a series per resource.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    started = g.get("request_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    metrics.observe_http(route, request.method, status, seconds)


def _forget_log_context(_exc: BaseException | None) -> None:
    logs.clear()
