"""Quotes (SPEC "Quotes (dry run)"): what a batch would cost and how each file would end.

The API inserts a quote and one ``quote_items`` row per file (in position order), then
publishes chunks of files to the ``quotes`` queue, each message carrying what judging its files
needs (position, blob key, declared sha256) and the options, so that a worker reads nothing
before it starts fetching. A worker fetches each file and runs
``ocr.quote_probe`` (page count, pages needing OCR, or the item error code extraction would end
with) and records a chunk's answers in one transaction that also counts down ``files_left``;
the transaction that brings it to zero completes the quote (:func:`complete`): it applies the
customer's remaining quota in position order exactly as the workers bill (the first document
the quota cannot cover fails ``payment_required``, and so does every later one), and the
estimated duration.

Duration model (constants from the bench figures in docs/engine.md, "Figures"): a page read
from its text layer costs ``TEXT_PAGE_SECONDS`` (full extraction with tables and images, ~100
pages/s), an OCR page ``OCR_PAGE_SECONDS`` (tesseract at 300 dpi, 1.1-1.3 s a page on one core),
and every item ``ITEM_SECONDS`` of fetch, claim, finish and result upload. The customer's
queue (its pending and running items, pages known or assumed 1 text page) runs first; work
spreads over the customer's concurrency cap, and no estimate is shorter than its longest
document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from service.clock import utcnow
from service.ids import new_id
from service.models import Customer, File, Item, ItemStatus, Quote, QuoteItem, QuoteStatus

TEXT_PAGE_SECONDS = 0.01
OCR_PAGE_SECONDS = 1.2
ITEM_SECONDS = 0.05
#: A quote is cut into about this many worker tasks (:func:`chunk_files`): enough to spread it
#: over that many worker processes, few enough that the per-task cost (a message through the
#: consumer, a transaction, ~5 ms of CPU) stays a few percent of judging the files.
QUOTE_CHUNKS = 16
#: bounds of a task's files: a few files are not worth a message; a chunk of the largest quote
#: (10,000 files) is ~0.2 s of one-page work, so no process holds on to a long tail of it
CHUNK_FILES_MIN = 25
CHUNK_FILES_MAX = 100


def chunk_files(files: int) -> int:
    """Files per worker task for a quote of ``files`` files (bench.quotes: 1,000 one-page PDFs
    in 40 tasks of 25 cost 0.42 s of CPU outside the sandboxes, fetching included; in 10 of
    100, 0.25 s)."""
    return max(CHUNK_FILES_MIN, min(CHUNK_FILES_MAX, -(-files // QUOTE_CHUNKS)))


UPLOAD_MISSING = "upload_missing"
PAYMENT_REQUIRED = "payment_required"


@dataclass(frozen=True)
class QuoteFile:
    file_id: str
    #: None when no bytes were uploaded: the item would fail ``upload_missing``
    blob_key: str | None
    sha256_declared: str | None


#: one file of a chunk message: ``[position, blob_key, sha256_declared]`` (JSON: a list)
ChunkFile = tuple[int, str, str | None]
#: (quote id, its chunks of files, the quote's options) → a task message a chunk on the quotes
#: queue (tasks.app.quote_chunk_publisher; the API publishes a new quote's, the stalled-quote
#: sweep a stalled one's)
PublishQuoteChunks = Callable[[str, list[list[ChunkFile]], dict[str, Any]], None]
#: a pending quote none of whose chunks was answered for this long lost a message (a worker
#: died mid-chunk): the sweep publishes its unanswered files again. A chunk judges up to 100
#: files; even of long documents that is well under this.
STALLED_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class FileAnswer:
    position: int
    page_count: int | None
    ocr_pages: int | None
    error_code: str | None


def create_quote(
    session: Session,
    *,
    customer: Customer,
    files: Sequence[QuoteFile],
    options: dict[str, Any],
    now: datetime,
    retention: timedelta,
) -> tuple[Quote, list[list[ChunkFile]]]:
    """Insert the quote and its files; returns it and the chunks of files for the workers."""
    queued = session.execute(
        select(func.count(), func.coalesce(func.sum(func.coalesce(Item.page_count, 1)), 0)).where(
            Item.customer_id == customer.id,
            Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)),
        )
    ).one()
    missing = sum(1 for f in files if f.blob_key is None)
    quote = Quote(
        id=new_id("quote"),
        customer_id=customer.id,
        status=QuoteStatus.PENDING,
        options=options,
        file_count=len(files),
        files_left=len(files) - missing,
        queued_items=int(queued[0]),
        queued_pages=int(queued[1]),
        totals=None,
        created_at=now,
        progress_at=now,
        completed_at=None,
        expires_at=now + retention,
    )
    session.add(quote)
    session.flush()
    rows = [
        {
            "quote_id": quote.id,
            "position": position,
            "file_id": f.file_id,
            "done": f.blob_key is None,
            "error_code": UPLOAD_MISSING if f.blob_key is None else None,
        }
        for position, f in enumerate(files)
    ]
    # Core, not the ORM's bulk-insert path: the rows are plain dicts already and need none of
    # its bookkeeping (this runs before the first chunk can be published).
    connection = session.connection()
    for start in range(0, len(rows), 5000):
        connection.execute(insert(QuoteItem), rows[start : start + 5000])
    if quote.files_left == 0:
        complete(session, quote)
    waiting = [
        (position, f.blob_key, f.sha256_declared)
        for position, f in enumerate(files)
        if f.blob_key is not None
    ]
    return quote, chunked(waiting)


def chunked(files: list[ChunkFile]) -> list[list[ChunkFile]]:
    """``files`` cut into the worker tasks of :func:`chunk_files`."""
    size = chunk_files(len(files))
    return [files[i : i + size] for i in range(0, len(files), size)]


def _stalled(now: datetime) -> Any:
    last_moved = func.coalesce(Quote.progress_at, Quote.created_at)
    return and_(
        Quote.status == QuoteStatus.PENDING,
        last_moved < now - STALLED_AFTER,
        Quote.expires_at > now,
    )


def stalled_quotes(session: Session, now: datetime, limit: int = 100) -> list[Any]:
    """Pending quotes, not expired, that have not progressed for :data:`STALLED_AFTER`:
    rows of (id, options)."""
    return list(session.execute(select(Quote.id, Quote.options).where(_stalled(now)).limit(limit)))


def restart_stall_clock(session: Session, quote_id: str, now: datetime) -> bool:
    """Mark a stalled quote as moved now; False if it is no longer stalled (a chunk answered
    meanwhile, or another sweep got there first): only the caller that gets True republishes."""
    moved = session.connection().execute(
        update(Quote).where(Quote.id == quote_id, _stalled(now)).values(progress_at=now)
    )
    return bool(moved.rowcount)


def unanswered_files(session: Session, quote_id: str) -> list[ChunkFile]:
    """The quote's files no chunk has answered yet, as a chunk message names them (a file
    deleted since is named all the same: its fetch finds nothing, ``upload_missing``)."""
    rows = session.execute(
        select(QuoteItem.position, File.blob_key, File.sha256_declared)
        .join(File, File.id == QuoteItem.file_id)
        .where(QuoteItem.quote_id == quote_id, QuoteItem.done.is_(False))
        .order_by(QuoteItem.position)
    )
    return [(position, blob_key, sha256) for position, blob_key, sha256 in rows]


# Built once with bound parameters: one executemany per chunk (record_answers).
_RECORD_ANSWER = (
    update(QuoteItem)
    .where(
        QuoteItem.quote_id == bindparam("p_quote_id"),
        QuoteItem.position == bindparam("p_position"),
        QuoteItem.done.is_(False),
    )
    .values(
        done=True,
        page_count=bindparam("p_page_count"),
        ocr_pages=bindparam("p_ocr_pages"),
        error_code=bindparam("p_error_code"),
    )
)


def record_answers(session: Session, quote_id: str, answers: Sequence[FileAnswer]) -> bool:
    """Store a chunk's answers; True when this completed the quote. A redelivered chunk
    changes nothing (only rows not yet done are written and counted)."""
    if not answers:
        return False
    # One executemany for the chunk (a statement built per answer cost as much as judging the
    # file); both drivers sum an executemany's rowcount (supports_sane_multi_rowcount).
    result = session.connection().execute(
        _RECORD_ANSWER,
        [
            {
                "p_quote_id": quote_id,
                "p_position": answer.position,
                "p_page_count": answer.page_count,
                "p_ocr_pages": answer.ocr_pages,
                "p_error_code": answer.error_code,
            }
            for answer in answers
        ],
    )
    written = result.rowcount
    if not written:
        return False
    # The row lock taken here orders the chunks' countdowns: exactly one sees zero.
    left = session.execute(
        update(Quote)
        .where(Quote.id == quote_id)
        .values(files_left=Quote.files_left - written, progress_at=utcnow())
        .returning(Quote.files_left)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    if left > 0:
        return False
    quote = session.get(Quote, quote_id, populate_existing=True)
    assert quote is not None
    complete(session, quote)
    return True


def complete(session: Session, quote: Quote) -> None:
    """Apply the quota in position order (as the workers bill) and fill in the totals."""
    customer = session.get(Customer, quote.customer_id)
    assert customer is not None
    remaining = (
        None
        if customer.page_quota is None
        else max(0, customer.page_quota - customer.pages_used - customer.pages_reserved)
    )
    items = session.execute(
        select(QuoteItem.position, QuoteItem.page_count, QuoteItem.ocr_pages, QuoteItem.error_code)
        .where(QuoteItem.quote_id == quote.id)
        .order_by(QuoteItem.position)
    ).all()
    left = remaining
    over_quota: list[int] = []
    pages = ocr_pages = billable = failures = 0
    work: list[float] = []
    for item in items:
        pages += item.page_count or 0
        ocr_pages += item.ocr_pages or 0
        # Once the quota cannot cover a document, every later pending item fails with it,
        # whatever it would have ended with (service workers: _fail_for_quota).
        if over_quota or (left is not None and item.error_code is None and item.page_count > left):
            over_quota.append(item.position)
            failures += 1
            continue
        if item.error_code is not None:
            failures += 1
            work.append(ITEM_SECONDS)
            continue
        if left is not None:
            left -= item.page_count
        billable += item.page_count
        text = item.page_count - (item.ocr_pages or 0)
        work.append(
            ITEM_SECONDS + text * TEXT_PAGE_SECONDS + (item.ocr_pages or 0) * OCR_PAGE_SECONDS
        )
    for start in range(0, len(over_quota), 5000):
        session.execute(
            update(QuoteItem)
            .where(
                QuoteItem.quote_id == quote.id,
                QuoteItem.position.in_(over_quota[start : start + 5000]),
            )
            .values(error_code=PAYMENT_REQUIRED)
            .execution_options(synchronize_session=False)
        )
    cap = max(1, customer.concurrency)
    queued = quote.queued_items * ITEM_SECONDS + quote.queued_pages * TEXT_PAGE_SECONDS
    estimate = max((queued + sum(work)) / cap, max(work, default=0.0))
    quote.totals = {
        "pages": pages,
        "billable_pages": billable,
        "ocr_pages": ocr_pages,
        "predicted_failures": failures,
        "quota_remaining": remaining,
        "fits_quota": not over_quota,
        "estimated_seconds": round(estimate, 1),
    }
    quote.status = QuoteStatus.COMPLETED
    quote.completed_at = utcnow()


def quote_items(session: Session, quote_id: str) -> list[Any]:
    """The quote's files in position order, as plain rows of what the resource shows: clients
    poll this while workers run on the same machines (as ORM objects, a poll of 1,000 files
    cost 37 ms; bench.quotes)."""
    return list(
        session.execute(
            select(
                QuoteItem.file_id, QuoteItem.page_count, QuoteItem.ocr_pages, QuoteItem.error_code
            )
            .where(QuoteItem.quote_id == quote_id)
            .order_by(QuoteItem.position)
        )
    )


def delete_expired(session: Session, now: datetime, limit: int = 500) -> int:
    """Quotes past retention, with their files (the retention sweep)."""
    from sqlalchemy import delete

    ids = list(session.scalars(select(Quote.id).where(Quote.expires_at <= now).limit(limit)))
    if ids:
        session.execute(delete(QuoteItem).where(QuoteItem.quote_id.in_(ids)))
        session.execute(delete(Quote).where(Quote.id.in_(ids)))
    return len(ids)
