"""The blob store's contract: values, errors, the :class:`BlobStore` protocol, the key rules and
the keys our services use.

Keys are server-made (``<customer>/inputs/<file_id>``, ``<customer>/results/<batch>/<item>.json``)
and restricted to ``[A-Za-z0-9._/-]``, which keeps them safe as S3 keys, as file paths and in
URLs without escaping. Both backends (``s3.py``, ``local.py``) pass the same contract suite
(``tests/storage``); behaviour that only one backend can offer is called out in the docstrings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

# S3's own ceilings: a SigV4 presigned URL lives at most 7 days, a key is at most 1,024 bytes,
# and DeleteObjects / ListObjectsV2 handle at most 1,000 keys per call. The local backend keeps
# the same limits so code that works on one works on the other.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
MAX_KEY_LENGTH = 1024
S3_BATCH_LIMIT = 1000

KEY_SEGMENT = r"[A-Za-z0-9._-]+"
VALID_KEY = re.compile(rf"{KEY_SEGMENT}(?:/{KEY_SEGMENT})*")
VALID_PREFIX = re.compile(rf"(?:{KEY_SEGMENT}/)*[A-Za-z0-9._-]*")
COPY_CHUNK_BYTES = 1024 * 1024


# --- values and errors ------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class PresignedRequest:
    """What a client needs to upload: send ``method`` to ``url`` with exactly ``headers``."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime  # aware, UTC; never later than the store's own expiry


class BlobNotFoundError(Exception):
    """The key holds no blob."""


class BlobTooLargeError(Exception):
    """The blob is larger than the caller's ``max_bytes``; its body was not read."""

    def __init__(self, key: str, size: int) -> None:
        super().__init__(f"{key}: {size} bytes")
        self.key = key
        self.size = size


class BlobStoreError(Exception):
    """The store itself failed (unreachable, denied, disk full); the operation may be retried."""


class UploadInterruptedError(Exception):
    """Reading an upload's body failed (the client hung up); nothing was stored."""


class BlobExistsError(Exception):
    """An upload to a key that already holds a blob: uploads are create-only."""


# What the stores answer to a replayed upload URL: S3's own status for a failed
# ``If-None-Match: *``, and the error code the local store puts in its JSON body.
UPLOAD_EXISTS_STATUS = 412
UPLOAD_EXISTS_CODE = "blob_exists"
# Sent with every upload (part of PresignedRequest.headers); S3 checks it as a signed header.
CREATE_ONLY_HEADERS = {"If-None-Match": "*"}


