"""`POST /v1/extract/file`: the same engine, in the request, for small documents."""

from __future__ import annotations

from flask import Response
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


def make_extract_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "extract", __name__, url_prefix="/v1/extract", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )

    @bp.post(
        "/file",
        responses=responses(ExtractionResult, 401, 402, 413, 415, 422, 503),
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
        data = form.file.stream.read(settings.max_file_bytes + 1)
        if len(data) > settings.max_file_bytes:
            raise ApiError(
                413, "document_too_large", f"the document exceeds {settings.max_file_bytes} bytes"
            )
        config = ocr_config(settings)
        customer_id = caller().customer_id
        try:
            pages = ocr.probe(data, config=config).page_count
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
            result = ocr.extract(data, options, filename=form.file.filename, config=config)
        except BaseException as exc:
            with transaction(ctx.session_factory) as session:
                release_pages(session, customer_id, pages)
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


def _engine_error(exc: ocr.errors.ExtractionError) -> ApiError:
    return ApiError(STATUS_BY_CODE.get(exc.code, 422), exc.code, exc.message)
