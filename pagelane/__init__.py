"""Pagelane's Python client: the SDK (:class:`Client`, :class:`AsyncClient`) and the client
side of the ``pagelane`` command (``run``, ``submit``, ``status``, ``wait``, ``download``,
``cancel``). docs/client.md shows both in use.

The SDK speaks SPEC.md's HTTP API, so it also talks to extract.page's hosted API for
everything the two share (the bulk registration endpoint is a pagelane extension; the SDK falls
back to one registration per file without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

# The async client loads on first use: the `pagelane` command and sync scripts never need it,
# and every command starts faster without it.
_LAZY = {"AsyncClient", "AsyncChangeFeed"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from client import async_client

        return getattr(async_client, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")


if TYPE_CHECKING:
    from client.async_client import AsyncChangeFeed, AsyncClient

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
