"""Blob storage for inputs and results: one interface (``base``), an S3 backend (``s3``) and a
local-disk backend (``local``).

Clients never stream bytes through the API when the store is S3: they get a presigned request
and talk to the store directly. The local backend imitates that with HMAC-signed URLs that the
API serves itself under ``/blobs/...`` (``service.api.blobs``).
"""

from __future__ import annotations

from service.settings import Settings
from service.storage.base import (
    MAX_PRESIGN_SECONDS,
    UPLOAD_EXISTS_CODE,
    UPLOAD_EXISTS_STATUS,
    BlobExistsError,
    BlobInfo,
    BlobLengthMismatchError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobTooLargeError,
    PresignedRequest,
    UploadInterruptedError,
    input_key,
    result_key,
    validate_key,
)
from service.storage.local import LocalBlobStore
from service.storage.s3 import S3BlobStore


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


__all__ = [
    "MAX_PRESIGN_SECONDS",
    "UPLOAD_EXISTS_CODE",
    "UPLOAD_EXISTS_STATUS",
    "BlobExistsError",
    "BlobInfo",
    "BlobLengthMismatchError",
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreError",
    "BlobTooLargeError",
    "LocalBlobStore",
    "PresignedRequest",
    "S3BlobStore",
    "UploadInterruptedError",
    "input_key",
    "make_blob_store",
    "result_key",
    "validate_key",
]
