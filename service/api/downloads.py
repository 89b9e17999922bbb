"""Downloads for people, not programs: a result as Markdown, a batch's results as one zip,
its errors as CSV (pagelane extensions, used by the console and documented in OpenAPI).

The zip is streamed: entries are written by ``zipfile`` into a sink that the response
generator drains after every entry, and the items are read from the database a page at a
time, so a 10,000-item batch downloads in memory bounded by a page of rows and a few results
in flight, never the archive. Only the zip's central directory (one small record per entry,
which ``zipfile`` must keep to write it at the end) grows with the batch.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, cast

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from service.api.common import caller, service
from service.api.errors import ApiError, not_found
from service.api.schemas import BatchPath, ErrorResponse, ItemPath
from service.clock import utcnow
from service.models import Batch, File, Item, ItemStatus
from service.storage import BlobNotFoundError, BlobStore, BlobStoreError

tag = Tag(name="downloads", description="Results as Markdown, a batch as a zip, errors as CSV.")

# Rows read per database round trip while streaming, and results fetched ahead of the one
# being written (each is one blob GET; ahead-fetching hides S3's latency).
PAGE_ROWS = 500
FETCH_AHEAD = 8
ZIP_CSV_HEADER = [
    "position",
    "item_id",
    "file_id",
    "filename",
    "status",
    "page_count",
    "entry",
    "error_code",
    "error_message",
]
ERRORS_CSV_HEADER = [
    "position",
    "item_id",
    "file_id",
    "filename",
    "status",
    "attempts",
    "error_code",
    "error_message",
]


class MarkdownQuery(BaseModel):
    download: bool = False


class ZipResponse(BaseModel):
    """``application/zip``: ``results/<position>-<name>.json`` per succeeded item (results past
    retention are left out) and ``manifest.csv`` (every item: status, entry, error)."""


class CsvResponse(BaseModel):
    """``text/csv``: one row per item that ended with an error code."""


class MarkdownResponse(BaseModel):
    """``text/markdown``: the result's text in reading order, tables as Markdown tables."""


def make_downloads_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "downloads",
        __name__,
        url_prefix="/v1/batches",
        abp_tags=[tag],
        abp_security=[{"ApiKey": []}],
    )
    bp.get(
        "/<batch_id>/results.zip",
        responses={200: ZipResponse, 401: ErrorResponse, 404: ErrorResponse},
    )(results_zip)
    bp.get(
        "/<batch_id>/errors.csv",
        responses={200: CsvResponse, 401: ErrorResponse, 404: ErrorResponse},
    )(errors_csv)
    bp.get(
        "/<batch_id>/items/<item_id>/result.md",
        responses={
            200: MarkdownResponse,
            401: ErrorResponse,
            404: ErrorResponse,
            409: ErrorResponse,
            410: ErrorResponse,
        },
    )(result_markdown)
    return bp


# --- endpoints -----------------------------------------------------------------------------


def results_zip(path: BatchPath) -> Response:
    """Every result of the batch as one zip, streamed as it is built (flat memory)."""
    ctx = service()
    _check_owned(path.batch_id)
    store = ctx.blob_store
    rows = _item_rows(ctx.session_factory, path.batch_id, caller().customer_id)
    body = _stream_zip(rows, store)
    return _attachment(body, "application/zip", f"{path.batch_id}-results.zip")


def errors_csv(path: BatchPath) -> Response:
    """The items that ended with an error code, as CSV (streamed)."""
    ctx = service()
    _check_owned(path.batch_id)
    rows = _item_rows(ctx.session_factory, path.batch_id, caller().customer_id, only_errors=True)
    return _attachment(
        _stream_errors_csv(rows), "text/csv; charset=utf-8", f"{path.batch_id}-errors.csv"
    )


