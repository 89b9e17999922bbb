"""Blob storage for inputs and results: one interface, an S3 backend and a local-disk backend.

Keys are server-made (``<customer>/inputs/<file_id>``, ``<customer>/results/<batch>/<item>.json``)
and restricted to ``[A-Za-z0-9._/-]``, which keeps them safe as S3 keys, as file paths and in
URLs without escaping. Clients never stream bytes through the API when the store is S3: they get
a presigned request and talk to the store directly. The local backend imitates that with
HMAC-signed URLs that the API serves itself under ``/blobs/...`` (see ``service.api.blobs``).

Both backends pass the same contract suite (``tests/storage``); behaviour that only one backend
can offer is called out in the docstrings below.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import quote, urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import add_expect_header

from service.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# S3's own ceilings: a SigV4 presigned URL lives at most 7 days, a key is at most 1,024 bytes,
# and DeleteObjects / ListObjectsV2 handle at most 1,000 keys per call. The local backend keeps
# the same limits so code that works on one works on the other.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
MAX_KEY_LENGTH = 1024
S3_BATCH_LIMIT = 1000

_KEY_SEGMENT = r"[A-Za-z0-9._-]+"
_VALID_KEY = re.compile(rf"{_KEY_SEGMENT}(?:/{_KEY_SEGMENT})*")
_VALID_PREFIX = re.compile(rf"(?:{_KEY_SEGMENT}/)*[A-Za-z0-9._-]*")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")

# Temp files of in-flight writes carry this marker. It is outside the key alphabet, so a temp
# file can never be mistaken for (or collide with) a blob.
_TEMP_MARKER = "~"
_COPY_CHUNK_BYTES = 1024 * 1024


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
        that ``Content-Type``; when it is not, any type is accepted. A later PUT to the same URL
        before expiry replaces the blob.
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

    def download_to(self, key: str, destination: Path) -> None:
        """Stream the blob into the file ``destination`` without holding it in memory.

        Raises :class:`BlobNotFoundError` when there is no blob; ``destination`` may then hold a
        partial file, which the caller owns (write it in a temp dir).
        """
        ...

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key``, replacing any blob there, all or nothing."""
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


def make_blob_store(settings: Settings) -> BlobStore:
    """The store the settings describe. Nothing is contacted; call ``ensure_ready`` at boot."""
    if settings.blob_store == "s3":
        return S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
        )
    return LocalBlobStore(
        settings.data_dir / "blobs",
        public_url=settings.public_url,
        secret_key=settings.secret_key,
    )


