"""Pagelane's Python client: the SDK (:class:`Client`, :class:`AsyncClient`) and the client
side of the ``pagelane`` command (``run``, ``submit``, ``status``, ``wait``, ``download``,
``cancel``). docs/client.md shows both in use.

The SDK speaks SPEC.md's HTTP API, so it also talks to extract.page's hosted API for
everything the two share (the bulk registration endpoint is a pagelane extension; the SDK falls
back to one registration per file without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagelane._sync.client import ChangeFeed, Client, EventStream
from pagelane._version import __version__
from pagelane.config import RetryPolicy
from pagelane.errors import ApiError, ConfigurationError, PagelaneConnectionError, PagelaneError
from pagelane.models import (
    Batch,
    BatchCounts,
    BatchItem,
    BatchList,
    BatchOptions,
    Chunk,
    Event,
    ExtractedFile,
    ExtractResult,
    File,
    FileSpec,
    ItemError,
    Quote,
    QuoteItem,
    QuoteTotals,
    UploadInstructions,
)
from pagelane.protocol import RetryNotice

# The async client loads on first use: the `pagelane` command and sync scripts never need it,
# and every command starts faster without it.
_LAZY = {"AsyncClient", "AsyncChangeFeed", "AsyncEventStream"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pagelane._async import client

        return getattr(client, name)
    raise AttributeError(f"module 'pagelane' has no attribute {name!r}")


if TYPE_CHECKING:
    from pagelane._async.client import AsyncChangeFeed, AsyncClient, AsyncEventStream

__all__ = [
    "ApiError",
    "AsyncChangeFeed",
    "AsyncClient",
    "AsyncEventStream",
    "Batch",
    "BatchCounts",
    "BatchItem",
    "BatchList",
    "BatchOptions",
    "ChangeFeed",
    "Chunk",
    "Client",
    "ConfigurationError",
    "Event",
    "EventStream",
    "ExtractResult",
    "ExtractedFile",
    "File",
    "FileSpec",
    "ItemError",
    "PagelaneConnectionError",
    "PagelaneError",
    "Quote",
    "QuoteItem",
    "QuoteTotals",
    "RetryNotice",
    "RetryPolicy",
    "UploadInstructions",
    "__version__",
]
