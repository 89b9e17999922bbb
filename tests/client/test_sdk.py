"""The SDK against the live stack: every call, sync and async, plus its retry behaviour."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

import ocr
from pagelane import (
    ApiError,
    AsyncClient,
    Batch,
    Client,
    ConfigurationError,
    FileSpec,
    RetryNotice,
    RetryPolicy,
    UploadInstructions,
)
from pagelane.config import resolve_api_key, resolve_api_url
from tests.client.conftest import Fault, LiveStack, serve
from tests.conftest import CORPUS

CRAZY_ONES = CORPUS / "digital-crazyones-1p.pdf"
LOREM = CORPUS / "digital-lorem-pdflatex-4p.pdf"
FAST_RETRY = RetryPolicy(max_attempts=6, initial_backoff=0.05, max_backoff=0.2)


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_sync_client_registers_uploads_submits_polls_and_fetches(
    live: LiveStack, tmp_path: Path
) -> None:
    customer = live.customer("sdk-sync")
    with Client(customer.key, live.url) as client:
        specs = [FileSpec.from_path(CRAZY_ONES), FileSpec.from_path(LOREM)]
        files = client.files.create_many(specs)
        assert [f.filename for f in files] == [CRAZY_ONES.name, LOREM.name]
        assert all(f.status == "awaiting_upload" and f.upload for f in files)
        client.files.upload(files[0], CRAZY_ONES)  # from a path
        client.files.upload(files[1], LOREM.read_bytes())  # from bytes
        assert client.files.get(files[0].id).status == "uploaded"

        ids = [f.id for f in files]
        batch = client.batches.create(ids, options={"ocr": "never"}, idempotency_key="sdk-sync-1")
        again = client.batches.create(ids, options={"ocr": "never"}, idempotency_key="sdk-sync-1")
        assert again.id == batch.id and customer.batch_count() == 1
        assert batch.id in [b.id for b in client.batches.list(limit=10).data]

        feed = client.batches.iter_changes(batch.id, poll_interval=0.2)
        final = {item.id: item for item in feed}
        assert feed.batch is not None and feed.batch.status == "completed"
        assert {i.status for i in final.values()} == {"succeeded"}
        assert client.batches.get(batch.id, cursor=feed.cursor).items == []  # caught up

        by_file = {i.file_id: i for i in final.values()}
        result = client.results.get(batch.id, by_file[files[0].id].id)
        assert result.page_count == 1
        assert "The round pegs in the square holes." in collapse(result.text)
        saved = client.results.download(batch.id, by_file[files[1].id].id, tmp_path / "r.json")
        assert saved.read_bytes().startswith(b"{") and "Huardest gefburn" in saved.read_text()
        assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no partial files left

        cancelled = client.batches.cancel(batch.id)  # terminal: a no-op
        assert cancelled.status == "completed"


def test_async_client_has_the_same_calls(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("sdk-async")

    async def scenario() -> tuple[Batch, list[Any]]:
        async with AsyncClient(customer.key, live.url) as client:
            files = await client.files.create_many([FileSpec.from_path(CRAZY_ONES)])
            await client.files.upload(files[0], CRAZY_ONES)
            assert (await client.files.get(files[0].id)).status == "uploaded"
            batch = await client.batches.create([files[0].id])
            assert (await client.batches.get(batch.id)).total_items == 1
            feed = client.batches.iter_changes(batch.id, poll_interval=0.2)
            items = [item async for item in feed]
            result = await client.results.get(batch.id, items[-1].id)
            await client.results.download(batch.id, items[-1].id, tmp_path / "a" / "r.json")
            listed = await client.batches.list(status="completed")
            assert batch.id in [b.id for b in listed.data]
            assert feed.batch is not None
            return feed.batch, [result]

    batch, (result,) = asyncio.run(scenario())
    assert batch.status == "completed"
    assert "The Crazy Ones" in collapse(result.text)
    assert (tmp_path / "a" / "r.json").exists()


class ResultServer:
    """A result endpoint as SPEC has it: a 302 to a signed URL, or the JSON with ``?inline=true``.
    ``blobs_at`` is where the signed URLs point: this server's own origin (the embedded store)
    or another server's (S3). Every request is recorded."""

    def __init__(self, result: bytes) -> None:
        self.result = result
        self.blobs_at = ""
        self.requests: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        query = environ.get("QUERY_STRING", "")
        self.requests.append(environ["PATH_INFO"] + (f"?{query}" if query else ""))
        if environ["PATH_INFO"].endswith("/result") and query != "inline=true":
            start_response("302 Found", [("Location", f"{self.blobs_at}/blobs/r.json?sig=x")])
            return [b""]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [self.result]


