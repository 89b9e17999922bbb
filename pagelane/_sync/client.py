# Generated from pagelane/_async/client.py by `python -m pagelane._codegen` (unasync);
# do not edit: change the async file and regenerate (`make check` fails when they drift).
"""The SDK's clients, each with ``files``, ``batches`` and ``results``.

:class:`pagelane.AsyncClient` is written in ``pagelane/_async/client.py``;
:class:`pagelane.Client`, in ``pagelane/_sync/client.py``, is generated from it by
``python -m pagelane._codegen`` (the same code without ``async``/``await``): edit the first,
then regenerate. Both send every call through one retry loop; what is retried, how long to wait
and which error to raise come from :mod:`pagelane.protocol`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pagelane import protocol
from pagelane._common import (
    BLOCK_SIZE,
    QUICK_POLL_SECONDS,
    STREAM_THRESHOLD,
    UploadSource,
    source_length,
    upload_instructions,
    user_agent,
)
from pagelane.config import RetryPolicy, resolve_api_key, resolve_api_url
from pagelane.errors import ApiError, PagelaneConnectionError
from pagelane.models import (
    Batch,
    BatchItem,
    BatchList,
    BatchOptions,
    Event,
    ExtractResult,
    File,
    FileSpec,
    Quote,
    UploadInstructions,
)
from pagelane.protocol import ApiCall, RetryNotice

T = TypeVar("T")


class Client:
    """A connection to a Pagelane (or extract.page) API.

    ``api_key`` defaults to ``$PAGELANE_API_KEY`` (then ``$EXTRACT_API_KEY``) and ``base_url``
    to ``$PAGELANE_API_URL`` (then ``http://127.0.0.1:8080``). Every call is retried according
    to ``retry``; ``on_retry`` hears about each wait. One client can be shared: by a pool of
    upload threads (``Client``), by the tasks of one event loop (``AsyncClient``). Use it as a
    context manager (``with`` / ``async with``), or close it (``close()`` / ``aclose()``).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        max_connections: int = 32,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = resolve_api_url(base_url)
        self._result_route = protocol.ResultRoute(self.base_url)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._api = httpx.Client(
            base_url=self.base_url,
            headers={"X-API-KEY": resolve_api_key(api_key), "User-Agent": user_agent()},
            timeout=timeout,
            limits=limits,
            transport=transport,
        )
        # Presigned URLs carry their own credentials. A separate client without default headers
        # guarantees the API key never travels to the blob store (S3, a CDN, ...).
        self._blobs = httpx.Client(
            headers={"User-Agent": user_agent()}, timeout=timeout, limits=limits
        )
        self.files = Files(self)
        self.batches = Batches(self)
        self.results = Results(self)
        self.quotes = Quotes(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._api.close()
        self._blobs.close()

    def call(self, call: ApiCall[T]) -> T:
        """Send one API call with retries; its parsed answer, or :class:`ApiError`."""
        response = self._send_with_retries(
            call.method,
            call.path,
            lambda: self._api.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            ),
            lambda r: r.status_code in call.success,
        )
        return call.parse(response)

    def _send_with_retries(
        self,
        method: str,
        url: str,
        send: Callable[[], httpx.Response],
        ok: Callable[[httpx.Response], bool],
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = send()
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_attempts:
                    raise PagelaneConnectionError(
                        f"{method} {protocol.redact_url(url)} failed after {attempt} attempts: "
                        f"{protocol.describe_transport_error(exc)}",
                        method=method,
                        url=protocol.redact_url(url),
                    ) from exc
                self._wait(method, url, attempt, self.retry.backoff(attempt), exc)
                continue
            if ok(response):
                return response
            delay = protocol.retry_delay(response, self.retry, attempt)
            if delay is None or attempt >= self.retry.max_attempts:
                raise protocol.error_from_response(response)
            self._wait(method, url, attempt, delay, response)

    def _wait(
        self, method: str, url: str, attempt: int, delay: float, cause: httpx.Response | Exception
    ) -> None:
        if isinstance(cause, httpx.Response):
            reason = f"{cause.status_code} {protocol.error_from_response(cause).code}"
        else:
            reason = protocol.describe_transport_error(cause)
        if self.on_retry is not None:
            self.on_retry(RetryNotice(method, protocol.redact_url(url), attempt, delay, reason))
        self._sleep(delay)


class Files:
    """``/v1/files``: register uploads, PUT their bytes, read them back."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._bulk_supported: bool | None = None  # learnt from the first bulk call

    def create(
        self,
        size_bytes: int,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        sha256: str | None = None,
    ) -> File:
        """Register one upload; the answer's ``upload`` says where to PUT the bytes."""
        spec = FileSpec(
            size_bytes=size_bytes, filename=filename, content_type=content_type, sha256=sha256
        )
        return self._client.call(protocol.create_file(spec))

    def create_many(self, specs: Sequence[FileSpec]) -> builtins.list[File]:
        """Register many uploads, in order: 1,000 per ``POST /v1/files/bulk``; one by one on a
        server without the bulk endpoint (404/405), remembered for the client's lifetime."""
        registered: builtins.list[File] = []
        for start in range(0, len(specs), protocol.BULK_REGISTRATION_LIMIT):
            chunk = specs[start : start + protocol.BULK_REGISTRATION_LIMIT]
            if self._bulk_supported is not False:
                try:
                    batch_of_files: builtins.list[File] = self._client.call(
                        protocol.create_files_bulk(chunk)
                    )
                    registered.extend(batch_of_files)
                    self._bulk_supported = True
                    continue
                except ApiError as exc:
                    if self._bulk_supported or not protocol.bulk_unsupported(exc):
                        raise
                    self._bulk_supported = False
            for spec in chunk:
                registered.append(self._client.call(protocol.create_file(spec)))
        return registered

    def upload(self, file: File | UploadInstructions, source: UploadSource) -> None:
        """PUT ``source`` (bytes or a path) to the file's presigned URL with its headers.

        Network errors, 429 and 5xx are retried; any other answer (403: the URL expired or the
        size differs from the registered one) raises :class:`ApiError` with the store's code.
        """
        instructions = upload_instructions(file)
        length = source_length(source)

        def send() -> httpx.Response:
            headers = {**instructions.headers, "Content-Length": str(length)}
            return self._client._blobs.request(
                instructions.method, instructions.url, content=_read_source(source), headers=headers
            )

        self._client._send_with_retries(
            instructions.method, instructions.url, send, lambda r: 200 <= r.status_code < 300
        )

    def get(self, file_id: str) -> File:
        """The file; a finished PUT shows ``uploaded`` without any confirm call."""
        return self._client.call(protocol.get_file(file_id))

    def delete(self, file_id: str) -> None:
        """Delete the file and its bytes now; pending items that need it fail
        ``upload_missing``. The file is 404 afterwards."""
        self._client.call(protocol.delete_file(file_id))


class Batches:
    """``/v1/batches``: submit, poll, list and cancel."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        file_ids: Sequence[str],
        *,
        options: BatchOptions | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        engine: str | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Submit uploaded files as one batch.

        Without ``idempotency_key`` a random one is generated, so the SDK's own retries of this
        call can never create a second batch. Pass a key derived from your input to make a
        resubmission after a crash return the batch created the first time.
        """
        call = protocol.create_batch(
            file_ids,
            idempotency_key=idempotency_key or protocol.new_idempotency_key(),
            options=dict(options) if isinstance(options, Mapping) else options,
            metadata=metadata,
            engine=engine,
        )
        return self._client.call(call)

    def get(self, batch_id: str, *, cursor: str | None = None, limit: int | None = None) -> Batch:
        """The batch with one page of items changed after ``cursor`` and the ``next_cursor``."""
        return self._client.call(protocol.get_batch(batch_id, cursor=cursor, limit=limit))

    def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> BatchList:
        """One page of the caller's batches, newest first (``next_cursor`` for the next)."""
        return self._client.call(protocol.list_batches(status=status, cursor=cursor, limit=limit))

    def iter_changes(
        self,
        batch_id: str,
        *,
        cursor: str | None = None,
        poll_interval: float = 1.0,
        page_size: int = 500,
    ) -> ChangeFeed:
        """Every item change from ``cursor`` on, until the batch is terminal (see the change
        feed: ``for`` / ``async for``); ``poll_interval`` is the longest wait between two polls."""
        return ChangeFeed(self, batch_id, cursor, poll_interval, page_size, self._client._sleep)

    def cancel(self, batch_id: str) -> Batch:
        """Cancel the pending items; running ones finish. A terminal batch comes back as is."""
        return self._client.call(protocol.cancel_batch(batch_id))

    def retry(
        self,
        batch_id: str,
        *,
        include_cancelled: bool = False,
        idempotency_key: str | None = None,
    ) -> Batch:
        """A new batch of the terminal batch's retryable failures (and its cancelled items
        with ``include_cancelled``); it carries ``parent_batch_id``. 409 ``nothing_to_retry``
        when there is none. A random ``idempotency_key`` makes the SDK's own retries safe."""
        call = protocol.retry_batch(
            batch_id,
            include_cancelled=include_cancelled,
            idempotency_key=idempotency_key or protocol.new_idempotency_key(),
        )
        return self._client.call(call)

    def delete(self, batch_id: str) -> None:
        """Delete a terminal batch, its items and result blobs now (409 while it runs)."""
        self._client.call(protocol.delete_batch(batch_id))

    def events(self, batch_id: str, *, after: int | None = None) -> EventStream:
        """The batch's events from the first (or from the one after seq ``after``) up to and
        including ``batch.completed``, over Server-Sent Events; reconnects and resumes by
        itself (``for`` / ``async for``; see :class:`AsyncEventStream`)."""
        return EventStream(self._client, batch_id, after)

    def wait(
        self, batch_id: str, *, poll_interval: float = 2.0, timeout: float | None = None
    ) -> Batch:
        """Poll until the batch is terminal; raises ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get(batch_id, limit=1)
            if batch.is_terminal:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status} after {timeout} s")
            self._client._sleep(poll_interval)


class ChangeFeed(Iterator[BatchItem]):
    """Iterates items as they change, following ``next_cursor``; ends when the batch is terminal.

    A full page is followed at once; an incomplete one means "caught up", so the feed waits
    before asking again: a quarter second while items keep changing, doubling while nothing
    does, up to ``poll_interval``. It stops after the batch is terminal and a page came back
    incomplete, which by SPEC's cursor guarantee means every item's final state was seen.
    ``sleep`` is how it waits (the client's: ``time.sleep`` for ``Client``, ``asyncio.sleep``
    for ``AsyncClient``); replace it to do other work in the meantime.

    ``cursor`` is safe to persist: it only moves past a page after every item of that page has
    been handed out and the caller asked for the next, so resuming from it never skips an item
    the caller did not get. ``batch`` is the latest batch resource (status, counts).
    """

    def __init__(
        self,
        batches: Batches,
        batch_id: str,
        cursor: str | None,
        poll_interval: float,
        page_size: int,
        sleep: Callable[[float], None],
    ) -> None:
        self.batch_id = batch_id
        self.cursor = cursor
        self.batch: Batch | None = None
        self._batches = batches
        self._poll_interval = poll_interval
        self._page_size = page_size
        self.sleep = sleep
        self._items = self._follow()

    def __iter__(self) -> ChangeFeed:
        return self

    def __next__(self) -> BatchItem:
        return self._items.__next__()

    def _follow(self) -> Iterator[BatchItem]:
        quick = delay = min(QUICK_POLL_SECONDS, self._poll_interval)
        while True:
            page = self._batches.get(self.batch_id, cursor=self.cursor, limit=self._page_size)
            self.batch = page
            items = page.items or []
            yield from items
            self.cursor = page.next_cursor or self.cursor
            if len(items) < self._page_size:
                if page.is_terminal:
                    return
                # Items still changing: look again soon. A quiet batch is asked less and less
                # often, up to poll_interval.
                delay = quick if items else min(delay * 2, self._poll_interval)
                self.sleep(delay)


class EventStream(Iterator[Event]):
    """A batch's events as they happen, from ``GET /v1/batches/{id}/events``; ends after
    ``batch.completed``.

    A dropped connection, or a stream the server ends early (it closes each one after a few
    minutes), is reopened with ``Last-Event-ID`` set to the last event handed out, after the
    server's ``retry:`` delay (1 s by default) or the retry policy's backoff, whichever is
    longer: every event is seen once, in order. 429 and 5xx answers are waited out
    (``Retry-After``); 401, 404, 422 raise :class:`ApiError`. Consecutive failed connections
    beyond the policy's ``max_attempts`` raise :class:`PagelaneConnectionError` (or the last
    ``ApiError``). ``last_id`` is the seq of the last event handed out (safe to persist and
    pass as ``after``). Close it to end it early.
    """

    def __init__(self, client: Client, batch_id: str, after: int | None) -> None:
        self.batch_id = batch_id
        self.last_id: int | None = after
        self.reconnects = 0
        self._client = client
        self._retry_seconds = protocol.DEFAULT_SSE_RETRY_SECONDS
        self._events = self._follow()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return self._events.__next__()

    def close(self) -> None:
        self._events.close()

    def _follow(self) -> Generator[Event, None, None]:
        client = self._client
        path = protocol.events_path(self.batch_id)
        url = client.base_url + path
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
            received = 0
            try:
                with client._api.stream("GET", path, headers=headers) as response:
                    if response.status_code != 200:
                        response.read()
                        failures += 1
                        delay = protocol.retry_delay(response, client.retry, failures)
                        if (
                            response.status_code in protocol.EVENT_STREAM_FATAL
                            or delay is None
                            or failures >= client.retry.max_attempts
                        ):
                            raise protocol.error_from_response(response)
                        client._wait("GET", url, failures, delay, response)
                        continue
                    parser = protocol.SseParser()
                    for line in response.iter_lines():
                        message = parser.feed(line)
                        if parser.retry_seconds is not None:
                            self._retry_seconds = parser.retry_seconds
                        if message is None:
                            continue
                        event = Event.model_validate_json(message.data)
                        self.last_id = event.seq
                        received += 1
                        failures = 0
                        yield event
                        if event.type == "batch.completed":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures >= client.retry.max_attempts:
                    raise PagelaneConnectionError(
                        f"GET {url} failed after {failures} attempts: "
                        f"{protocol.describe_transport_error(exc)}",
                        method="GET",
                        url=url,
                    ) from exc
                delay = max(self._retry_seconds, client.retry.backoff(failures))
                client._wait("GET", url, failures, delay, exc)
                self.reconnects += 1
                continue
            # The server ended the stream before batch.completed (its time limit, a restart).
            if received == 0 and self.last_id is not None:
                # Nothing new: resumed after the end, or a quiet batch. Only a terminal
                # batch's stream ends empty for good.
                batch = client.call(protocol.get_batch(self.batch_id, cursor=None, limit=1))
                if batch.is_terminal and self._completed_already():
                    return
            client._sleep(self._retry_seconds)
            self.reconnects += 1

    def _completed_already(self) -> bool:
        """True when no event follows ``last_id``: asked once more, without waiting."""
        client = self._client
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(self.last_id)}
        path = protocol.events_path(self.batch_id)
        with client._api.stream("GET", path, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                return False
            parser = protocol.SseParser()
            for line in response.iter_lines():
                if parser.feed(line) is not None:
                    return False
        return True


class Quotes:
    """``/v1/quotes``: what a batch of these files would cost, without extracting anything."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        file_ids: Sequence[str],
        options: BatchOptions | Mapping[str, Any] | None = None,
    ) -> Quote:
        """Ask for a quote of uploaded files (``status`` ``pending`` until workers counted)."""
        call = protocol.create_quote(
            file_ids, options=dict(options) if isinstance(options, Mapping) else options
        )
        return self._client.call(call)

    def get(self, quote_id: str) -> Quote:
        return self._client.call(protocol.get_quote(quote_id))

    def wait(
        self, quote_id: str, *, poll_interval: float = 0.5, timeout: float | None = None
    ) -> Quote:
        """Poll until the quote is complete; raises ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            quote = self.get(quote_id)
            if quote.is_complete:
                return quote
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"quote {quote_id} is still {quote.status} after {timeout} s")
            self._client._sleep(poll_interval)


class Results:
    """``/v1/batches/{id}/items/{id}/result``: the Extract result of a succeeded item."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, batch_id: str, item_id: str) -> ExtractResult:
        """The parsed result. Follows the 302 itself: the signed URL gets no API key."""
        client = self._client
        location = client.call(client._result_route.locate(batch_id, item_id))
        if location.body is not None:
            return ExtractResult.model_validate_json(location.body)
        url = location.url
        assert url is not None
        response = client._send_with_retries(
            "GET", url, lambda: client._blobs.get(url), lambda r: r.status_code == 200
        )
        return ExtractResult.model_validate_json(response.content)

    def download(self, batch_id: str, item_id: str, destination: str | os.PathLike[str]) -> Path:
        """Stream the result JSON into ``destination`` (all or nothing: written beside it and
        renamed into place, so a crash never leaves half a file under the final name)."""
        client = self._client
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        attempt = 0
        try:
            while True:
                attempt += 1
                location = client.call(client._result_route.locate(batch_id, item_id))
                if location.body is not None:
                    partial.write_bytes(location.body)
                    break
                assert location.url is not None
                try:
                    if self._stream_to(location.url, partial, attempt):
                        break
                except httpx.TransportError as exc:
                    if attempt >= client.retry.max_attempts:
                        raise PagelaneConnectionError(
                            f"downloading the result of {item_id} failed: "
                            f"{protocol.describe_transport_error(exc)}",
                            method="GET",
                            url=protocol.redact_url(location.url),
                        ) from exc
                    client._wait("GET", location.url, attempt, client.retry.backoff(attempt), exc)
            os.replace(partial, target)
            return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def _stream_to(self, url: str, partial: Path, attempt: int) -> bool:
        """One GET of the signed URL into ``partial``; False when it should be tried again."""
        client = self._client
        with client._blobs.stream("GET", url) as response:
            if response.status_code != 200:
                response.read()
                delay = protocol.retry_delay(response, client.retry, attempt)
                if delay is None or attempt >= client.retry.max_attempts:
                    raise protocol.error_from_response(response)
                client._wait("GET", url, attempt, delay, response)
                return False
            with open(partial, "wb") as out:
                for block in response.iter_bytes(BLOCK_SIZE):
                    out.write(block)
        return True


def _read_source(source: UploadSource) -> bytes | Iterator[bytes]:
    """The body of one attempt: bytes as they are, a small file whole, a large one in blocks
    (read afresh on every attempt, so a retry resends from the first byte)."""
    if isinstance(source, bytes):
        return source
    path = Path(source)
    if path.stat().st_size <= STREAM_THRESHOLD:
        return path.read_bytes()
    return _blocks(path)


def _blocks(path: Path) -> Iterator[bytes]:
    # Local reads of 1 MiB blocks take well under a millisecond: inline, even in the async client
    # (a thread per block would cost more than the read).
    with open(path, "rb") as stream:
        while block := stream.read(BLOCK_SIZE):
            yield block
