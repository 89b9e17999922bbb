"""Quote work: open each file of a chunk far enough to count its pages and judge its text layer.

Runs on the ``quotes`` queue, never on ``items``: a quote cannot delay extraction. Each file is
judged as the item task would end it, in the same order of checks (``tasks/items.py``): the
object missing → ``upload_missing``, larger than the limit → ``document_too_large`` (from the
stored size, before the body is read), a declared sha256 that does not match →
``extraction_failed``, then ``ocr.quote_probe`` (the engine's own checks and OCR decision) in the
worker's capped sandbox child, as an extraction would be.
Nothing is extracted, stored or billed.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from sqlalchemy import bindparam, select

import ocr
from service import quotes
from service.db import transaction
from service.extraction import ocr_config
from service.models import Quote, QuoteItem
from service.storage import BlobNotFoundError, BlobTooLargeError
from tasks.context import TaskContext

log = logging.getLogger("pagelane.quotes")


def run_quote_chunk(ctx: TaskContext, quote_id: str, start: int, end: int) -> int:
    """Answer positions ``[start, end)`` of a quote; returns how many were answered."""
    with ctx.session_factory() as session:
        # The quote's options ride along on every row: one query, not two, per chunk (no
        # rows: the chunk was answered already, or the quote expired and was deleted).
        rows = session.execute(
            _FILES_TO_ANSWER, {"p_quote_id": quote_id, "p_start": start, "p_end": end}
        ).all()
    config = ocr_config(ctx.settings)
    answers = [
        _answer(ctx, row.position, row.blob_key, row.sha256_declared, row.options, config)
        for row in rows
    ]
    if answers:
        with transaction(ctx.session_factory) as session:
            quotes.record_answers(session, quote_id, answers)
    return len(answers)


_FILES_TO_ANSWER = (
    select(QuoteItem.position, QuoteItem.blob_key, QuoteItem.sha256_declared, Quote.options)
    .join(Quote, Quote.id == QuoteItem.quote_id)
    .where(
        QuoteItem.quote_id == bindparam("p_quote_id"),
        QuoteItem.position >= bindparam("p_start"),
        QuoteItem.position < bindparam("p_end"),
        QuoteItem.done.is_(False),
    )
    .order_by(QuoteItem.position)
)


def _answer(
    ctx: TaskContext,
    position: int,
    blob_key: str | None,
    sha256_declared: str | None,
    options: dict,
    config: ocr.EngineConfig,
) -> quotes.FileAnswer:
    def failed(code: str) -> quotes.FileAnswer:
        return quotes.FileAnswer(position, None, None, code)

    store = ctx.blob_store
    if store is None or blob_key is None:
        return failed("upload_missing")
    try:
        data = store.get(blob_key, max_bytes=ctx.settings.max_file_bytes)
    except BlobNotFoundError:
        return failed("upload_missing")
    except BlobTooLargeError:
        return failed("document_too_large")
    if sha256_declared and hashlib.sha256(data).hexdigest() != sha256_declared:
        return failed("extraction_failed")
    try:
        # In the capped child, like an extraction: a hostile document costs that child only.
        pages, ocr_pages = ctx.sandbox.quote_bytes(data, options, config=config)
    except ocr.errors.ExtractionError as exc:
        return failed(exc.code)
    except Exception:
        log.exception("quote probe crashed")
        return failed("internal_error")
    return quotes.FileAnswer(position, pages, ocr_pages, None)


def prune_quotes(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Quotes expire with retention (the sweep)."""
    with transaction(ctx.session_factory) as session:
        return {"quotes_deleted": quotes.delete_expired(session, now)}