def result_markdown(path: ItemPath, query: MarkdownQuery) -> Response:
    """One result as Markdown: text in reading order, each table as a Markdown table."""
    ctx = service()
    with ctx.session_factory() as session:
        row = session.execute(
            select(
                Item.status,
                Item.result_key,
                Item.result_deleted_at,
                Item.result_expires_at,
                File.filename,
            )
            .outerjoin(File, File.id == Item.file_id)
            .where(
                Item.id == path.item_id,
                Item.batch_id == path.batch_id,
                Item.customer_id == caller().customer_id,
            )
        ).first()
    if row is None:
        raise not_found("item")
    if row.status != ItemStatus.SUCCEEDED or row.result_key is None:
        raise ApiError(409, "result_not_ready", f"item is {row.status}", status=row.status)
    if _result_expired(row):
        raise ApiError(410, "result_expired", "the result was deleted after retention")
    assert ctx.blob_store is not None  # an item only succeeds by writing its result there
    try:
        result = json.loads(ctx.blob_store.get(row.result_key))
    except BlobNotFoundError as exc:
        raise ApiError(410, "result_expired", "the result is no longer stored") from exc
    title = row.filename or path.item_id
    response = Response(render_markdown(result, title), mimetype="text/markdown")
    response.headers["Content-Type"] = "text/markdown; charset=utf-8"
    if query.download:
        name = f"{_safe_stem(row.filename or path.item_id)}.md"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# --- reading items a page at a time ----------------------------------------------------------

_ITEM_COLUMNS = (
    Item.id,
    Item.position,
    Item.file_id,
    Item.status,
    Item.attempts,
    Item.page_count,
    Item.error_code,
    Item.error_message,
    Item.result_key,
    Item.result_deleted_at,
    Item.result_expires_at,
    File.filename,
)


def _item_rows(
    session_factory: Callable[[], Session],
    batch_id: str,
    customer_id: str,
    *,
    only_errors: bool = False,
) -> Iterator[Row[Any]]:
    """The batch's items in position order, ``PAGE_ROWS`` per query (keyset on position), each
    query in a short session of its own: nothing is held open while the client downloads."""
    statement = (
        select(*_ITEM_COLUMNS)
        .outerjoin(File, File.id == Item.file_id)
        .where(
            Item.batch_id == batch_id,
            Item.customer_id == customer_id,
            Item.position > bindparam("after"),
        )
        .order_by(Item.position)
        .limit(PAGE_ROWS)
    )
    if only_errors:
        statement = statement.where(Item.error_code.is_not(None))
    after = -1
    while True:
        with session_factory() as session:
            page: list[Any] = list(session.execute(statement, {"after": after}))
        yield from page
        if len(page) < PAGE_ROWS:
            return
        after = page[-1].position


def _check_owned(batch_id: str) -> None:
    with service().session_factory() as session:
        found = session.scalar(
            select(Batch.id).where(Batch.id == batch_id, Batch.customer_id == caller().customer_id)
        )
    if found is None:
        raise not_found("batch")


def _result_expired(row: Any) -> bool:
    return row.result_deleted_at is not None or (
        row.result_expires_at is not None and row.result_expires_at <= utcnow()
    )


# --- the zip ------------------------------------------------------------------------------------


