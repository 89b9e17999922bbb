"""The structured log format: fields, context binding, scrubbing of API keys, terminal form."""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
from collections.abc import Iterator

import pytest

from service import logs


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of our own with a JSON handler on a buffer (the root logger stays pytest's)."""
    stream = io.StringIO()
    logger = logging.getLogger(f"pagelane.test.{secrets.token_hex(4)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = logs.make_handler("auto", stream)  # a buffer is no terminal: JSON
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    logs.clear()


def _lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_bound_context(capture) -> None:
    logger, stream = capture
    with logs.log_context(request_id="req_1", customer_id="cus_1"):
        logger.info("submitted %d items", 3)
        with logs.log_context(batch_id="batch_1", item_id="item_1", task_id="t-1"):
            logger.warning("inner")
    logger.info("outside")
    first, inner, outside = _lines(stream)
    assert first["message"] == "submitted 3 items"
    assert first["level"] == "INFO" and first["logger"] == logger.name
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert first["request_id"] == "req_1" and first["customer_id"] == "cus_1"
    assert "batch_id" not in first and "item_id" not in first and "task_id" not in first
    assert inner == {
        **inner,
        "request_id": "req_1",
        "customer_id": "cus_1",
        "batch_id": "batch_1",
        "item_id": "item_1",
        "task_id": "t-1",
        "level": "WARNING",
    }
    assert set(outside) == {"timestamp", "level", "logger", "message"}, "the context leaked"


def test_extra_wins_over_the_context_and_exceptions_stay_on_one_line(capture) -> None:
    logger, stream = capture
    with logs.log_context(item_id="from-context"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed", extra={"item_id": "from-extra"})
    assert len(stream.getvalue().splitlines()) == 1
    (line,) = _lines(stream)
    assert line["item_id"] == "from-extra"
    assert "ValueError: boom" in line["exception"] and "Traceback" in line["exception"]


def test_contexts_do_not_cross_threads(capture) -> None:
    logger, stream = capture
    logs.bind(request_id="req_main")
    seen: list[dict[str, str]] = []

    def other_request() -> None:
        logs.bind(request_id="req_thread")
        seen.append(logs.current_context())
        logger.info("in thread")

    thread = threading.Thread(target=other_request)
    thread.start()
    thread.join()
    logger.info("in main")
    by_message = {line["message"]: line for line in _lines(stream)}
    assert seen == [{"request_id": "req_thread"}]
    assert by_message["in thread"]["request_id"] == "req_thread"
    assert by_message["in main"]["request_id"] == "req_main"


def test_api_keys_never_reach_a_line(capture) -> None:
    logger, stream = capture
    key = "pl_" + secrets.token_urlsafe(32)
    logger.info("bad key %s", key)
    logger.info("headers {'X-API-KEY': '%s', 'Authorization': 'Bearer %s'}", key, "tok123secret")
    try:
        raise RuntimeError(f"rejected {key}")
    except RuntimeError:
        logger.exception("auth failed")
    text = stream.getvalue()
    assert key not in text and key[3:] not in text
    assert "tok123secret" not in text
    assert "pl_[redacted]" in text
    # The short visible prefix (`keys revoke` takes it) is not a secret.
    logger.info("revoked %s", key[:10])
    assert _lines(stream)[-1]["message"] == f"revoked {key[:10]}"


def test_a_terminal_gets_one_readable_line() -> None:
    stream = _Terminal()
    logger = logging.getLogger("pagelane.test.tty")
    logger.propagate = False
    handler = logs.make_handler("auto", stream)
    logger.addHandler(handler)
    try:
        with logs.log_context(item_id="item_9"):
            logger.warning("slow page")
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    assert not line.startswith("{")
    assert "WARNING" in line and "pagelane.test.tty: slow page" in line
    assert line.endswith("[item_id=item_9]")


def test_format_setting_overrides_the_terminal_guess() -> None:
    assert isinstance(logs.make_handler("json", _Terminal()).formatter, logs.JsonFormatter)
    assert isinstance(logs.make_handler("text", io.StringIO()).formatter, logs.TextFormatter)


def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    # Others' handlers (an earlier test in this process may have configured ours already).
    before = [h for h in root.handlers if not getattr(h, "_pagelane", False)]
    level = root.level
    try:
        first = logs.configure_logging("DEBUG", stream=io.StringIO())
        second = logs.configure_logging(logging.INFO, stream=io.StringIO())
        ours = [h for h in root.handlers if getattr(h, "_pagelane", False)]
        assert ours == [second] and first not in root.handlers
        assert all(h in root.handlers for h in before), "someone else's handler was removed"
        assert root.level == logging.INFO
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_pagelane", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
