"""Structured logs: one JSON object per line, or one readable line when stderr is a terminal.

Every record carries ``timestamp``, ``level``, ``logger`` and ``message``; and, when known,
``request_id``, ``customer_id``, ``batch_id``, ``item_id`` and ``task_id``. Those come from the
record's ``extra=`` or else from the log context, which the API's request hooks and the worker's
task hooks bind (:func:`bind`, :func:`log_context`), so a log call deep in the code needs no
plumbing to say which request or item it belongs to.

Configured once per process by :func:`configure_logging`: by the API through gunicorn's logger
class (:class:`GunicornLogger`, so gunicorn's own error and access lines are structured too) and
by the worker and beat through Celery's ``setup_logging`` signal (tasks/worker.py), which also
stops Celery from installing its own root handlers.

API keys never reach a log line: nothing here logs headers, and the formatters scrub anything
shaped like a key from messages and tracebacks as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any

from gunicorn import glogging

CONTEXT_FIELDS = ("request_id", "customer_id", "batch_id", "item_id", "task_id")

# A ContextVar has to be created once, at import, to be shared by everyone who reads it (Python's
# contextvars documentation); it is the one module-level state here. Each thread and each asyncio
# task sees its own value, so concurrent requests (gunicorn gthread) do not mix.
_context: ContextVar[Mapping[str, str]] = ContextVar("pagelane_log_context")

# Keys are "pl_" + 43 url-safe characters (service/auth.py); the 7-character visible prefix
# that `keys revoke` shows is not a secret and stays readable.
_KEY_PATTERN = re.compile(r"pl_[A-Za-z0-9_-]{20,}")
_HEADER_PATTERN = re.compile(
    r"(?i)((?:x-api-key|authorization)['\"]?\s*[:=,]\s*['\"]?(?:bearer\s+)?)[^\s'\",}]+"
)


# Libraries that say routine things at INFO in every process (a line per gunicorn worker boot,
# a line per S3 client): at INFO they would drown ours.
# Celery's "Task ... received" and "Task ... succeeded in" lines: two more lines an item, in
# the worker's busiest loop, saying what the worker's own line says (pagelane.worker: the item,
# its outcome and duration). Their warnings and errors (a task that raised) still show.
_CHATTY_AT_INFO = (
    "alembic.runtime.plugins",
    "botocore.credentials",
    "celery.worker.strategy",
    "celery.app.trace",
)


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add fields to this thread's (task's) log context; None values are ignored."""
    merged = dict(_context.get({}))
    merged.update({k: str(v) for k, v in fields.items() if v is not None})
    return _context.set(merged)


def reset(token: Token[Mapping[str, str]]) -> None:
    _context.reset(token)


def clear() -> None:
    """Forget the context (a pooled thread starting or finishing a request or task)."""
    _context.set({})


def current_context() -> dict[str, str]:
    return dict(_context.get({}))


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind fields for the duration of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def redact(text: str) -> str:
    text = _KEY_PATTERN.sub("pl_[redacted]", text)
    return _HEADER_PATTERN.sub(r"\1[redacted]", text)


class ContextFilter(logging.Filter):
    """Stamps the bound context onto each record, unless ``extra=`` already named a field.

    Attached to the handler, so it runs synchronously in the thread that logged: the context it
    reads is the caller's.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get({})
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None and name in context:
                setattr(record, name, context[name])
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None and value != "":
            fields[name] = str(value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line (tracebacks included, as an escaped string)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [field=value ...]`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {record.name}: "
            f"{redact(record.getMessage())}"
        )
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def make_handler(fmt: str = "auto", stream: IO[str] | None = None) -> logging.Handler:
    """A stderr handler with the context filter and the formatter ``fmt`` asks for.

    ``auto`` means text on a terminal and JSON otherwise (containers, files, log shippers).
    """
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if uses_json(fmt, stream) else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._pagelane = True  # type: ignore[attr-defined]
    return handler


def uses_json(fmt: str = "auto", stream: IO[str] | None = None) -> bool:
    """Whether ``fmt`` (the PAGELANE_LOG_FORMAT setting) means JSON on ``stream`` (stderr)."""
    return fmt == "json" or (fmt == "auto" and not _isatty(stream or sys.stderr))


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def configure_logging(
    level: int | str = "INFO", *, fmt: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Route the root logger through one structured handler; safe to call again (it replaces
    the handler a previous call installed, e.g. in a freshly forked worker child)."""
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "_pagelane", False)]:
        root.removeHandler(previous)
    handler = make_handler(fmt, stream)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Python warnings (Celery's, deprecations) become records too, instead of raw stderr text.
    logging.captureWarnings(True)
    for name in _CHATTY_AT_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def _log_format_setting() -> str:
    from service.settings import SettingsError, load_settings

    try:
        return load_settings().log_format
    except SettingsError:  # `pagelane api` already refused to start on a bad configuration
        return "auto"


_URL_SECRET = re.compile(
    r"(?i)((?:^|[?&;])(?:sig|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&;\s\"]*"
)


def redact_url_secrets(text: str) -> str:
    """``text`` with the values of signature query parameters replaced by ``REDACTED``."""
    if "=" not in text:
        return text
    return _URL_SECRET.sub(r"\1REDACTED", text)


class GunicornLogger(glogging.Logger):
    """gunicorn's logger class (``--logger-class``): its error and access lines, and the root
    logger the app logs through, all go through :func:`configure_logging`'s handler.

    Set up in the gunicorn master before it forks, so every worker process inherits it.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        handler = configure_logging(cfg.loglevel, fmt=_log_format_setting())
        for logger in (self.error_log, self.access_log):
            for previous in [h for h in logger.handlers if getattr(h, "_gunicorn", False)]:
                logger.removeHandler(previous)
            logger.addHandler(handler)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        # Signed URLs carry their credential in the query (the local store's ``sig=``, S3's
        # X-Amz-Signature): whoever reads the access log could replay them. Every atom that
        # may hold a query (the request line, the query, the referer, environ copies) is
        # redacted; the rest of the URL stays, so the line still says what was requested.
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {
            name: redact_url_secrets(value) if isinstance(value, str) else value
            for name, value in atoms.items()
        }

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        # The access line runs after the request's context is cleared: take the id from the
        # response header the app set, so the line joins the request's other lines.
        request_id = next(
            (value for name, value in resp.headers if name.lower() == "x-request-id"), None
        )
        with log_context(request_id=request_id or None):
            super().access(resp, req, environ, request_time)