class _Sink:
    """A write-only file for ``zipfile``: it has no ``tell``/``seek``, so zipfile writes data
    descriptors after each entry instead of seeking back, and what it wrote can be handed to
    the client after every entry."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def _stream_zip(rows: Iterator[Row[Any]], store: BlobStore | None) -> Iterator[bytes]:
    sink = _Sink()
    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(ZIP_CSV_HEADER)
    stamp = utcnow().timetuple()[:6]
    with ThreadPoolExecutor(max_workers=FETCH_AHEAD, thread_name_prefix="zip") as pool:
        with zipfile.ZipFile(
            cast(IO[bytes], sink), mode="w", compression=zipfile.ZIP_DEFLATED
        ) as archive:
            for row, future in _fetch_ahead(rows, store, pool):
                entry = ""
                data = future.result() if future is not None else None
                if data is not None:
                    entry = f"results/{row.position:05d}-{_safe_stem(row.filename or row.id)}.json"
                    info = zipfile.ZipInfo(entry, date_time=stamp)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, data)
                writer.writerow(
                    _csv_safe(
                        [
                            row.position,
                            row.id,
                            row.file_id,
                            row.filename or "",
                            row.status,
                            "" if row.page_count is None else row.page_count,
                            entry,
                            row.error_code or "",
                            row.error_message or "",
                        ]
                    )
                )
                chunk = sink.drain()
                if chunk:
                    yield chunk
            info = zipfile.ZipInfo("manifest.csv", date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            # The manifest is one short line per item (~150 bytes): 1.5 MB for 10,000 items.
            archive.writestr(info, manifest.getvalue().encode())
        yield sink.drain()


def _fetch_ahead(
    rows: Iterator[Row[Any]], store: BlobStore | None, pool: ThreadPoolExecutor
) -> Iterator[tuple[Row[Any], Future[bytes | None] | None]]:
    """``(row, future of its result bytes or None)`` in order, with up to ``FETCH_AHEAD``
    results being fetched ahead of the one consumed."""
    window: deque[tuple[Row[Any], Future[bytes | None] | None]] = deque()
    for row in rows:
        future = None
        wanted = row.status == ItemStatus.SUCCEEDED and row.result_key and not _result_expired(row)
        if wanted and store is not None:
            future = pool.submit(_read_result, store, row.result_key)
        window.append((row, future))
        if len(window) > FETCH_AHEAD:
            yield window.popleft()
    yield from window


def _read_result(store: BlobStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except BlobNotFoundError:
        return None  # deleted by the retention sweep since the row was read: left out
    except BlobStoreError:
        # The response has started: the best we can do is leave the entry out (the manifest
        # shows no entry for it) rather than cut the archive short.
        return None


# --- the errors CSV ---------------------------------------------------------------------------


def _stream_errors_csv(rows: Iterator[Row[Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(ERRORS_CSV_HEADER)
    for count, row in enumerate(rows, start=1):
        writer.writerow(
            _csv_safe(
                [
                    row.position,
                    row.id,
                    row.file_id,
                    row.filename or "",
                    row.status,
                    row.attempts,
                    row.error_code or "",
                    row.error_message or "",
                ]
            )
        )
        if count % PAGE_ROWS == 0:
            yield _take(buffer)
    yield _take(buffer)


def _take(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data


def _csv_safe(values: list[Any]) -> list[Any]:
    """Cells a spreadsheet would run as a formula (CSV injection) get a leading quote;
    filenames and error messages come from customers and documents."""
    return [
        "'" + value
        if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r")
        else value
        for value in values
    ]


# --- Markdown ---------------------------------------------------------------------------------


def render_markdown(result: dict[str, Any], title: str) -> str:
    """The Extract result as Markdown: a heading per page, text chunks as paragraphs, tables
    as GitHub-flavoured Markdown tables (from their cells), images as a placeholder line."""
    lines: list[str] = [f"# {_one_line(title)}", ""]
    page: int | None = None
    for chunk in result.get("chunks") or []:
        if chunk.get("page_no") != page:
            page = chunk.get("page_no")
            lines += [f"## Page {page}", ""]
        kind = chunk.get("chunk_type")
        if kind == "table":
            table = markdown_table(chunk)
            if table:
                lines += [table, ""]
        elif kind == "image":
            width, height = chunk.get("image_width"), chunk.get("image_height")
            lines += [f"*[image {width}x{height}]*", ""]
        else:
            text = str(chunk.get("page_content") or "").strip()
            if text:
                lines += [text, ""]
    warnings = result.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {_one_line(str(w))}" for w in warnings] + [""]
    return "\n".join(lines).rstrip() + "\n"


def markdown_table(chunk: dict[str, Any]) -> str:
    cells = chunk.get("cells") or []
    n_rows, n_cols = int(chunk.get("n_rows") or 0), int(chunk.get("n_cols") or 0)
    if not cells or n_rows < 1 or n_cols < 1:
        return str(chunk.get("page_content") or "").strip()
    grid = [["" for _ in range(n_cols)] for _ in range(n_rows)]
    for cell in cells:
        row, col = int(cell.get("row", 0)), int(cell.get("col", 0))
        if 0 <= row < n_rows and 0 <= col < n_cols:
            # A spanning cell's text goes in its top-left position; the rest stay empty.
            grid[row][col] = _table_cell(str(cell.get("text") or ""))
    out = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * n_cols]
    out += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(out)


def _table_cell(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- helpers ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_stem(name: str) -> str:
    """A filename's last path segment without its extension, reduced to safe characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return (_UNSAFE.sub("_", stem).strip("._") or "result")[:80]


def _attachment(body: Iterator[bytes], mimetype: str, filename: str) -> Response:
    response = Response(body, mimetype=mimetype.split(";")[0])
    response.headers["Content-Type"] = mimetype
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    # No Content-Length: the body is produced while it is sent (chunked transfer).
    response.headers["X-Accel-Buffering"] = "no"
    return response
