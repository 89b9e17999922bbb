"""Blobs in one S3 (or S3-compatible) bucket, reached with boto3."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import add_expect_header

from service.storage.base import (
    COPY_CHUNK_BYTES,
    CREATE_ONLY_HEADERS,
    S3_BATCH_LIMIT,
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobTooLargeError,
    PresignedRequest,
    download_name,
    expiry_instant,
    validate_expiry,
    validate_header_value,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# DeleteObjects calls in flight at once in one delete_many.
DELETE_THREADS = 4
# put_file: one PUT up to 16 MiB (a result of a few hundred pages), multipart above it. Parts
# are read from the file as they are sent, so at most 4 parts of 8 MiB are in memory at once
# (boto3's default is 10 threads): a worker's memory stays bounded whatever the result's size.
_UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=16 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
)


def _attachment_disposition(filename: str) -> str:
    """RFC 6266 ``Content-Disposition`` with an ASCII fallback and the exact UTF-8 name."""
    fallback = "".join(ch if ch.isascii() and ch not in '"\\' else "_" for ch in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


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
        validate_expiry(expires_in)
        validate_header_value("content_type", content_type)
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must be >= 0")
        # Create-only: a signed header, so S3 answers 412 PreconditionFailed to a PUT of a key
        # that exists (S3 conditional writes; MinIO and moto honour it too), and a client that
        # leaves the header out breaks the signature (403).
        params: dict[str, object] = {"Bucket": self._bucket, "Key": key, "IfNoneMatch": "*"}
        headers: dict[str, str] = {}
        if content_type:
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        if content_length is not None:
            # Becomes a signed header: S3 answers 403 SignatureDoesNotMatch to any other length.
            # It is not repeated in `headers`, because every HTTP client sets it from the body.
            params["ContentLength"] = content_length
        # Taken before signing, so the advertised expiry is never later than S3's own.
        expires_at = expiry_instant(time.time(), expires_in)
        with self._store_errors("presign PUT"):
            url = self._client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_in
            )
        headers.update(CREATE_ONLY_HEADERS)
        return PresignedRequest(method="PUT", url=url, headers=headers, expires_at=expires_at)

    def presign_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        validate_expiry(expires_in)
        params: dict[str, object] = {"Bucket": self._bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = _attachment_disposition(download_name(filename))
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

    def download_to(self, key: str, destination: Path, *, max_bytes: int | None = None) -> str:
        validate_key(key)
        # One GET streamed in order (not download_fileobj's parallel ranged GETs): the digest is
        # taken as the chunks pass, and the length is known before the body is read.
        digest = hashlib.sha256()
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            if max_bytes is not None and response["ContentLength"] > max_bytes:
                response["Body"].close()
                raise BlobTooLargeError(key, response["ContentLength"])
            with open(destination, "wb") as out:
                for chunk in response["Body"].iter_chunks(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 GET {key!r} failed: {exc}") from exc
        return digest.hexdigest()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        with self._store_errors(f"PUT {key!r}"):
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=content_type
            )

    def put_file(
        self, key: str, source: Path, *, content_type: str = "application/octet-stream"
    ) -> None:
        validate_key(key)
        try:
            self._client.upload_file(
                str(source),
                self._bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=_UPLOAD_CONFIG,
            )
        except S3UploadFailedError as exc:  # boto3 wraps the ClientError of the upload
            raise BlobStoreError(f"S3 PUT {key!r} (from {source}) failed: {exc}") from exc
        except (ClientError, BotoCoreError) as exc:
            raise BlobStoreError(f"S3 PUT {key!r} (from {source}) failed: {exc}") from exc

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._store_errors(f"DELETE {key!r}"):
            self._client.delete_object(Bucket=self._bucket, Key=key)

    def delete_many(self, keys: Iterable[str]) -> None:
        batches: list[list[str]] = [[]]
        for key in keys:
            if len(batches[-1]) == S3_BATCH_LIMIT:
                batches.append([])
            batches[-1].append(validate_key(key))
        batches = [batch for batch in batches if batch]
        if len(batches) <= 1:
            for batch in batches:
                self._delete_batch(batch)
            return
        # Several DeleteObjects calls at once (the client is thread-safe): the retention
        # sweep's throughput is this call's (docs/operations.md).
        with ThreadPoolExecutor(max_workers=min(DELETE_THREADS, len(batches))) as pool:
            for future in [pool.submit(self._delete_batch, batch) for batch in batches]:
                future.result()

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
        validate_prefix(prefix)
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