# --- shared checks ----------------------------------------------------------------------------


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key (see :class:`BlobStore`), else raise ValueError."""
    if not isinstance(key, str) or not _VALID_KEY.fullmatch(key) or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid blob key {key!r}: use [A-Za-z0-9._-] segments joined by '/'")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}: '.' and '..' segments are not allowed")
    return key


def _validate_prefix(prefix: str) -> str:
    # A prefix may end in a partial segment ("cus_1/inputs/file_") or a slash; only its complete
    # segments could ever name a directory, so only those are checked for dot segments.
    if not _VALID_PREFIX.fullmatch(prefix) or len(prefix) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid blob key prefix {prefix!r}")
    if any(segment in (".", "..") for segment in prefix.split("/")[:-1]):
        raise ValueError(f"invalid blob key prefix {prefix!r}: dot segments are not allowed")
    return prefix


def _validate_expiry(expires_in: int) -> int:
    if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} seconds, got {expires_in}")
    return expires_in


def _validate_header_value(name: str, value: str | None) -> str | None:
    # A value that cannot travel in an HTTP header would make a URL nobody can use.
    if value is not None and (not value.isprintable() or not value.isascii() or len(value) > 255):
        raise ValueError(f"{name} must be printable ASCII of at most 255 characters")
    return value


def _download_name(filename: str) -> str:
    # Filenames come from clients; control characters would break (or inject) response headers.
    cleaned = "".join(ch if ch.isprintable() else "_" for ch in filename).strip()
    return cleaned or "download"


def _attachment_disposition(filename: str) -> str:
    """RFC 6266 ``Content-Disposition`` with an ASCII fallback and the exact UTF-8 name."""
    fallback = "".join(ch if ch.isascii() and ch not in '"\\' else "_" for ch in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def _expiry_instant(now: float, expires_in: int) -> datetime:
    return datetime.fromtimestamp(int(now) + expires_in, UTC)


# --- S3 -----------------------------------------------------------------------------------------


def _make_s3_client(
    endpoint_url: str | None,
    region: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int,
) -> S3Client:
    config = Config(
        region_name=region,
        signature_version="s3v4",
        # MinIO, moto and most self-hosted S3s have no wildcard DNS for virtual-host buckets.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        connect_timeout=connect_timeout,
        # Per socket read, not per request: a 150 MB download may take longer than this.
        read_timeout=read_timeout,
        # "standard" retries throttling and 5xx with backoff, the same on every SDK.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        # API threads and `download_to` share one client; the default pool of 10 would block.
        max_pool_connections=32,
        # boto3 >= 1.36 adds CRC checksums to every upload by default; several S3-compatible
        # stores reject those headers. Send them only where S3 requires one (DeleteObjects).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A private session: boto3's default session is module-level state and not thread-safe.
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint_url, config=config)
    # botocore asks for "Expect: 100-continue" on every PUT with a body, which costs a round
    # trip before the body is sent. It only pays off for a large body that the server would
    # refuse; ours are results the server accepts (worker profile: 1 extra round trip a PUT).
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: ClientError) -> bool:
    # HEAD responses have no body, so botocore only knows the status: "404".
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


class S3BlobStore(BlobStore):
    """Blobs in one S3 (or S3-compatible) bucket, reached with boto3.

    Presigned URLs are SigV4 query-signed, so they work against AWS, MinIO and moto alike;
    the uploader never needs credentials. ``client`` injects a ready boto3 client (tests).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: S3Client | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket name")
        self._bucket = bucket
        self._region = region
        self._client: S3Client = client or _make_s3_client(
            endpoint_url, region, connect_timeout=5, read_timeout=60, max_attempts=5
        )
        # Readiness probes must answer within their own timeout, so the probe client gets
        # short timeouts and no retries instead of the data path's patience.
        self._probe_client: S3Client = client or _make_s3_client(
            endpoint_url, region, connect_timeout=2, read_timeout=2, max_attempts=1
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    @contextlib.contextmanager
    def _store_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise BlobStoreError(f"S3 {what} in bucket {self._bucket!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 {what} failed: {exc}") from exc

    def presign_put(
        self, key: str, *, content_length: int | None, content_type: str | None, expires_in: int
    ) -> PresignedRequest:
        validate_key(key)
        _validate_expiry(expires_in)
        _validate_header_value("content_type", content_type)
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must be >= 0")
        params: dict[str, object] = {"Bucket": self._bucket, "Key": key}
        headers: dict[str, str] = {}
        if content_type:
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        if content_length is not None:
            # Becomes a signed header: S3 answers 403 SignatureDoesNotMatch to any other length.
            # It is not repeated in `headers`, because every HTTP client sets it from the body.
            params["ContentLength"] = content_length
        # Taken before signing, so the advertised expiry is never later than S3's own.
        expires_at = _expiry_instant(time.time(), expires_in)
        with self._store_errors("presign PUT"):
            url = self._client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_in
            )
        return PresignedRequest(method="PUT", url=url, headers=headers, expires_at=expires_at)

    def presign_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        _validate_expiry(expires_in)
        params: dict[str, object] = {"Bucket": self._bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = _attachment_disposition(_download_name(filename))
        with self._store_errors("presign GET"):
            return self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )

    def head(self, key: str) -> BlobInfo | None:
        validate_key(key)
        try:
            response = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            # A 403 here usually means the credentials lack s3:ListBucket, without which S3
            # reports missing keys as 403; say so rather than guess "missing".
            raise BlobStoreError(f"S3 HEAD {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 HEAD {key!r} failed: {exc}") from exc
        return BlobInfo(
            key=key, size=response["ContentLength"], last_modified=response.get("LastModified")
        )

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        validate_key(key)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            if max_bytes is not None and response["ContentLength"] > max_bytes:
                response["Body"].close()
                raise BlobTooLargeError(key, response["ContentLength"])
            return response["Body"].read()
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc

    def download_to(self, key: str, destination: Path) -> None:
        validate_key(key)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            with open(destination, "wb") as out:
                for chunk in response["Body"].iter_chunks(_COPY_CHUNK_BYTES):
                    out.write(chunk)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        with self._store_errors(f"PUT {key!r}"):
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=content_type
            )

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._store_errors(f"DELETE {key!r}"):
            self._client.delete_object(Bucket=self._bucket, Key=key)

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(validate_key(key))
            if len(batch) == S3_BATCH_LIMIT:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        with self._store_errors(f"DeleteObjects ({len(keys)} keys)"):
            response = self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        # DeleteObjects answers 200 even when single keys fail; a failure hides in the body.
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise BlobStoreError(
                f"S3 DeleteObjects failed for {len(errors)} of {len(keys)} keys, e.g. "
                f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )

    def list_prefix(self, prefix: str, *, start_after: str | None = None) -> Iterator[BlobInfo]:
        _validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self._bucket,
            Prefix=prefix,
            StartAfter=start_after or "",  # empty = from the first key
            PaginationConfig={"PageSize": S3_BATCH_LIMIT},
        )
        with self._store_errors(f"LIST {prefix!r}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield BlobInfo(
                        key=item["Key"], size=item["Size"], last_modified=item.get("LastModified")
                    )

    def ensure_ready(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise BlobStoreError(
                    f"S3 bucket {self._bucket!r} exists but is not usable with these "
                    f"credentials: {exc}"
                ) from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 endpoint unreachable: {exc}") from exc
        log.info("creating S3 bucket %s", self._bucket)
        create: dict[str, object] = {"Bucket": self._bucket}
        if self._region != "us-east-1":
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            create["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._client.create_bucket(**create)  # type: ignore[arg-type]
        except ClientError as exc:
            # Another process booting at the same moment may have won the race; that is fine.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise BlobStoreError(f"cannot create S3 bucket {self._bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"cannot create S3 bucket {self._bucket!r}: {exc}") from exc

    def ping(self) -> bool:
        try:
            self._probe_client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as exc:
            log.warning("blob store not ready: S3 bucket %s: %s", self._bucket, exc)
            return False
        return True


# --- local disk ---------------------------------------------------------------------------------


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root/<key>``, for the embedded single-machine mode.

    Presigned URLs point at the API (``{public_url}/blobs/<key>?...``), which serves them with
    ``service.api.blobs``; they are HMAC-SHA256 signed with a key derived from ``secret_key``
    over the method, key, expiry, length, content type and download name, so changing any of
    them (or using the URL after ``expires``) is refused. ``clock`` returns Unix seconds.

    Every write goes to a temp file in the target's directory and is renamed over the target
    with ``os.replace`` once complete, so readers see the old blob or the whole new one, never a
    partial upload. A directory layout cannot hold both ``a`` and ``a/b``; our key scheme never
    asks for that, and such a write raises :class:`BlobStoreError`.
    """

    def __init__(
        self,
        root: Path,
        *,
        public_url: str,
        secret_key: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key:
            raise ValueError("LocalBlobStore needs a secret_key to sign its URLs")
        self._root = Path(root)
        self._public_url = public_url.rstrip("/")
        # A purpose-bound subkey: the same secret may sign other things (sessions, tokens)
        # without a signature from one context ever validating in another.
        self._signing_key = hmac.new(
            secret_key.encode(), b"pagelane local blob URL v1", hashlib.sha256
        ).digest()
        self._clock = clock

    @property
    def root(self) -> Path:
        return self._root

    @property
    def public_url(self) -> str:
        """Base URL of the API that serves this store's signed URLs (no trailing slash)."""
        return self._public_url

    # --- signing ----------------------------------------------------------------------------

    def _signature(
        self,
        method: str,
        key: str,
        expires: int,
        length: int | None,
        content_type: str,
        filename: str,
    ) -> str:
        # JSON gives an unambiguous encoding: no choice of field values can make two different
        # tuples serialise to the same message.
        message = json.dumps([method, key, expires, length, content_type, filename])
        return hmac.new(self._signing_key, message.encode(), hashlib.sha256).hexdigest()

    def verify(
        self,
        method: str,
        key: str,
        expires: int,
        length: int | None,
        sig: str,
        content_type: str | None = None,
        *,
        filename: str | None = None,
    ) -> bool:
        """Whether ``sig`` was issued by this store for exactly these values and is unexpired.

        ``content_type`` is the type the request carries: a URL signed with a content type
        accepts only that one, a URL signed without one accepts any (as on S3). ``filename``
        is the download name a GET URL was signed with. Invalid keys are never valid.
        """
        try:
            validate_key(key)
        except ValueError:
            return False
        if not _HEX_SHA256.fullmatch(sig) or self._clock() >= expires:
            return False
        name = filename or ""
        if hmac.compare_digest(
            self._signature(method, key, expires, length, content_type or "", name), sig
        ):
            return True
        return bool(content_type) and hmac.compare_digest(
            self._signature(method, key, expires, length, "", name), sig
        )

    def _signed_url(self, key: str, query: dict[str, str]) -> str:
        # Keys use only URL-safe characters, so they go into the path unescaped.
        return f"{self._public_url}/blobs/{key}?{urlencode(query)}"

    def presign_put(
        self, key: str, *, content_length: int | None, content_type: str | None, expires_in: int
    ) -> PresignedRequest:
        validate_key(key)
        _validate_expiry(expires_in)
        _validate_header_value("content_type", content_type)
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must be >= 0")
        expires_at = _expiry_instant(self._clock(), expires_in)
        expires = int(expires_at.timestamp())
        sig = self._signature("PUT", key, expires, content_length, content_type or "", "")
        url = self._signed_url(
            key,
            {
                "method": "PUT",
                "expires": str(expires),
                "len": "" if content_length is None else str(content_length),
                "sig": sig,
            },
        )
        headers = {"Content-Type": content_type} if content_type else {}
        return PresignedRequest(method="PUT", url=url, headers=headers, expires_at=expires_at)

    def presign_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        _validate_expiry(expires_in)
        expires = int(_expiry_instant(self._clock(), expires_in).timestamp())
        name = _download_name(filename) if filename is not None else ""
        query = {"method": "GET", "expires": str(expires), "len": ""}
        if name:
            query["filename"] = name
        query["sig"] = self._signature("GET", key, expires, None, "", name)
        return self._signed_url(key, query)

    # --- files ------------------------------------------------------------------------------

    def blob_path(self, key: str) -> Path:
        """Where ``key``'s file lives (validated). The file may vanish at any moment, so open
        it and handle ``FileNotFoundError`` rather than checking first."""
        return self._root / validate_key(key)

    @contextlib.contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise BlobStoreError(f"local blob store: {what} failed: {exc}") from exc

    def _create_temp_beside(self, path: Path) -> tuple[int, str]:
        # `delete` prunes empty directories, so one may vanish between mkdir and mkstemp;
        # creating it again is the whole fix.
        for _ in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(
                    prefix=f"{path.name}{_TEMP_MARKER}", suffix=".part", dir=path.parent
                )
            except FileNotFoundError:
                continue
        raise BlobStoreError(f"local blob store: cannot create a temp file in {path.parent}")

    @contextlib.contextmanager
    def _atomic_replace(self, path: Path) -> Iterator[BinaryIO]:
        """Yield a file to write; on success it replaces ``path`` whole, on failure it is gone."""
        fd, temp_name = self._create_temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                # An upload reported as stored must survive a power cut, not just a crash.
                os.fsync(out.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    def receive_upload(self, key: str, body: IO[bytes], *, expected_length: int | None) -> int:
        """Copy ``body`` to ``key`` in chunks and publish it atomically; returns bytes stored.

        With ``expected_length``, a body of any other length raises
        :class:`BlobLengthMismatchError` and stores nothing; at most one byte past the expected
        length is read. When reading the body fails (a client hanging up) nothing is stored
        and :class:`UploadInterruptedError` is raised, or the body's own disconnect error
        (werkzeug's ``ClientDisconnected``) passes through unchanged.
        """
        path = self.blob_path(key)
        received = 0
        with self._os_errors(f"upload of {key!r}"), self._atomic_replace(path) as out:
            # Read one byte past the signed length so an overlong body is detected, not cut.
            budget = None if expected_length is None else expected_length + 1
            while budget is None or received < budget:
                want = (
                    _COPY_CHUNK_BYTES
                    if budget is None
                    else min(_COPY_CHUNK_BYTES, budget - received)
                )
                try:
                    chunk = body.read(want)
                except OSError as exc:
                    # The client's connection failed, not our disk: keep it out of BlobStoreError.
                    raise UploadInterruptedError(f"upload of {key!r} interrupted: {exc}") from exc
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
            if expected_length is not None and received != expected_length:
                raise BlobLengthMismatchError(expected_length, received)
        return received

    def head(self, key: str) -> BlobInfo | None:
        path = self.blob_path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BlobStoreError(f"local blob store: stat {key!r} failed: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return BlobInfo(key=key, size=st.st_size, last_modified=_mtime(st))

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self.blob_path(key)
        try:
            with open(path, "rb") as blob:
                size = os.fstat(blob.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLargeError(key, size)
                return blob.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobNotFoundError(key) from exc
        except OSError as exc:
            raise BlobStoreError(f"local blob store: read {key!r} failed: {exc}") from exc

    def download_to(self, key: str, destination: Path) -> None:
        path = self.blob_path(key)
        try:
            with open(path, "rb") as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK_BYTES)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not path.is_file():
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"local blob store: copy of {key!r} failed: {exc}") from exc
        except OSError as exc:
            raise BlobStoreError(f"local blob store: copy of {key!r} failed: {exc}") from exc

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        # The content type is not kept: downloads are typed from the key's extension.
        path = self.blob_path(key)
        with self._os_errors(f"write of {key!r}"), self._atomic_replace(path) as out:
            out.write(data)

    def delete(self, key: str) -> None:
        path = self.blob_path(key)
        with self._os_errors(f"delete of {key!r}"):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return  # a key prefix, not a blob: nothing stored under this exact key
        self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, directory: Path) -> None:
        # Results live in one directory per batch; without pruning, retention sweeps would
        # leave thousands of empty directories behind. rmdir refuses non-empty directories,
        # which makes this safe against concurrent writers.
        root = self._root.resolve()
        current = directory.resolve()
        while current != root and root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def list_prefix(self, prefix: str, *, start_after: str | None = None) -> Iterator[BlobInfo]:
        _validate_prefix(prefix)
        directory_part = prefix.rpartition("/")[0]
        start = self._root / directory_part if directory_part else self._root
        key_prefix = f"{directory_part}/" if directory_part else ""
        for info in self._walk_in_key_order(start, key_prefix, prefix):
            if start_after is None or info.key > start_after:
                yield info

    def _walk_in_key_order(
        self, directory: Path, key_prefix: str, prefix: str
    ) -> Iterator[BlobInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise BlobStoreError(f"local blob store: listing {directory} failed: {exc}") from exc
        # Sorting a directory's own entries, with each subdirectory ranked as "name/", yields
        # exactly S3's order of full keys, without reading the whole tree first.
        ranked: list[tuple[str, bool, os.DirEntry[str]]] = []
        for entry in entries:
            if _TEMP_MARKER in entry.name:
                continue  # an upload in flight (or abandoned): not a blob
            is_dir = entry.is_dir(follow_symlinks=False)
            rank = f"{key_prefix}{entry.name}/" if is_dir else f"{key_prefix}{entry.name}"
            wanted = rank.startswith(prefix) or (is_dir and prefix.startswith(rank))
            if wanted:
                ranked.append((rank, is_dir, entry))
        ranked.sort(key=lambda item: item[0])
        for rank, is_dir, entry in ranked:
            if is_dir:
                yield from self._walk_in_key_order(Path(entry.path), rank, prefix)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed
            if stat.S_ISREG(st.st_mode):
                yield BlobInfo(key=rank, size=st.st_size, last_modified=_mtime(st))

    def ensure_ready(self) -> None:
        with self._os_errors(f"creating {self._root}"):
            self._root.mkdir(parents=True, exist_ok=True)
        if not os.access(self._root, os.W_OK):
            raise BlobStoreError(f"local blob store: {self._root} is not writable")

    def ping(self) -> bool:
        if self._root.is_dir() and os.access(self._root, os.W_OK):
            return True
        log.warning("blob store not ready: %s is missing or not writable", self._root)
        return False


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


__all__ = [
    "MAX_PRESIGN_SECONDS",
    "BlobInfo",
    "BlobLengthMismatchError",
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreError",
    "LocalBlobStore",
    "PresignedRequest",
    "S3BlobStore",
    "UploadInterruptedError",
    "make_blob_store",
    "validate_key",
]
