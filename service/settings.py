"""The one typed settings object, read from ``PAGELANE_*`` environment variables.

Every process (API, worker, beat, CLI) builds it with :func:`load_settings` at start-up and passes
it down; nothing reads the environment anywhere else. Bad combinations fail here, at boot, with a
message that names the variable to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from limits import parse as parse_rate
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


class SettingsError(Exception):
    """The environment describes a deployment that cannot work; the message says why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGELANE_", extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        Path(".pagelane"), description="Embedded mode: SQLite file, local blobs, embedded Redis."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty = SQLite file in the data dir."
    )
    redis_url: str = Field(
        "",
        description="Broker, semaphores, rate limits; empty = the one `pagelane up` starts.",
    )
    blob_store: Literal["s3", "local", "none"] = Field(
        "local", description="`s3` (boto3), `local` (data dir) or `none` (sync extraction only)."
    )
    s3_bucket: str = Field("", description="Bucket for inputs and results (required with `s3`).")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint; empty = AWS.")
    s3_region: str = Field("us-east-1", description="Region used to sign S3 requests.")
    public_url: str = Field(
        "http://127.0.0.1:8080", description="Base URL clients reach the API on."
    )
    secret_key: str = Field("", description="Signs local blob URLs (required with `local`).")

    # --- limits (SPEC "Limits and defaults") -----------------------------------------------
    retention_hours: int = Field(24, ge=1, description="Retention of inputs and results.")
    blob_sweep_budget_seconds: float = Field(
        40.0,
        gt=0,
        le=3600,
        description="Time one run of the blob deletion sweep may spend (it runs every minute).",
    )
    orphan_sweep_max_keys: int = Field(
        100_000,
        ge=1000,
        description="Store keys the orphan sweep lists per run (it runs every 5 minutes).",
    )
    idempotency_hours: int = Field(
        24, ge=1, description="How long an Idempotency-Key is remembered."
    )
    max_file_bytes: int = Field(150 * MB, gt=0, description="Largest accepted document.")
    max_pages: int = Field(1000, gt=0, description="Most pages per document.")
    max_files_per_batch: int = Field(
        10_000, gt=0, le=100_000, description="Most file ids per batch."
    )
    default_concurrency: int = Field(8, gt=0, description="Running items per customer, fleet-wide.")
    default_quota_pages: int | None = Field(
        None, ge=0, description="Page quota of new customers; empty = unlimited."
    )
    submit_rate_limit: str = Field(
        "60/minute", description="Submissions per key (`limits` syntax)."
    )
    # --- request limits (SPEC "Request limits"; docs/limits.md) -------------------------------
    sync_rate_limit: str = Field(
        "60/minute",
        description="`POST /v1/extract/file` requests per key (`limits` syntax), its own budget.",
    )
    sync_concurrency: int = Field(
        2, ge=1, description="Sync extractions running at once per customer, across API processes."
    )
    sync_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="Longest sync extraction; then 504, nothing billed."
    )
    upload_url_ttl_seconds: int = Field(3600, ge=60, description="Lifetime of presigned PUT URLs.")
    result_url_ttl_seconds: int = Field(
        300, ge=10, description="Lifetime of presigned result GET URLs."
    )

    # --- worker ----------------------------------------------------------------------------
    lease_seconds: int = Field(
        60, ge=5, description="Item lease; a worker renews it while extracting."
    )
    redispatch_after_seconds: int = Field(
        300, ge=5, description="Admitted items not started by then are published again."
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts (lost workers) before `internal_error`."
    )
    ocr_retries: int = Field(3, ge=0, description="Retries of a failing OCR provider.")
    ocr_retry_backoff_seconds: float = Field(
        2.0, gt=0, description="First OCR retry delay (doubles)."
    )
    task_time_limit_seconds: int = Field(1800, ge=30, description="Hard limit of one item task.")
    visibility_timeout_seconds: int = Field(
        7200, ge=60, description="Redis broker visibility timeout."
    )
    sandbox_memory_mb: int = Field(
        2048,
        ge=256,
        description="Memory one extraction may use (its capped child process; OCR included).",
    )
    slice_pages: int = Field(
        32,
        ge=0,
        description=(
            "A document with more pages is extracted in page slices of this many pages, each"
            " its own task under the customer's cap; 0 = never slice."
        ),
    )
    ocr_provider: Literal["tesseract", "http", "null"] = Field(
        "tesseract", description="OCR engine."
    )
    tesseract_backend: Literal["auto", "library", "subprocess"] = Field(
        "auto",
        description=(
            "How Tesseract is called: `library` (tesserocr, in the sandbox child: no process"
            " start or model load per page), `subprocess` (the `tesseract` command through"
            " pytesseract), `auto` = library when tesserocr is installed."
        ),
    )
    ocr_http_url: str = Field("", description="OpenAI-compatible endpoint for the `http` provider.")
    ocr_http_model: str = Field("", description="Model name for the `http` provider.")
    ocr_http_timeout_seconds: float = Field(60.0, gt=0, description="Per-request timeout (`http`).")

    # --- events: SSE and webhooks (issue 16; docs/events.md) --------------------------------
    sse_streams_per_key: int = Field(8, ge=1, description="Open event streams per API key.")
    sse_streams_per_process: int = Field(
        32, ge=1, description="Event streams one API process holds (each a gthread thread)."
    )
    sse_keepalive_seconds: float = Field(
        10.0, gt=0, le=15, description="Seconds between `: keep-alive` comments on a stream."
    )
    sse_max_stream_seconds: float = Field(
        300.0, ge=5, description="A stream ends after this; the client resumes (Last-Event-ID)."
    )
    sse_poll_seconds: float = Field(
        0.2, gt=0, le=5, description="How often an API process looks for new events."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs on loopback/private networks, and plain http."
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="One delivery attempt.")
    webhook_backoff_seconds: float = Field(
        30.0, gt=0, description="First retry delay of a failed delivery (doubles, jittered)."
    )
    webhook_backoff_max_seconds: float = Field(
        3600.0, gt=0, description="Longest delay between two delivery attempts."
    )
    webhook_retry_hours: float = Field(
        24.0, gt=0, description="A delivery still failing this long after its event: failed."
    )
    webhook_tick_seconds: float = Field(
        1.0, gt=0, description="How often beat fans events out and sends due deliveries."
    )

    # --- observability -----------------------------------------------------------------------
    worker_metrics_port: int = Field(
        9808, ge=0, le=65535, description="Port of a worker's Prometheus `/metrics`; 0 = off."
    )
    api_metrics_port: int = Field(
        9807,
        ge=0,
        le=65535,
        description="Port of the API's Prometheus `/metrics` (not the public port); 0 = off.",
    )
    metrics_bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the API's and workers' metrics ports listen on; `0.0.0.0` in "
        "containers that Prometheus scrapes from outside.",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="`json` (one object per line), `text`, or `auto`: text on a terminal."
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("PAGELANE_BLOB_STORE=s3 needs PAGELANE_S3_BUCKET")
        if self.blob_store == "local" and not self.secret_key:
            raise ValueError(
                "PAGELANE_BLOB_STORE=local signs its URLs: set PAGELANE_SECRET_KEY "
                "(`pagelane up` generates one in the data dir)"
            )
        if self.ocr_provider == "http" and not (self.ocr_http_url and self.ocr_http_model):
            raise ValueError("PAGELANE_OCR_PROVIDER=http needs PAGELANE_OCR_HTTP_URL and _MODEL")
        # Redis redelivers an unacknowledged message after the visibility timeout, so a task
        # that may legitimately run longer (its hard limit plus the longest retry wait) would be
        # executed twice concurrently (celery#5935). Refuse such a configuration at boot.
        longest_retry_wait = self.ocr_retry_backoff_seconds * (2 ** max(self.ocr_retries, 1)) * 1.5
        needed = 2 * self.task_time_limit_seconds + longest_retry_wait
        if self.visibility_timeout_seconds < needed:
            raise ValueError(
                f"PAGELANE_VISIBILITY_TIMEOUT_SECONDS={self.visibility_timeout_seconds} must be at "
                f"least twice the task time limit plus the longest retry wait ({needed:.0f} s)"
            )
        try:
            parse_rate(self.sync_rate_limit)
        except ValueError as exc:
            raise ValueError(f"PAGELANE_SYNC_RATE_LIMIT: {exc}") from exc
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("PAGELANE_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pagelane.db').resolve()}"

    @property
    def admission_lease_seconds(self) -> float:
        # Outlives several redispatch rounds, so a slot never lapses under a queued message.
        return self.redispatch_after_seconds * 3.0

    def require_redis(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "PAGELANE_REDIS_URL is not set: point it at Redis, or use `pagelane up`, "
                "which starts an embedded one"
            )
        return self.redis_url


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides, used by tests and `pagelane up`)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"PAGELANE_{'_'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from exc
