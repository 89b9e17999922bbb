"""`/v1/quotes`: a dry run of a batch (SPEC "Quotes (dry run)"); the work is in
``service/quotes.py`` and ``tasks/quotes.py``. Quotes count against the submission rate limit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import select

from service import quotes
from service.api.batches import _check_languages, _file_error
from service.api.common import caller, json_response, responses, service, submission_rate_limited
from service.api.errors import not_found, validation_error
from service.api.schemas import CreateBatch, QuotePath, QuoteResource
from service.clock import isoformat, utcnow
from service.db import transaction
from service.models import Customer, FileStatus, Quote
from service.uploads import load_file_states, refresh_uploads

tag = Tag(name="quotes", description="What a batch would cost and how it would end, first.")


def make_quotes_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "quotes", __name__, url_prefix="/v1/quotes", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )
    created = responses(QuoteResource, 401, 404, 422, 429)
    created[201] = created.pop(200)
    bp.post("", responses=created)(submission_rate_limited(create_quote))
    bp.get("/<quote_id>", responses=responses(QuoteResource, 401, 404, 422))(get_quote)
    return bp


def create_quote(body: CreateBatch) -> Response:
    """Quote a batch: pages, OCR pages, predicted errors, billable pages, duration."""
    ctx = service()
    if len(body.file_ids) > ctx.settings.max_files_per_batch:
        raise validation_error(
            ["body", "file_ids"],
            f"at most {ctx.settings.max_files_per_batch} file ids per batch",
            "too_long",
        )
    _check_languages(body.options.languages)
    customer_id = caller().customer_id
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        states = load_file_states(session, customer_id, body.file_ids)
        missing = [i for i in body.file_ids if i not in states]
        if missing:
            raise _file_error(404, "file_not_found", "unknown or expired file ids", missing)
        status = {file_id: state.status for file_id, state in states.items()}
        if ctx.blob_store is not None:
            status.update(refresh_uploads(session, ctx.blob_store, states.values()))
        expired = [i for i in body.file_ids if status[i] == FileStatus.EXPIRED]
        if expired:
            raise _file_error(404, "file_not_found", "unknown or expired file ids", expired)
        files = [
            quotes.QuoteFile(
                file_id=file_id,
                # Not uploaded: the batch would be refused (409), or the item would fail
                # upload_missing; the quote says upload_missing and spends nothing on it.
                blob_key=states[file_id].blob_key
                if status[file_id] == FileStatus.UPLOADED
                else None,
                sha256_declared=states[file_id].sha256_declared,
            )
            for file_id in body.file_ids
        ]
        customer = session.get(Customer, customer_id)
        assert customer is not None
        quote, chunks = quotes.create_quote(
            session,
            customer=customer,
            files=files,
            options=body.options.model_dump(),
            now=now,
            retention=timedelta(hours=ctx.settings.retention_hours),
        )
        quote_id = quote.id
        options = quote.options
    ctx.publish_quote_chunks(quote_id, chunks, options)
    return _quote_response(quote_id, status=201)


def get_quote(path: QuotePath) -> Response:
    """Poll a quote until ``status`` is ``completed``."""
    return _quote_response(path.quote_id)


def _quote_response(quote_id: str, status: int = 200) -> Response:
    ctx = service()
    with ctx.session_factory() as session:
        quote = session.scalar(
            select(Quote).where(
                Quote.id == quote_id,
                Quote.customer_id == caller().customer_id,
                Quote.expires_at > utcnow(),
            )
        )
        if quote is None:
            raise not_found("quote")
        items = quotes.quote_items(session, quote_id)
        return json_response(_body(quote, items), status)


def _body(quote: Quote, items: list[Any]) -> dict[str, Any]:
    done = quote.status == "completed"
    return {
        "id": quote.id,
        "object": "quote",
        "status": quote.status,
        "file_count": quote.file_count,
        "items": [
            {
                "file_id": file_id,
                "page_count": page_count,
                "ocr_pages": ocr_pages,
                "predicted_error": error_code,
            }
            for file_id, page_count, ocr_pages, error_code in items
        ],
        "totals": quote.totals if done else None,
        "created_at": isoformat(quote.created_at),
        "completed_at": isoformat(quote.completed_at),
    }
