"""Request and response models, declared once.

flask-openapi3 validates requests against these and generates ``/openapi.json`` from them; the
body builders in ``service/api/bodies.py`` build responses with the same models, so the document and
the wire format cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from flask_openapi3 import FileStorage
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.lifecycle import ITEM_CURSOR_PATTERN, LIST_CURSOR_PATTERN

SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

# Text that ends up in the database or in logs. Postgres refuses NUL in text columns (a 500
# before this check), and neither database can store an unpaired surrogate (json.loads lets
# "\ud800" through). Control characters have no business in names, types, keys or ids. The
# document carries the control-character pattern (the surrogates cannot be written in a
# portable JSON Schema regex, and no conforming client produces them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_NO_NUL = re.compile(r"\x00")


def _plain_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (an unpaired surrogate was sent)")
    return value


def _free_text(value: str) -> str:
    # Free text (metadata values) may hold tabs and newlines, never NUL.
    if _NO_NUL.search(value):
        raise ValueError("must not contain NUL characters")
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (an unpaired surrogate was sent)")
    return value


PlainText = Annotated[
    str, AfterValidator(_plain_text), Field(json_schema_extra={"pattern": NO_CONTROL_PATTERN})
]
FreeText = Annotated[
    str, AfterValidator(_free_text), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})
]
# The characters of our ids (service/ids.py: a prefix, "_", base32hex). A path id that cannot
# be one is refused by validation (422) before any query; a well-formed unknown one is 404.
LANGUAGE_PATTERN = r"^[A-Za-z]{3}(_[A-Za-z]{3,4})?$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- shared pieces ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The one error envelope; endpoint context (``file_ids``, ``status``) is added flat."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="Stable snake_case code.")
    message: str
    detail: list[ErrorDetail] | None = None


# --- files -----------------------------------------------------------------------------------


class CreateFile(StrictModel):
    size_bytes: int = Field(gt=0, description="Exact size of the bytes that will be PUT.")
    filename: PlainText | None = Field(None, max_length=512)
    content_type: PlainText | None = Field(None, max_length=128)
    sha256: str | None = Field(
        None,
        pattern=SHA256_HEX.pattern,
        description="Hex digest; when given, the worker verifies it.",
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_HEX.match(value):
            raise ValueError("must be 64 hex characters")
        return value.lower() if value else value


class CreateFilesBulk(StrictModel):
    files: list[CreateFile] = Field(min_length=1, max_length=1000)


class UploadInstructions(BaseModel):
    method: Literal["PUT"] = "PUT"
    url: str
    headers: dict[str, str]
    expires_at: str


class FileResource(BaseModel):
    id: str
    object: Literal["file"] = "file"
    customer_id: str
    status: Literal["awaiting_upload", "uploaded", "expired"]
    size_bytes: int
    filename: str | None
    content_type: str | None
    sha256: str | None
    created_at: str
    expires_at: str
    upload: UploadInstructions | None = Field(None, description="Only in the create response.")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileResource]


class FilePath(BaseModel):
    file_id: str = Field(max_length=64, pattern=ID_PATTERN)


# --- batches ---------------------------------------------------------------------------------


class BatchOptions(StrictModel):
    extract_text: bool = True
    extract_images: bool = True
    extract_tables: bool = True
    ocr: Literal["auto", "force", "never"] = "auto"
    languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] = Field(
        default_factory=lambda: ["eng"], min_length=1, max_length=8
    )

    @field_validator("languages")
    @classmethod
    def _tesseract_codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not re.fullmatch(LANGUAGE_PATTERN, code):
                raise ValueError(f"{code!r} is not a tesseract language code (like 'eng')")
        return value


# pydantic would say "keys matching the pattern must have string values", which leaves every
# other key free; the validators below say "16 keys at most, each ≤ 64 characters without
# control characters, string values ≤ 512 without NUL".
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": 16,
    "patternProperties": {
        r"^[^\x00-\x1f\x7f]{0,64}$": {
            "type": "string",
            "maxLength": 512,
            "pattern": r"^[^\x00]*$",
        }
    },
    "additionalProperties": False,
}


class CreateBatch(StrictModel):
    file_ids: list[PlainText] = Field(
        min_length=1,
        description="1..10,000 unique file ids.",
        json_schema_extra={"uniqueItems": True},
    )
    options: BatchOptions = Field(default_factory=BatchOptions)
    metadata: Annotated[dict[PlainText, FreeText], WithJsonSchema(METADATA_SCHEMA)] = Field(
        default_factory=dict
    )
    engine: PlainText | None = Field(None, max_length=100)

    @field_validator("file_ids")
    @classmethod
    def _unique_ids(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("file_ids must be unique")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError("at most 16 metadata keys")
        for key, text in value.items():
            if len(key) > 64:
                raise ValueError(f"metadata key {key[:20]!r}... is longer than 64 characters")
            if len(text) > 512:
                raise ValueError(f"metadata value of {key!r} is longer than 512 characters")
        return value


class IdempotencyHeader(BaseModel):
    model_config = ConfigDict(extra="allow")
    # Printable ASCII: a header value is latin-1 on the wire, and the key is stored as text.
    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$"
    )


class ItemError(BaseModel):
    code: str
    message: str


class ItemResource(BaseModel):
    id: str
    object: Literal["batch_item"] = "batch_item"
    batch_id: str
    file_id: str
    position: int
    status: Literal["pending", "running", "succeeded", "failed", "cancelled"]
    attempts: int
    page_count: int | None
    pages_done: int
    started_at: str | None
    completed_at: str | None
    updated_at: str
    result_url: str | None
    error: ItemError | None


class BatchCounts(BaseModel):
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class BatchResource(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: Literal["pending", "running", "completed", "partially_failed", "failed", "cancelled"]
    counts: BatchCounts
    total_items: int
    engine: str | None
    options: BatchOptions
    metadata: dict[str, str]
    created_at: str
    started_at: str | None
    completed_at: str | None
    cancel_requested_at: str | None
    expires_at: str
    pages_billed: int
    # batch control: the batch this one retries (null otherwise)
    parent_batch_id: str | None = None
    items: list[ItemResource] | None = None
    next_cursor: str | None = None


class RetryBatch(StrictModel):
    """``POST /v1/batches/{batch_id}/retry`` (batch control)."""

    include_cancelled: bool = Field(False, description="Also retry the cancelled items.")


class QuoteItem(BaseModel):
    file_id: str
    page_count: int | None
    ocr_pages: int | None = Field(description="Pages without a usable text layer.")
    predicted_error: str | None = Field(description="The item error code it would end with.")


class QuoteTotals(BaseModel):
    pages: int
    billable_pages: int
    ocr_pages: int
    predicted_failures: int
    quota_remaining: int | None = Field(description="null = unlimited")
    fits_quota: bool
    estimated_seconds: float


class QuoteResource(BaseModel):
    """A dry run of a batch (batch control); ``totals`` is null until ``completed``."""

    id: str
    object: Literal["quote"] = "quote"
    status: Literal["pending", "completed"]
    file_count: int
    items: list[QuoteItem]
    totals: QuoteTotals | None
    created_at: str
    completed_at: str | None


class QuotePath(BaseModel):
    quote_id: str = Field(max_length=64)


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchResource]
    next_cursor: str | None


class BatchPath(BaseModel):
    batch_id: str = Field(max_length=64, pattern=ID_PATTERN)


class ItemPath(BaseModel):
    batch_id: str = Field(max_length=64, pattern=ID_PATTERN)
    item_id: str = Field(max_length=64, pattern=ID_PATTERN)


class QueryModel(BaseModel):
    """A query-string model. flask-openapi3 asks it for its JSON schema on every request it
    validates (to find list-valued fields); pydantic builds that schema afresh each time, which
    measured 9 % of a poll's CPU. The schema of a class never changes: built once."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:  # the OpenAPI document's calls, with their own ref templates
            return super().model_json_schema(*args, **kwargs)
        return _default_json_schema(cls)


