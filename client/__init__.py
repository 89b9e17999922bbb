"""Pagelane's Python client: the SDK (:class:`Client`, :class:`AsyncClient`) and the client
side of the ``pagelane`` command (``run``, ``submit``, ``status``, ``wait``, ``download``,
``cancel``). docs/client.md shows both in use.

The SDK speaks SPEC.md's HTTP API, so it also talks to extract.page's hosted API for
everything the two share (the bulk registration endpoint is a pagelane extension; the SDK falls
back to one registration per file without it).
"""

from __future__ import annotations

from client.async_client import AsyncChangeFeed, AsyncClient
from client.config import RetryPolicy
from client.errors import ApiError, ConfigurationError, PagelaneConnectionError, PagelaneError
from client.models import (
    Batch,
    BatchCounts,
    BatchItem,
    BatchList,
    BatchOptions,
    Chunk,
    ExtractedFile,
    ExtractResult,
    File,
    FileSpec,
    ItemError,
    UploadInstructions,
)
from client.protocol import RetryNotice
from client.sync_client import ChangeFeed, Client

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncChangeFeed",
    "AsyncClient",
    "Batch",
    "BatchCounts",
    "BatchItem",
    "BatchList",
    "BatchOptions",
    "ChangeFeed",
    "Chunk",
    "Client",
    "ConfigurationError",
    "ExtractResult",
    "ExtractedFile",
    "File",
    "FileSpec",
    "ItemError",
    "PagelaneConnectionError",
    "PagelaneError",
    "RetryNotice",
    "RetryPolicy",
    "UploadInstructions",
    "__version__",
]