@pytest.mark.parametrize("blobs", ["own origin", "elsewhere"])
def test_results_are_asked_inline_once_the_server_redirects_to_itself(
    blobs: str, tmp_path: Path
) -> None:
    result = json.dumps(ocr.extract(CRAZY_ONES.read_bytes())).encode()
    api, store = ResultServer(result), ResultServer(result)
    servers = [serve(api), serve(store)]
    api.blobs_at = servers[0].url if blobs == "own origin" else servers[1].url
    try:
        with Client("pl_key", servers[0].url) as client:
            for n in range(3):
                assert client.results.get("batch_x", f"item_{n}").page_count == 1
            client.results.download("batch_x", "item_3", tmp_path / "r.json")
        assert json.loads((tmp_path / "r.json").read_bytes()) == json.loads(result)
    finally:
        for server in servers:
            server.stop()
    signed_gets = [r for r in api.requests + store.requests if r.startswith("/blobs/")]
    if blobs == "own origin":
        # One redirect shows the API serves the blobs itself: one request a result after it.
        assert api.requests[2:] == [
            f"/v1/batches/batch_x/items/item_{n}/result?inline=true" for n in (1, 2, 3)
        ]
        assert len(signed_gets) == 1
    else:
        # S3: result bytes stay off the API, every result through its signed URL.
        assert not any("inline" in r for r in api.requests)
        assert len(signed_gets) == 4 and store.requests == signed_gets


def test_errors_carry_the_envelope_code_message_and_status(live: LiveStack) -> None:
    customer = live.customer("sdk-errors")
    with Client(customer.key, live.url) as client:
        with pytest.raises(ApiError) as missing:
            client.batches.create(["file_doesnotexist0000000000"])
        assert missing.value.status == 404
        assert missing.value.code == "file_not_found"
        assert missing.value.context["file_ids"] == ["file_doesnotexist0000000000"]
        assert missing.value.request_id

        registered = client.files.create(10, filename="never-uploaded.pdf")
        with pytest.raises(ApiError) as waiting:
            client.batches.create([registered.id])
        assert (waiting.value.status, waiting.value.code) == (409, "file_not_uploaded")

        with pytest.raises(ApiError) as unknown:
            client.batches.get("batch_unknown")
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")

    with Client("pl_not_a_key", live.url) as stranger, pytest.raises(ApiError) as denied:
        stranger.batches.list()
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")


def test_create_many_falls_back_to_single_registrations_without_bulk(live: LiveStack) -> None:
    customer = live.customer("sdk-nobulk")
    fault = live.faults.add(Fault("POST", "/v1/files/bulk", 404, b'{"error": "not_found"}'))
    try:
        with Client(customer.key, live.url) as client:
            first = client.files.create_many(
                [FileSpec(size_bytes=5, filename=f"{n}.pdf") for n in "ab"]
            )
            second = client.files.create_many([FileSpec(size_bytes=7, filename="c.pdf")])
    finally:
        live.faults.remove(fault)
    assert [f.filename for f in first + second] == ["a.pdf", "b.pdf", "c.pdf"]
    assert fault.hits == 1  # learnt once, not asked again
    assert customer.file_count() == 3


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_429_is_retried_after_the_servers_retry_after(live: LiveStack, flavour: str) -> None:
    """The real rate limiter, set to 2 submissions per 3 s: the third waits and succeeds."""
    customer = live.customer(f"sdk-429-{flavour}")
    limited = live.serve_variant(submit_rate_limit="2 per 3 seconds")
    notices: list[RetryNotice] = []
    started = time.monotonic()
    try:
        if flavour == "sync":
            with Client(customer.key, limited.url, on_retry=notices.append) as client:
                files = [client.files.create(10, filename=f"{n}.pdf") for n in range(3)]
        else:

            async def register() -> list[Any]:
                async with AsyncClient(customer.key, limited.url, on_retry=notices.append) as c:
                    return [await c.files.create(10, filename=f"{n}.pdf") for n in range(3)]

            files = asyncio.run(register())
    finally:
        limited.stop()
    elapsed = time.monotonic() - started
    assert len(files) == 3 and customer.file_count() == 3
    assert notices and notices[0].reason == "429 rate_limited"
    assert notices[0].delay >= 1  # the server's Retry-After, in whole seconds
    assert elapsed >= sum(n.delay for n in notices) * 0.9


