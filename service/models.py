"""The database schema: the record of customers, keys, files, batches, items and billing.

The database is the truth (ARCHITECTURE decision 1): item state, leases, attempts, billing and
idempotency keys live here, never in Redis or Celery's result backend. Every column that a poll
or a sweep filters on is indexed; the migrations in ``service/migrations`` create exactly this.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names so Alembic migrations are identical on Postgres and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FileStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    UPLOADED = "uploaded"
    EXPIRED = "expired"


class BatchStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.PARTIALLY_FAILED, BatchStatus.FAILED, BatchStatus.CANCELLED}
)


class ItemStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_ITEM_STATUSES = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED})


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # NULL quota = unlimited. Reserved pages are held by running items and settled on success.
    page_quota: Mapped[int | None] = mapped_column(BigInteger)
    pages_used: Mapped[int] = mapped_column(BigInteger, default=0)
    pages_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    concurrency: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    # The first characters of the key, shown in listings so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the whole key: keys are 32 random bytes, so a fast hash is not brute-forceable.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(20))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(String(512))
    content_type: Mapped[str | None] = mapped_column(String(128))
    # What the client declared (the worker verifies it) and what we measured.
    sha256_declared: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    input_deleted_at: Mapped[datetime | None] = mapped_column(DateTime)
    # batch control: set by DELETE /v1/files/{id}; the file is then 404 (migration 0004)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_files_customer_created", "customer_id", "created_at"),
        Index("ix_files_status_expires", "status", "expires_at"),
    )


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(20))
    engine: Mapped[str | None] = mapped_column(String(100))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    total_items: Mapped[int] = mapped_column(Integer)
    count_pending: Mapped[int] = mapped_column(Integer)
    count_running: Mapped[int] = mapped_column(Integer, default=0)
    count_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    count_failed: Mapped[int] = mapped_column(Integer, default=0)
    count_cancelled: Mapped[int] = mapped_column(Integer, default=0)
    pages_billed: Mapped[int] = mapped_column(BigInteger, default=0)
    # Highest change number handed to one of this batch's items; see service/lifecycle.py.
    change_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    # batch control: the batch this one retries (POST /v1/batches/{id}/retry; migration 0004)
    parent_batch_id: Mapped[str | None] = mapped_column(String(40), index=True)

    __table_args__ = (Index("ix_batches_customer_created", "customer_id", "created_at", "id"),)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    page_count: Mapped[int | None] = mapped_column(Integer)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    pages_reserved: Mapped[int] = mapped_column(Integer, default=0)
    # Polling order: strictly increasing within a batch, assigned under the batch row lock.
    change_seq: Mapped[int] = mapped_column(BigInteger)
    # Dispatch and lease bookkeeping (RELIABILITY "The item task, idempotent").
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime)
    ocr_failures: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_key: Mapped[str | None] = mapped_column(String(300))
    result_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    result_deleted_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("batch_id", "position"),
        Index("ix_items_batch_seq", "batch_id", "change_seq"),
        # The dispatcher's question: this customer's oldest pending items.
        Index("ix_items_customer_status", "customer_id", "status", "batch_id", "position"),
        # Admission counts a customer's items in flight, every one of which has admitted_at
        # set (finished items have it cleared): a partial index keeps that count to at most
        # the cap's rows instead of every pending item of the customer.
        Index(
            "ix_items_in_flight",
            "customer_id",
            postgresql_where=text("admitted_at IS NOT NULL"),
            sqlite_where=text("admitted_at IS NOT NULL"),
        ),
        Index("ix_items_status_lease", "status", "lease_expires_at"),
        Index("ix_items_file", "file_id"),
    )


class SliceStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Slice(Base):
    """A page range of a long document's item, extracted as its own task (tasks/slices.py).

    Admitted, leased and retried like an item under the same customer cap (its id holds a
    semaphore slot); not visible through the API, except as the item's ``pages_done``.
    """

    __tablename__ = "slices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"))
    # Denormalised from the item: admission counts and orders slices per customer.
    batch_id: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(40))
    index: Mapped[int] = mapped_column(Integer)
    first_page: Mapped[int] = mapped_column(Integer)
    last_page: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ocr_failures: Mapped[int] = mapped_column(Integer, default=0)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    result_key: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("item_id", "index"),
        Index("ix_slices_customer_status", "customer_id", "status", "batch_id", "item_id"),
        # Admission's in-flight count, like ix_items_in_flight.
        Index(
            "ix_slices_in_flight",
            "customer_id",
            postgresql_where=text("admitted_at IS NOT NULL"),
            sqlite_where=text("admitted_at IS NOT NULL"),
        ),
        Index("ix_slices_status_lease", "status", "lease_expires_at"),
    )


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # NULL while the winning request is still in flight.
    batch_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class BillingEntry(Base):
    """One row per billed unit of work, keyed by the item id (or a sync request's id).

    The primary key is what makes billing happen once: a replayed finish inserts nothing.
    """

    __tablename__ = "billing_entries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(String(40), index=True)
    pages: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


# --- batch control: quotes (POST /v1/quotes; migration 0004) ----------------------------------


class QuoteStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"


class Quote(Base):
    """A dry run of a batch: what it would cost and how it would end, nothing extracted."""

    __tablename__ = "quotes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(20))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    file_count: Mapped[int] = mapped_column(Integer)
    # Files not yet looked at by a worker; the worker that brings it to 0 completes the quote.
    files_left: Mapped[int] = mapped_column(Integer)
    # When the quote was asked or a chunk of it last answered: a pending quote that has not
    # moved for long lost a message (tasks/quotes.py redispatch_stalled_quotes).
    progress_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The customer's items pending or running when the quote was asked (estimated_seconds).
    queued_items: Mapped[int] = mapped_column(Integer, default=0)
    queued_pages: Mapped[int] = mapped_column(BigInteger, default=0)
    totals: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    __table_args__ = (Index("ix_quotes_customer_created", "customer_id", "created_at"),)


class QuoteItem(Base):
    __tablename__ = "quote_items"

    quote_id: Mapped[str] = mapped_column(ForeignKey("quotes.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[str] = mapped_column(String(40))
    # What a worker needs to judge the file travels in its chunk's message (service/quotes.py):
    # these rows hold answers only.
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    page_count: Mapped[int | None] = mapped_column(Integer)
    ocr_pages: Mapped[int | None] = mapped_column(Integer)
    # The item error code extraction would end with (before quota, which the totals apply).
    error_code: Mapped[str | None] = mapped_column(String(40))


# --- events and webhooks (issue 16; service/events.py, service/webhooks.py) --------------------
# No foreign keys on purpose: the event insert is on every worker's hot path (no FK check), and
# events and deliveries are deleted by the retention sweep on their own schedule.


class EventType(StrEnum):
    BATCH_CREATED = "batch.created"
    ITEM_STARTED = "item.started"
    ITEM_PROGRESS = "item.progress"
    ITEM_SUCCEEDED = "item.succeeded"
    ITEM_FAILED = "item.failed"
    ITEM_CANCELLED = "item.cancelled"
    BATCH_COMPLETED = "batch.completed"


class Event(Base):
    """One committed change of a batch, numbered by the batch's change number (``seq``)."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    # False until the webhook fan-out has made this event's deliveries (a partial index).
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        UniqueConstraint("batch_id", "seq"),
        Index(
            "ix_events_to_fan_out",
            "created_at",
            postgresql_where=text("NOT fanned_out"),
            sqlite_where=text("NOT fanned_out"),
        ),
        Index("ix_events_customer_created", "customer_id", "created_at"),
    )


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(40), index=True)
    url: Mapped[str] = mapped_column(Text)
    # JSON list of event types; NULL = every type.
    events: Mapped[list[str] | None] = mapped_column(JSON)
    # "fernet:<token>" (encrypted with a key derived from PAGELANE_SECRET_KEY) or "plain:<secret>"
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One event to send to one endpoint, with its attempts (a replay adds a new row)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    batch_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    # A sender holds the delivery while its request is in flight; a killed one's lease runs out.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    response_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
        # The sender's question: the oldest pending delivery of an (endpoint, batch).
        Index(
            "ix_webhook_deliveries_pending",
            "endpoint_id",
            "batch_id",
            "seq",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_batch", "batch_id"),
    )
