"""Typed views of the API's resources (SPEC.md), as the SDK returns them.

Models accept fields they do not know (``extra="allow"``) and default the pagelane extensions
(``pages_done``), so the same SDK reads extract.page's hosted API and newer servers without
breaking. Statuses are plain strings for the same reason; the sets below name the terminal ones.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_BATCH_STATUSES = frozenset({"completed", "partially_failed", "failed", "cancelled"})
TERMINAL_ITEM_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- files -----------------------------------------------------------------------------------


class FileSpec(Resource):
    """One upload to register (the body of ``POST /v1/files``)."""

    size_bytes: int = Field(gt=0)
    filename: str | None = None
    content_type: str | None = None
    sha256: str | None = None

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, filename: str | None = None, hash_content: bool = True
    ) -> FileSpec:
        """Size, name, a guessed content type and (by default) the SHA-256 the worker verifies.

        Raises ``ValueError`` for an empty file: the API cannot register zero bytes.
        """
        path = Path(path)
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"{path} is empty; there is nothing to upload")
        name = filename or path.name
        return cls(
            size_bytes=size,
            filename=name[:512],
            content_type=mimetypes.guess_type(name)[0],
            sha256=sha256_of_file(path) if hash_content else None,
        )


class UploadInstructions(Resource):
    """Where and how to PUT the bytes of a registered file."""

    method: str = "PUT"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    expires_at: str | None = None


class File(Resource):
    id: str
    object: str = "file"
    customer_id: str | None = None
    status: str
    size_bytes: int
    filename: str | None = None
    content_type: str | None = None
    sha256: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    upload: UploadInstructions | None = None  # only in the answer to a registration


# --- batches ---------------------------------------------------------------------------------


class BatchOptions(Resource):
    extract_text: bool = True
    extract_images: bool = True
    extract_tables: bool = True
    ocr: str = "auto"  # auto | force | never
    languages: list[str] = Field(default_factory=lambda: ["eng"])


class ItemError(Resource):
    code: str
    message: str = ""


class BatchItem(Resource):
    id: str
    object: str = "batch_item"
    batch_id: str
    file_id: str
    position: int = 0
    status: str
    attempts: int = 0
    page_count: int | None = None
    pages_done: int = 0
    started_at: str | None = None
    completed_at: str | None = None
    updated_at: str | None = None
    result_url: str | None = None
    error: ItemError | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_ITEM_STATUSES


class BatchCounts(Resource):
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class Batch(Resource):
    id: str
    object: str = "batch"
    status: str
    counts: BatchCounts = Field(default_factory=BatchCounts)
    total_items: int = 0
    engine: str | None = None
    options: BatchOptions | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    cancel_requested_at: str | None = None
    expires_at: str | None = None
    pages_billed: int = 0
    parent_batch_id: str | None = None  # a retry's parent (pagelane extension)
    items: list[BatchItem] | None = None  # a page of changed items (GET and create only)
    next_cursor: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_BATCH_STATUSES


class BatchList(Resource):
    object: str = "list"
    data: list[Batch]
    next_cursor: str | None = None


# --- events ----------------------------------------------------------------------------------


class Event(Resource):
    """One event of a batch's log (SPEC "Events"): ``data`` is the item resource for
    ``item.*`` and the batch resource (without items) for ``batch.*``."""

    id: str
    object: str = "event"
    type: str
    seq: int
    created_at: str | None = None
    batch_id: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def item(self) -> BatchItem | None:
        """``data`` as a :class:`BatchItem` for ``item.*`` events, else ``None``."""
        return BatchItem.model_validate(self.data) if self.type.startswith("item.") else None

    @property
    def batch(self) -> Batch | None:
        """``data`` as a :class:`Batch` for ``batch.*`` events, else ``None``."""
        return Batch.model_validate(self.data) if self.type.startswith("batch.") else None


# --- quotes ----------------------------------------------------------------------------------


class QuoteItem(Resource):
    file_id: str
    page_count: int | None = None
    ocr_pages: int | None = None
    predicted_error: str | None = None


class QuoteTotals(Resource):
    pages: int = 0
    billable_pages: int = 0
    ocr_pages: int = 0
    predicted_failures: int = 0
    quota_remaining: int | None = None  # None: unlimited
    fits_quota: bool = True
    estimated_seconds: float | None = None


class Quote(Resource):
    """A dry run of a batch (``POST /v1/quotes``): pages, OCR pages and predicted errors."""

    id: str
    object: str = "quote"
    status: str
    file_count: int = 0
    items: list[QuoteItem] = Field(default_factory=list)
    totals: QuoteTotals | None = None
    created_at: str | None = None
    completed_at: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.status == "completed"


# --- results ---------------------------------------------------------------------------------


class TableCell(Resource):
    text: str
    row: int
    col: int
    row_span: int = 1
    col_span: int = 1
    bbox: list[float] | None = None


class Chunk(Resource):
    chunk_type: str  # text | table | image
    page_no: int
    bbox: list[float]
    page_content: str
    source: str  # text_layer | ocr
    confidence: float | None = None
    # tables
    n_rows: int | None = None
    n_cols: int | None = None
    cells: list[TableCell] | None = None
    # images
    image_width: int | None = None
    image_height: int | None = None
    image_mime: str | None = None
    image_b64: str | None = None


class ExtractedFile(Resource):
    id: str | None = None
    filename: str | None = None
    content_type: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class ExtractResult(Resource):
    """The Extract result, the same from the batch lane and from ``/v1/extract/file``."""

    object: str = "extraction"
    page_count: int
    pages_billed: int = 0
    file: ExtractedFile = Field(default_factory=ExtractedFile)
    chunks: list[Chunk] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def text(self) -> str:
        """Every text and table chunk's content in reading order, one chunk per line."""
        return "\n".join(c.page_content for c in self.chunks if c.chunk_type != "image")


def sha256_of_file(path: str | os.PathLike[str], block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def as_options(options: BatchOptions | dict[str, Any] | None) -> dict[str, Any] | None:
    """Batch options as the JSON the API takes (only the fields set, so defaults stay the
    server's)."""
    if options is None:
        return None
    if isinstance(options, BatchOptions):
        return options.model_dump(exclude_unset=True)
    return dict(options)