def test_503_with_retry_after_is_waited_out(live: LiveStack) -> None:
    customer = live.customer("sdk-503")
    live.faults.add(Fault("GET", "/v1/batches", 503, headers={"Retry-After": "1"}, times=2))
    notices: list[RetryNotice] = []
    with Client(customer.key, live.url, on_retry=notices.append) as client:
        assert client.batches.list().data == []
    assert [(n.reason, n.delay) for n in notices] == [("503 unavailable", 1.0)] * 2


def test_retry_after_is_capped(live: LiveStack) -> None:
    customer = live.customer("sdk-cap")
    live.faults.add(Fault("GET", "/v1/batches", 429, headers={"Retry-After": "3600"}, times=1))
    slept: list[float] = []
    policy = RetryPolicy(max_retry_after=0.5)
    with Client(customer.key, live.url, retry=policy, sleep=slept.append) as client:
        client.batches.list()
    assert slept == [0.5]


# --- uploads against a blob store that misbehaves --------------------------------------------


class FlakyBlobStore:
    """A stand-in for S3: the first ``failures`` PUTs get 503, then it
    stores bodies. Records each request's headers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[dict[str, str]] = []
        self.stored: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.requests.append(
            {
                k[5:].replace("_", "-").lower(): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            }
            | {"content-length": environ.get("CONTENT_LENGTH", "")}
        )
        if len(self.requests) <= self.failures:
            start_response("503 Slow Down", [("Content-Type", "application/xml")])
            return [b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"]
        self.stored.append(body)
        start_response("200 OK", [])
        return [b""]


@pytest.fixture
def flaky_store() -> Iterator[Callable[[int], tuple[FlakyBlobStore, str]]]:
    servers = []

    def start(failures: int) -> tuple[FlakyBlobStore, str]:
        store = FlakyBlobStore(failures)
        server = make_server("127.0.0.1", 0, store, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return store, f"http://127.0.0.1:{server.server_port}/bucket/key?X-Amz-Signature=abc"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_upload_retries_5xx_and_never_sends_the_api_key(
    flaky_store: Callable[[int], tuple[FlakyBlobStore, str]], tmp_path: Path
) -> None:
    store, url = flaky_store(2)
    source = tmp_path / "doc.pdf"
    source.write_bytes(b"%PDF-1.4 hello")
    instructions = UploadInstructions(url=url, headers={"x-amz-meta-a": "b"})
    with Client("pl_secret_key", "http://127.0.0.1:9", retry=FAST_RETRY) as client:
        client.files.upload(instructions, source)
    assert store.stored == [b"%PDF-1.4 hello"]
    assert len(store.requests) == 3
    for headers in store.requests:
        assert "x-api-key" not in headers and "authorization" not in headers
        assert headers["x-amz-meta-a"] == "b" and headers["content-length"] == "14"


def test_upload_gives_up_with_the_stores_error_code(
    flaky_store: Callable[[int], tuple[FlakyBlobStore, str]],
) -> None:
    store, url = flaky_store(100)

    async def upload() -> None:
        async with AsyncClient("k", "http://127.0.0.1:9", retry=FAST_RETRY) as client:
            await client.files.upload(UploadInstructions(url=url), b"bytes")

    with pytest.raises(ApiError) as failed:
        asyncio.run(upload())
    assert (failed.value.status, failed.value.code) == (503, "SlowDown")
    assert "X-Amz-Signature" not in failed.value.url  # presigned credentials stay out of errors
    assert len(store.requests) == FAST_RETRY.max_attempts


def test_configuration_comes_from_the_environment() -> None:
    assert resolve_api_key(None, {"PAGELANE_API_KEY": "a", "EXTRACT_API_KEY": "b"}) == "a"
    assert resolve_api_key(None, {"EXTRACT_API_KEY": "b"}) == "b"
    assert resolve_api_key("c", {"PAGELANE_API_KEY": "a"}) == "c"
    with pytest.raises(ConfigurationError):
        resolve_api_key(None, {})
    assert resolve_api_url(None, {"PAGELANE_API_URL": "http://h:1/"}) == "http://h:1"
    assert resolve_api_url(None, {}) == "http://127.0.0.1:8080"