@functools.cache
def _default_json_schema(model: type[QueryModel]) -> dict[str, Any]:
    return super(QueryModel, model).model_json_schema()


# A cursor is opaque to clients, and exactly a regular expression to us (service/lifecycle.py):
# every string the pattern admits is a position, anything else is 422 invalid_cursor.
def _cursor_field(pattern: str) -> Any:
    return Field(
        None,
        pattern=pattern,
        description="Opaque: pass back a `next_cursor` this API returned.",
    )


class PollQuery(QueryModel):
    cursor: str | None = _cursor_field(ITEM_CURSOR_PATTERN)
    limit: int = Field(100, ge=1, le=500)


class ListBatchesQuery(QueryModel):
    status: (
        Literal["pending", "running", "completed", "partially_failed", "failed", "cancelled"] | None
    ) = None
    cursor: str | None = _cursor_field(LIST_CURSOR_PATTERN)
    limit: int = Field(50, ge=1, le=200)


class ResultQuery(QueryModel):
    inline: bool = False


# --- sync extraction -------------------------------------------------------------------------


def _form_bool(value: Any) -> bool:
    # The document says boolean, which a form spells "true" or "false" (flask-openapi3 hands
    # over json.loads of the field, so those arrive as bools). pydantic would also take 0, 1,
    # "yes", "on"..., and the document and the validation would disagree.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError('must be "true" or "false"')


FormBool = Annotated[bool, BeforeValidator(_form_bool)]


class ExtractForm(BaseModel):
    """multipart/form-data: the file plus the batch option fields, as form values."""

    file: FileStorage
    extract_text: FormBool = True
    extract_images: FormBool = True
    extract_tables: FormBool = True
    ocr: Literal["auto", "force", "never"] = "auto"
    # No minItems: multipart cannot send an empty list, and no field at all means ["eng"].
    languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] = Field(
        default_factory=lambda: ["eng"],
        max_length=8,
        description="Repeat the field or comma-separate; absent: eng.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_languages(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("languages") in ([], ""):
            data = {k: v for k, v in data.items() if k != "languages"}
        if isinstance(data, dict) and isinstance(data.get("languages"), str):
            data = {
                **data,
                "languages": [p.strip() for p in data["languages"].split(",") if p.strip()],
            }
        return data


class Chunk(BaseModel):
    model_config = ConfigDict(extra="allow")
    chunk_type: Literal["text", "table", "image"]
    page_no: int
    bbox: list[float]
    page_content: str
    source: Literal["text_layer", "ocr"]
    confidence: float | None = None


class ExtractedFile(BaseModel):
    id: str | None
    filename: str | None
    content_type: str | None
    sha256: str | None
    size_bytes: int


class ExtractionResult(BaseModel):
    object: Literal["extraction"] = "extraction"
    page_count: int
    pages_billed: int
    file: ExtractedFile
    chunks: list[Chunk]
    warnings: list[str]


class HealthResponse(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
