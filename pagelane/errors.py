"""What the SDK raises. Every exception is a :class:`PagelaneError`.

* :class:`ApiError` — a server answered with an error status. ``code`` is the envelope's stable
  ``error`` (``file_not_found``, ``rate_limited``, ...), so callers branch on codes, never on
  message text. Blob stores (S3's XML errors) are read into the same shape.
* :class:`PagelaneConnectionError` — no answer at all (refused, reset, timed out) after the
  retries the :class:`~client.config.RetryPolicy` allows.
* :class:`ConfigurationError` — the client cannot be built (no API key).
"""

from __future__ import annotations

from typing import Any


class PagelaneError(Exception):
    """Base class of every error the SDK raises."""


class ConfigurationError(PagelaneError):
    """The client was given (or found in the environment) too little to talk to an API."""


class PagelaneConnectionError(PagelaneError):
    """The request got no HTTP answer after every retry (network down, server gone, timeout)."""

    def __init__(self, message: str, *, method: str, url: str) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class ApiError(PagelaneError):
    """An error answer: ``status`` (HTTP), ``code`` (the envelope's ``error``), ``message``.

    ``context`` holds the envelope's other fields (``file_ids`` of a ``file_not_found``, the item
    ``status`` of a ``result_not_ready``, the ``detail`` of a ``validation_error``, ...);
    ``request_id`` is the ``X-Request-Id`` to quote in a bug report.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        context: dict[str, Any] | None = None,
        request_id: str | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.context = context or {}
        self.request_id = request_id
        self.method = method
        self.url = url