class BlobLengthMismatchError(ValueError):
    """An upload's body did not have the length its URL was signed for; nothing was stored."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"expected {expected} bytes, received {received}")
        self.expected = expected
        self.received = received


# --- the interface ----------------------------------------------------------------------------


class BlobStore(Protocol):
    """Where inputs and results live. Implementations are safe to share between threads.

    Keys must match ``[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*`` with no ``.`` or ``..`` segment and
    at most 1,024 characters; any other key raises ``ValueError`` before the store is touched.
    Failures of the store itself raise :class:`BlobStoreError`, never a backend-specific error.
    A blob is visible (to ``head``, ``get``, ``list_prefix``) only once it is complete.
    """

    def presign_put(
        self, key: str, *, content_length: int | None, content_type: str | None, expires_in: int
    ) -> PresignedRequest:
        """A request that lets its bearer store raw bytes under ``key`` for ``expires_in`` s.

        The client sends the body as is, with exactly ``PresignedRequest.headers``; its HTTP
        library adds ``Content-Length`` from the body. When ``content_length`` is given, a body
        of any other length is refused (S3 signs ``Content-Length``; the local backend compares
        it) and nothing is stored. When ``content_type`` is given the upload must carry exactly
        that ``Content-Type``; when it is not, any type is accepted.

        Uploads are create-only: once a blob is stored under ``key``, a later PUT (the same URL
        replayed, or any other) is refused with HTTP 412 and stores nothing, so the input
        behind a recorded sha256 cannot be swapped. S3 enforces it with ``If-None-Match: *``
        signed into the URL (so the client cannot drop it); the local store refuses any second
        PUT itself. ``headers`` therefore always holds ``If-None-Match: *``.
        """
        ...

    def presign_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        """A URL that serves the blob at ``key`` to a plain GET for ``expires_in`` seconds.

        With ``filename`` the response asks browsers to save it under that name. The URL is made
        without checking that the blob exists; fetching a missing one is a 404.
        """
        ...

    def head(self, key: str) -> BlobInfo | None:
        """The blob's size and modification time, or ``None`` when there is no blob."""
        ...

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole blob in memory (raises :class:`BlobNotFoundError`). With ``max_bytes``, a
        larger blob raises :class:`BlobTooLargeError` before its body is read, so one call does
        what a HEAD and a GET would. For large inputs prefer :meth:`download_to`."""
        ...

    def download_to(self, key: str, destination: Path, *, max_bytes: int | None = None) -> str:
        """Stream the blob into the file ``destination`` without holding it in memory; returns
        the sha256 (hex) of the bytes written, computed as they stream past, so an input is
        checked against its recorded digest without being read a second time.

        With ``max_bytes``, a larger blob raises :class:`BlobTooLargeError` before its body is
        read (one round trip, like :meth:`get`). Raises :class:`BlobNotFoundError` when there is
        no blob; ``destination`` may then hold a partial file, which the caller owns (write it
        in a temp dir).
        """
        ...

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key``, replacing any blob there, all or nothing."""
        ...

    def put_file(
        self, key: str, source: Path, *, content_type: str = "application/octet-stream"
    ) -> None:
        """:meth:`put` of the file at ``source``, streamed from disk (never whole in memory):
        the same replacing, all-or-nothing write. Results are written this way; inputs arrive
        only through :meth:`presign_put`'s create-only uploads, so no condition applies here
        (a result written again, by an assembly retried after a lost lease, replaces the same
        bytes)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error (deletes are retried by sweeps)."""
        ...

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every blob in ``keys``; missing keys are not errors. S3 sends 1,000 per call."""
        ...

    def list_prefix(self, prefix: str, *, start_after: str | None = None) -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a plain string prefix, as S3 means it:
        ``a/b`` matches ``a/b/c`` and ``a/bc``), in ascending key order, beginning after the
        key ``start_after`` when given. The iterator fetches lazily (S3: 1,000 keys per call),
        so a caller may stop early."""
        ...

    def ensure_ready(self) -> None:
        """Make the store usable at boot (S3: create the bucket if missing; local: the root
        directory). Raises :class:`BlobStoreError` with the reason when it cannot."""
        ...

    def ping(self) -> bool:
        """Cheap readiness probe: ``True`` when the store answers. Never raises; logs why not."""
        ...


# --- shared checks ----------------------------------------------------------------------------


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key (see :class:`BlobStore`), else raise ValueError."""
    if not isinstance(key, str) or not VALID_KEY.fullmatch(key) or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid blob key {key!r}: use [A-Za-z0-9._-] segments joined by '/'")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}: '.' and '..' segments are not allowed")
    return key


def validate_prefix(prefix: str) -> str:
    # A prefix may end in a partial segment ("cus_1/inputs/file_") or a slash; only its complete
    # segments could ever name a directory, so only those are checked for dot segments.
    if not VALID_PREFIX.fullmatch(prefix) or len(prefix) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid blob key prefix {prefix!r}")
    if any(segment in (".", "..") for segment in prefix.split("/")[:-1]):
        raise ValueError(f"invalid blob key prefix {prefix!r}: dot segments are not allowed")
    return prefix


def validate_expiry(expires_in: int) -> int:
    if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} seconds, got {expires_in}")
    return expires_in


def validate_header_value(name: str, value: str | None) -> str | None:
    # A value that cannot travel in an HTTP header would make a URL nobody can use.
    if value is not None and (not value.isprintable() or not value.isascii() or len(value) > 255):
        raise ValueError(f"{name} must be printable ASCII of at most 255 characters")
    return value


def download_name(filename: str) -> str:
    # Filenames come from clients; control characters would break (or inject) response headers.
    cleaned = "".join(ch if ch.isprintable() else "_" for ch in filename).strip()
    return cleaned or "download"


def expiry_instant(now: float, expires_in: int) -> datetime:
    return datetime.fromtimestamp(int(now) + expires_in, UTC)


# --- the keys of our services -------------------------------------------------------------------


def input_key(customer_id: str, file_id: str) -> str:
    return f"{customer_id}/inputs/{file_id}"


def result_key(customer_id: str, batch_id: str, item_id: str) -> str:
    return f"{customer_id}/results/{batch_id}/{item_id}.json"
