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

import ocr
from ocr.sandbox import INLINE_MAX_BYTES, SandboxCrashError
from service import quotes
from service.db import transaction
from service.extraction import ocr_config
from service.storage import BlobNotFoundError, BlobTooLargeError
from tasks.context import TaskContext

log = logging.getLogger("pagelane.quotes")


def run_quote_chunk(
    ctx: TaskContext, quote_id: str, files: list[Any], options: dict[str, Any] | None
) -> int:
    """Answer a chunk of a quote's files (``[position, blob_key, sha256_declared]`` each, as
    the API published them); returns how many files were judged. The message carries all
    the chunk needs, so the database is touched once, to record the answers: a redelivered
    chunk (or one of a quote that expired meanwhile) is judged again and records nothing."""
    answers = _answer_files(ctx, files, options, ocr_config(ctx.settings))
    with transaction(ctx.session_factory) as session:
        quotes.record_answers(session, quote_id, answers)
    return len(answers)


def _answer_files(
    ctx: TaskContext,
    files: list[Any],
    options: dict[str, Any] | None,
    config: ocr.EngineConfig,
) -> list[quotes.FileAnswer]:
    """Each file's answer. Documents are judged in the worker's capped sandbox child, like an
    extraction (a hostile document costs that child only); small ones go together, up to
    ``INLINE_MAX_BYTES`` a round trip, so that at most that much waits in this process's
    memory beside the one document being fetched."""
    answers: list[quotes.FileAnswer] = []
    waiting: list[tuple[int, bytes]] = []  # (position, bytes) fetched, not yet judged

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

    for position, blob_key, sha256_declared in files:
        fetched = _fetch(ctx, blob_key, sha256_declared)
        if isinstance(fetched, str):
            answers.append(quotes.FileAnswer(position, None, None, fetched))
            continue
        if sum(len(data) for _, data in waiting) + len(fetched) > INLINE_MAX_BYTES:
            judge_waiting()
        waiting.append((position, fetched))
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


def redispatch_stalled_quotes(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Pending quotes that have not moved for ``quotes.STALLED_AFTER``: a chunk's message was
    lost with a worker that died mid-chunk (a pool child killed alone acknowledges its message;
    a whole worker's comes back only after the visibility timeout). Their unanswered files are
    published again and the clock restarts, so a quote is retried once a period at most. A
    chunk that was only slow is judged twice, and answered once: record_answers writes only
    rows not yet done."""
    counts = {"quotes_redispatched": 0, "files_redispatched": 0}
    with ctx.session_factory() as session:
        stalled = quotes.stalled_quotes(session, now)
    for quote_id, options in stalled:
        with transaction(ctx.session_factory) as session:
            if not quotes.restart_stall_clock(session, quote_id, now):
                continue
            files = quotes.unanswered_files(session, quote_id)
        if files:
            ctx.publish_quote_chunks(quote_id, quotes.chunked(files), options)
            counts["quotes_redispatched"] += 1
            counts["files_redispatched"] += len(files)
            log.warning("quote %s stalled: %d files published again", quote_id, len(files))
    return counts


def prune_quotes(ctx: TaskContext, now: datetime) -> dict[str, int]:
    """Quotes expire with retention (the sweep)."""
    with transaction(ctx.session_factory) as session:
        return {"quotes_deleted": quotes.delete_expired(session, now)}
