"""`POST /v1/extract/file`: the same engine, in the request, for small documents.

SPEC "Request limits": its own rate budget, a per-customer cap on concurrent sync extractions
(both taken in :func:`admit_sync_request`, before the body is read), the upload on disk (never
read whole into the API's memory by this module), a time limit (504, nothing billed).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tempfile
import time
from typing import IO, Any

from flask import Request, Response, g, request
from flask_openapi3 import APIBlueprint, Tag

import ocr
from service.api.common import caller, json_response, responses, service
from service.api.errors import ApiError, validation_error
from service.api.schemas import ExtractForm, ExtractionResult
from service.billing import release_pages, reserve_pages, settle_pages
from service.clock import utcnow
from service.db import transaction
from service.extraction import ocr_config
from service.ids import new_id

tag = Tag(name="extract", description="Synchronous extraction of one document.")

# SPEC "Sync extraction": engine error codes → HTTP statuses.
STATUS_BY_CODE = {
    "unsupported_input": 415,
    "document_too_large": 413,
    "page_limit_exceeded": 422,
    "extraction_failed": 422,
    "ocr_provider_error": 503,
}
# How long a request's concurrency slot outlives the time limit when its process dies holding it.
SLOT_LEASE_MARGIN_SECONDS = 30.0
# What a client over the concurrency cap is told to wait: one short extraction.
CONCURRENCY_RETRY_AFTER = "2"


class DiskUploadRequest(Request):
    """Multipart files go to a named temporary file from the first byte (werkzeug's default
    keeps up to 500 KB in memory, then an unnamed file): the engine is handed a path, and the
    document never sits in the API's memory. werkzeug closes (so deletes) it when the request
    ends."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return tempfile.NamedTemporaryFile("wb+", prefix="pagelane-sync-", suffix=".upload")


def admit_sync_request() -> None:
    """Before the body is read: count the request against the key's sync budget (429
    ``rate_limited``), then take one of the customer's sync slots (429
    ``too_many_concurrent_requests``). :func:`release_sync_slot` gives it back."""
    if request.method == "OPTIONS":
        return  # werkzeug's automatic answer: no extraction, nothing to count
    ctx = service()
    principal = caller()
    decision = ctx.sync_rate_limiter.hit(principal.key_id)
    g.rate_limit_headers = decision.headers()
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"at most {decision.limit} sync extractions per window on this key",
            headers=decision.headers(),
        )
    holder = secrets.token_hex(8)
    settings = ctx.settings
    if not ctx.sync_slots.acquire(
        principal.customer_id,
        holder,
        cap=settings.sync_concurrency,
        lease_seconds=settings.sync_timeout_seconds + SLOT_LEASE_MARGIN_SECONDS,
    ):
        raise ApiError(
            429,
            "too_many_concurrent_requests",
            f"at most {settings.sync_concurrency} sync extractions at once per account; "
            "retry when one finishes, or use the batch lane",
            headers={**decision.headers(), "Retry-After": CONCURRENCY_RETRY_AFTER},
            limit=settings.sync_concurrency,
        )
    g.sync_slot = (principal.customer_id, holder)


def release_sync_slot(_exc: BaseException | None) -> None:
    slot = g.pop("sync_slot", None)
    if slot is not None:
        service().sync_slots.release(*slot)


def make_extract_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "extract", __name__, url_prefix="/v1/extract", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )

    @bp.post(
        "/file",
        responses=responses(ExtractionResult, 401, 402, 413, 415, 422, 429, 503, 504),
    )
    def extract_file(form: ExtractForm) -> Response:
        """Extract one uploaded document and return the result (billed per page)."""
        ctx = service()
        settings = ctx.settings
        languages = form.languages or ["eng"]
        options = {
            "extract_text": form.extract_text,
            "extract_images": form.extract_images,
            "extract_tables": form.extract_tables,
            "ocr": form.ocr,
            "languages": languages,
        }
        try:
            ocr.validate_languages(languages)
        except ocr.errors.ExtractionError as exc:
            raise validation_error(["form", "languages"], exc.message, "language") from exc
        path = _upload_path(form.file.stream)
        if os.path.getsize(path) > settings.max_file_bytes:
            raise ApiError(
                413, "document_too_large", f"the document exceeds {settings.max_file_bytes} bytes"
            )
        deadline = time.monotonic() + settings.sync_timeout_seconds
        customer_id = caller().customer_id
        config = dataclasses.replace(
            ocr_config(settings), document_timeout_s=settings.sync_timeout_seconds
        )
        try:
            pages = _probe(path, config)
        except ocr.errors.ExtractionError as exc:
            raise _engine_error(exc) from exc
        with transaction(ctx.session_factory) as session:
            if not reserve_pages(session, customer_id, pages):
                raise ApiError(
                    402,
                    "payment_required",
                    "the page quota of this account cannot cover this document",
                )
        try:
            result = _run_extraction(
                path, options, filename=form.file.filename, config=config, deadline=deadline
            )
            if time.monotonic() > deadline:
                # The engine's own budget is cooperative; whatever overran it is not billed.
                raise SyncTimeoutError()
        except BaseException as exc:
            with transaction(ctx.session_factory) as session:
                release_pages(session, customer_id, pages)
            if isinstance(exc, SyncTimeoutError | ocr.errors.ExtractionTimeoutError):
                raise ApiError(
                    504,
                    "extraction_timeout",
                    f"the extraction did not finish within {settings.sync_timeout_seconds:g} s; "
                    "nothing was billed (submit large documents as a batch)",
                ) from exc
            if isinstance(exc, ocr.errors.ExtractionError):
                raise _engine_error(exc) from exc
            raise
        with transaction(ctx.session_factory) as session:
            settle_pages(
                session,
                billing_id=new_id("sync"),
                customer_id=customer_id,
                batch_id=None,
                reserved=pages,
                pages=result["pages_billed"],
                now=utcnow(),
            )
        return json_response(result)

    return bp


class SyncTimeoutError(Exception):
    """The sync extraction ran past ``PAGELANE_SYNC_TIMEOUT_SECONDS``."""


def _upload_path(stream: Any) -> str:
    """The on-disk path of the uploaded document (parsed by :class:`DiskUploadRequest`)."""
    name = getattr(stream, "name", None)
    if not isinstance(name, str) or not os.path.isfile(name):
        raise RuntimeError("the upload is not on disk: the app must use DiskUploadRequest")
    stream.flush()
    return name


def _probe(path: str, config: ocr.EngineConfig) -> int:
    """The page count, counted in the API process's capped sandbox child (it reads the file)."""
    return service().sandbox.probe(path, config=config).page_count


def _run_extraction(
    path: str,
    options: dict[str, Any],
    *,
    filename: str | None,
    config: ocr.EngineConfig,
    deadline: float,
) -> dict[str, Any]:
    """THE place the sync endpoint calls the engine: the document at ``path``, by ``deadline``
    (time.monotonic()). Raises :class:`ocr.errors.ExtractionError` (its code decides the HTTP
    status; a child killed at the deadline is ``ExtractionTimeoutError``).

    The API process never holds the document: a capped warm child of its sandbox reads the file
    itself, so whatever the document does (a bomb, a hang) ends that child, not this process.
    """
    return service().sandbox.extract(
        path,
        options,
        filename=filename,
        config=config,
        timeout_s=max(0.1, deadline - time.monotonic()),
    )


def _engine_error(exc: ocr.errors.ExtractionError) -> ApiError:
    return ApiError(STATUS_BY_CODE.get(exc.code, 422), exc.code, exc.message)
