"""Where the client finds its API, its key, and how patiently it retries."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

from pagelane.errors import ConfigurationError

DEFAULT_API_URL = "http://127.0.0.1:8080"  # where `pagelane up` / `make run` listen
API_URL_ENV = "PAGELANE_API_URL"
# extract.page's own SDKs read EXTRACT_API_KEY; accepting it lets one environment drive both.
API_KEY_ENVS = ("PAGELANE_API_KEY", "EXTRACT_API_KEY")


def resolve_api_key(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``explicit``, else ``$PAGELANE_API_KEY``, else ``$EXTRACT_API_KEY``; raises
    :class:`ConfigurationError` when none is set."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    for name in API_KEY_ENVS:
        if env.get(name):
            return env[name]
    raise ConfigurationError(
        "no API key: pass api_key= or set PAGELANE_API_KEY (or EXTRACT_API_KEY)"
    )


def resolve_api_url(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``explicit``, else ``$PAGELANE_API_URL``, else the embedded default; no trailing slash."""
    env = os.environ if environ is None else environ
    return (explicit or env.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried: on no answer, 429, 5xx and ``idempotency_key_in_use``.

    A server's ``Retry-After`` is obeyed up to ``max_retry_after`` seconds (a rate-limit window
    is at most a minute by default; waiting an hour on a bad header is never right). Without one,
    the wait is exponential from ``initial_backoff`` with full jitter, capped at ``max_backoff``,
    so a fleet of clients does not retry in lockstep. ``max_attempts`` counts the first try.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), no Retry-After."""
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        # Full jitter, but never less than a tenth of the ceiling: retrying at once is pointless.
        return random.uniform(ceiling / 10, ceiling)

    def retry_after(self, header: str | None, attempt: int) -> float:
        """The wait a ``Retry-After`` header asks for (seconds form), capped; falls back to
        :meth:`backoff` when the header is missing or is an HTTP date we do not parse."""
        if header:
            try:
                seconds = float(header.strip())
            except ValueError:
                seconds = -1.0
            if seconds >= 0:
                return min(seconds, self.max_retry_after)
        return self.backoff(attempt)
