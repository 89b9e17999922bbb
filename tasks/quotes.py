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
from typing import Any

from sqlalchemy import bindparam, select

import ocr
from ocr.sandbox import INLINE_MAX_BYTES, SandboxCrashError
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
    answers = _answer_rows(ctx, list(rows), config)
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


def _answer_rows(
    ctx: TaskContext, rows: list[Any], config: ocr.EngineConfig
) -> list[quotes.FileAnswer]:
    """Each row's answer. Documents are judged in the worker's capped sandbox child, like an
    extraction (a hostile document costs that child only); small ones go together, up to
    ``INLINE_MAX_BYTES`` a round trip, so that at most that much waits in this process's
    memory beside the one document being fetched."""
    answers: list[quotes.FileAnswer] = []
    waiting: list[tuple[int, bytes]] = []  # (position, bytes) fetched, not yet judged
    options = rows[0].options if rows else None

    def judge_waiting() -> None:
        judged = ctx.sandbox.quote_many([data for _, data in waiting], options, config=config)
        for (position, _), found in zip(waiting, judged, strict=True):
            if isinstance(found, ocr.errors.ExtractionError):
                answers.append(quotes.FileAnswer(position, None, None, found.code))
            elif isinstance(found, SandboxCrashError):  # what the item task ends it with
                log.error("quote probe crashed: %s", found)
                answers.append(quotes.FileAnswer(position, None, None, "internal_error"))
            else:
                answers.append(quotes.FileAnswer(position, found[0], found[1], None))
        waiting.clear()

    for row in rows:
        fetched = _fetch(ctx, row.blob_key, row.sha256_declared)
        if isinstance(fetched, str):
            answers.append(quotes.FileAnswer(row.position, None, None, fetched))
            continue
        if sum(len(data) for _, data in waiting) + len(fetched) > INLINE_MAX_BYTES:
            judge_waiting()
        waiting.append((row.position, fetched))
    if waiting:
        judge_waiting()
    return answers


def _fetch(ctx: TaskContext, blob_key: str | None, sha256_declared: str | None) -> bytes | str:
    """The document's bytes, or the error code the item task would end it with before
    extracting (missing, too large, not the bytes the client declared)."""
    store = ctx.blob_store
    if store is None or blob_key is None:
        return "upload_missing"
    try:
        data = store.get(blob_key, max_bytes=ctx.settings.max_file_bytes)
    except BlobNotFoundError:
        return "upload_missing"
    except BlobTooLargeError:
        return "document_too_large"
    if sha256_declared and hashlib.sha256(data).hexdigest() != sha256_declared:
        return "extraction_failed"
    return data


def prune_quotes(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Quotes expire with retention (the sweep)."""
    with transaction(ctx.session_factory) as session:
        return {"quotes_deleted": quotes.delete_expired(session, now)}
