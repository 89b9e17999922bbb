"""SPEC "Request limits" (issue 13, points 3-6): body caps per route, forged cursors and hostile
text, bounded metric labels, and the sync endpoint's rate budget, concurrency cap, time limit and
memory. Each runs on Postgres + S3 and on SQLite + local blobs unless it says otherwise."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import random
import string
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

import ocr
from service.api.app import JSON_BODY_LIMIT, create_app
from service.models import Customer
from tests.api.conftest import PDF_BYTES, ApiEnv, Tenant
from tests.conftest import CORPUS, build_context, new_customer_key

NINE_MIB = 9 * 1024 * 1024


def _nine_mib_of_json() -> bytes:
    ids = [f"file_{n:060d}" for n in range(NINE_MIB // 66 + 1)]
    body = json.dumps({"file_ids": ids}).encode()
    assert len(body) > NINE_MIB - 1024 and len(body) > JSON_BODY_LIMIT
    return body


def _rate_limit_remaining(tenant: Tenant) -> int:
    """One submission counted now; what is left of the key's budget after it."""
    response = tenant.post("/v1/files", {"size_bytes": 1})
    assert response.status_code == 200
    return int(response.headers["X-RateLimit-Remaining"])


# --- point 4: 8 MiB for JSON, the file size for the two document routes ----------------------


def test_json_body_over_8_mib_is_413_before_parsing(api_env: ApiEnv, alice: Tenant) -> None:
    body = _nine_mib_of_json()
    started = time.perf_counter()
    response = alice.client.post(
        "/v1/batches",
        data=body,
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"] == "request_too_large"
    assert response.get_json()["max_bytes"] == JSON_BODY_LIMIT
    assert elapsed < 2.0
    # Refused before the rate limiter: the whole budget is still there.
    assert _rate_limit_remaining(alice) == 59
    # Without a key too: the size is judged before anything else.
    anonymous = api_env.client.post(
        "/v1/files", data=body, headers={"Content-Type": "application/json"}
    )
    assert anonymous.status_code == 413


def test_chunked_json_body_is_cut_at_the_limit(api_env: ApiEnv, alice: Tenant) -> None:
    """No Content-Length: werkzeug stops reading at 8 MiB and the answer is 413."""
    from tests.client.conftest import serve

    served = serve(api_env.client.application)
    try:
        host, port = served.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        body = _nine_mib_of_json()

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        started = time.perf_counter()
        # The server may stop reading once it has answered.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(
                "POST",
                "/v1/batches",
                body=chunks(),
                headers={**alice.headers, "Content-Type": "application/json"},
                encode_chunked=True,
            )
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 413, answer
        assert answer["error"] == "request_too_large"
        assert time.perf_counter() - started < 5.0
        connection.close()
    finally:
        served.stop()
    assert _rate_limit_remaining(alice) == 59


def test_document_routes_take_bodies_over_8_mib(api_env: ApiEnv, alice: Tenant) -> None:
    big = b"\0" * NINE_MIB
    response = alice.client.post(
        "/v1/extract/file",
        data={"file": (io.BytesIO(big), "zeros.bin")},
        headers=alice.headers,
        content_type="multipart/form-data",
    )
    # Read whole and judged by the engine, not refused for its size.
    assert response.status_code == 415, response.get_json()
    assert response.get_json()["error"] == "unsupported_input"
    if api_env.backend == "sqlite":  # the local blob store's signed PUT
        created = alice.register(big)
        upload = created["upload"]
        put = api_env.client.put(
            upload["url"].removeprefix("http://pagelane.test"), data=big, headers=upload["headers"]
        )
        assert put.status_code == 200


def test_sync_document_over_the_file_size_is_413(make_settings, flush_redis) -> None:
    settings = _sqlite_settings(make_settings, max_file_bytes=1024 * 1024)
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    _, key = new_customer_key(ctx, "big")
    response = client.post(
        "/v1/extract/file",
        data={"file": (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.pdf")},
        headers={"X-API-KEY": key},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "document_too_large"
    ctx.close()


# --- point 5: forged cursors, hostile text ----------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_CURSORS = [
    _b64(b'{"i": {}}'),
    _b64(b'{"s": 1e30}'),
    _b64(b'{"s": "x"}'),
    _b64(b'{"s": true}'),
    _b64(b'{"s": 99999999999999999999999}'),
    _b64(b'{"c": 5, "i": []}'),
    _b64(b'{"c": "2024-01-01T00:00:00", "i": []}'),
    _b64(b'{"c": "2024-01-01T00:00:00+05:00", "i": "batch_x"}'),
    _b64(b'{"c": "2024-01-01T00:00:00", "i": "batch_\\u0000"}'),
    _b64(b'{"c": "not a date", "i": "batch_x"}'),
    _b64(b"[1, 2, 3]"),
    _b64(b"12345678901234567890123456789012345678901234567890"),
    _b64(b"[" * 5000 + b"]" * 5000)[:500],
    _b64(b"\xff\xfe not json"),
    "%%%",
    "bm90LWpzb24",
    "eyJzIjoxMn0",  # {"s":12}, a cursor of the JSON format before: 422, never a position
    "AQAAAAAAAAAF=",
    "a" * 600,
]


@pytest.mark.parametrize("cursor", FORGED_CURSORS)
def test_forged_cursors_are_422_on_both_endpoints(alice: Tenant, cursor: str) -> None:
    batch = alice.submit([alice.upload(PDF_BYTES)]).get_json()
    for path in (f"/v1/batches/{batch['id']}", "/v1/batches"):
        response = alice.get(f"{path}?cursor={quote(cursor)}")
        assert response.status_code == 422, (path, response.get_json())
        assert response.get_json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/batches/{id}", "AQAAAAAAAAAA"),
        ("/v1/batches/{id}", "AX__________"),  # 2**63 - 1: past every change number
        ("/v1/batches", "AgA" + "A" * 33),  # 1970
        ("/v1/batches", "AgD" + "_" * 33),  # year 4253, the largest id
    ],
)
def test_every_cursor_the_pattern_admits_is_a_position(
    alice: Tenant, path: str, cursor: str
) -> None:
    """The documented pattern is the whole validation: whatever matches it decodes to a
    position the database compares (an empty page far away), never a 4xx or 500."""
    batch = alice.submit([alice.upload(PDF_BYTES)]).get_json()
    response = alice.get(f"{path.format(id=batch['id'])}?cursor={cursor}")
    assert response.status_code == 200, response.get_json()


HOSTILE = ["a\x00b", "tab\there", "\x1b[31mred", "bell\x07"]


@pytest.mark.parametrize("text", HOSTILE)
def test_control_characters_are_422_not_500(alice: Tenant, text: str) -> None:
    for body in (
        {"size_bytes": 10, "filename": text},
        {"size_bytes": 10, "content_type": text},
    ):
        response = alice.post("/v1/files", body)
        assert response.status_code == 422, (body, response.get_json())
        assert response.get_json()["error"] == "validation_error"
        bulk = alice.post("/v1/files/bulk", {"files": [body]})
        assert bulk.status_code == 422
    file_id = alice.upload(PDF_BYTES)
    for body in (
        {"file_ids": [file_id], "metadata": {text: "v"}},
        {"file_ids": [file_id, text]},
        {"file_ids": [file_id], "engine": text},
    ):
        response = alice.post("/v1/batches", body)
        assert response.status_code == 422, (body, response.get_json())
    idempotent = alice.post(
        "/v1/batches", {"file_ids": [file_id]}, headers={"Idempotency-Key": text}
    )
    assert idempotent.status_code == 422, idempotent.get_json()


def test_nul_in_metadata_values_and_path_ids(alice: Tenant) -> None:
    file_id = alice.upload(PDF_BYTES)
    response = alice.post("/v1/batches", {"file_ids": [file_id], "metadata": {"k": "a\x00b"}})
    assert response.status_code == 422
    # Free text keeps its newlines and tabs.
    fine = alice.post("/v1/batches", {"file_ids": [file_id], "metadata": {"k": "a\nb\tc"}})
    assert fine.status_code == 200, fine.get_json()
    batch_id = fine.get_json()["id"]
    item_id = fine.get_json()["items"][0]["id"]
    for path in (
        f"/v1/files/{file_id}%00",
        "/v1/batches/batch_%00",
        f"/v1/batches/{batch_id}%00/cancel",
        f"/v1/batches/{batch_id}/items/{item_id}%00/result",
        "/v1/files/file_%C3%A9",
    ):
        response = alice.get(path) if not path.endswith("cancel") else alice.post(path)
        assert response.status_code in (404, 422), (path, response.get_json())


def test_unpaired_surrogates_are_422(alice: Tenant) -> None:
    # json.loads accepts "\ud800"; neither database can store it.
    for raw in (
        b'{"size_bytes": 10, "filename": "a\\ud800b"}',
        b'{"size_bytes": 10, "content_type": "\\udfff"}',
    ):
        response = alice.client.post(
            "/v1/files", data=raw, headers={**alice.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.get_json()
    # A surrogate pair is one astral character: fine.
    ok = alice.client.post(
        "/v1/files",
        data=b'{"size_bytes": 10, "filename": "\\ud83d\\ude00.pdf"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert ok.status_code == 200 and ok.get_json()["filename"] == "\U0001f600.pdf"


# --- point 6: bounded label sets --------------------------------------------------------------


def _http_series() -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple(sorted(sample.labels.items()))
        for family in REGISTRY.collect()
        if family.name == "pagelane_http_requests"
        for sample in family.samples
        if sample.name == "pagelane_http_requests_total"
    }


def test_random_methods_create_at_most_one_series(api_env: ApiEnv) -> None:
    before = _http_series()
    rng = random.Random(13)
    for _ in range(1000):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        api_env.client.open("/v1/batches", method=method)
    new = _http_series() - before
    assert len(new) <= 1, new
    assert all(dict(labels)["method"] == "other" for labels in new)


def test_405_names_the_allowed_methods(api_env: ApiEnv) -> None:
    response = api_env.client.open("/v1/files", method="TRACE")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) >= {"POST"}
    assert response.get_json()["error"] == "method_not_allowed"


def test_metrics_are_not_on_the_public_port(api_env: ApiEnv) -> None:
    assert api_env.client.get("/metrics").status_code == 404


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


@pytest.mark.sqlite
def test_api_metrics_port_binds_loopback_by_default(make_settings, flush_redis) -> None:
    import socket

    import httpx

    from service.api.metrics_server import serve_api_metrics

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = _sqlite_settings(make_settings, api_metrics_port=port)
    assert settings.metrics_bind == "127.0.0.1"
    assert serve_api_metrics(settings)
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert b"pagelane_oldest_pending_item_age_seconds" in response.content
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    assert not serve_api_metrics(settings.model_copy(update={"api_metrics_port": 0}))


# --- point 3: the sync endpoint's budget, cap, time limit and memory -----------------------------


def _sqlite_settings(make_settings: Any, **overrides: Any) -> Any:
    from service.db import make_engine
    from service.migrate import upgrade

    settings = make_settings(blob_store="local", **overrides)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return settings


def _extract(tenant: Tenant, data: bytes = b"", filename: str = "doc.pdf") -> Any:
    return tenant.client.post(
        "/v1/extract/file",
        data={"file": (io.BytesIO(data), filename)},
        headers=tenant.headers,
        content_type="multipart/form-data",
    )


def _fake_result(pages: int = 1) -> dict[str, Any]:
    return {
        "object": "extraction",
        "page_count": pages,
        "pages_billed": pages,
        "file": {"id": None, "filename": "f", "content_type": "application/pdf", "sha256": "0"},
        "chunks": [],
        "warnings": [],
    }


def test_sync_rate_budget_is_its_own(alice: Tenant) -> None:
    for n in range(60):
        response = _extract(alice)  # zero bytes: 415 at once, but counted
        assert response.status_code == 415, (n, response.get_json())
        assert response.headers["X-RateLimit-Limit"] == "60"
    over = _extract(alice)
    assert over.status_code == 429
    assert over.get_json()["error"] == "rate_limited"
    assert int(over.headers["Retry-After"]) >= 1
    assert over.headers["X-RateLimit-Remaining"] == "0"
    # Submissions have a budget of their own, untouched.
    assert _rate_limit_remaining(alice) == 59


def test_sync_concurrency_cap(api_env: ApiEnv, alice: Tenant, monkeypatch) -> None:
    import service.api.extract as extract

    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow(path: str, options: Any, **kwargs: Any) -> dict[str, Any]:
        entered.release()
        assert release.wait(30)
        return _fake_result()

    monkeypatch.setattr(extract, "_run_extraction", slow)
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(_extract(alice, data).status_code))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert entered.acquire(timeout=30)
    third = _extract(alice, data)
    assert third.status_code == 429
    assert third.get_json()["error"] == "too_many_concurrent_requests"
    assert third.headers["Retry-After"] == "2"
    # Another customer has slots of its own.
    bob = api_env.tenant("bob")
    bob_thread = threading.Thread(target=lambda: answers.append(_extract(bob, data).status_code))
    bob_thread.start()
    assert entered.acquire(timeout=30)
    release.set()
    for thread in (*threads, bob_thread):
        thread.join(30)
    assert answers == [200, 200, 200]
    assert api_env.ctx.redis.zcard(f"pagelane:sync-slots:{alice.customer_id}") == 0
    assert _extract(alice, data).status_code == 200  # the slots came back


@pytest.mark.parametrize("how", ["overran", "engine"])
def test_sync_timeout_is_504_and_bills_nothing(
    make_settings, flush_redis, monkeypatch, how: str
) -> None:
    import service.api.extract as extract

    settings = _sqlite_settings(make_settings, sync_timeout_seconds=0.5)
    ctx = build_context(settings)
    client = create_app(settings, context=ctx, dispatcher=ctx.dispatcher).test_client()
    customer_id, key = new_customer_key(ctx, "slow", quota=100)
    seen: dict[str, Any] = {}

    def too_slow(path: str, options: Any, *, config: Any, **kwargs: Any) -> dict[str, Any]:
        seen["timeout"] = config.document_timeout_s
        if how == "engine":
            raise ocr.ExtractionTimeoutError()
        time.sleep(0.8)
        return _fake_result()

    monkeypatch.setattr(extract, "_run_extraction", too_slow)
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    response = client.post(
        "/v1/extract/file",
        data={"file": (io.BytesIO(data), "c.pdf")},
        headers={"X-API-KEY": key},
        content_type="multipart/form-data",
    )
    assert response.status_code == 504, response.get_json()
    assert response.get_json()["error"] == "extraction_timeout"
    assert seen["timeout"] == 0.5
    with ctx.session_factory() as session:
        customer = session.scalars(select(Customer).where(Customer.id == customer_id)).one()
        assert (customer.pages_used, customer.pages_reserved) == (0, 0)
    ctx.close()


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.sqlite
def test_a_100_mb_upload_never_sits_in_the_api_memory(
    make_settings, flush_redis, monkeypatch
) -> None:
    """A real server in this process; the client streams the body. The engine is stubbed with
    one that reads the file in chunks: what is measured is the request path (parse, handler)."""
    import hashlib

    import service.api.extract as extract
    from tests.client.conftest import serve

    settings = _sqlite_settings(make_settings)
    ctx = build_context(settings)
    served = serve(create_app(settings, context=ctx, dispatcher=ctx.dispatcher))
    _, key = new_customer_key(ctx, "big")
    size = 100 * 1024 * 1024
    digests: list[str] = []

    def chunked_probe(path: str, config: Any) -> int:
        return 1

    def chunked_engine(path: str, options: Any, **kwargs: Any) -> dict[str, Any]:
        digest = hashlib.sha256()
        with open(path, "rb") as document:
            while chunk := document.read(1024 * 1024):
                digest.update(chunk)
        digests.append(digest.hexdigest())
        return _fake_result()

    monkeypatch.setattr(extract, "_probe", chunked_probe)
    monkeypatch.setattr(extract, "_run_extraction", chunked_engine)
    boundary = "pagelaneboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = b"%PDF" + b"\0" * (1024 * 1024 - 4)

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(block)):
            yield block
        yield tail

    host, port = served.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the high-water mark to the current RSS
    before = _vm_hwm_kib()
    try:
        connection.request(
            "POST",
            "/v1/extract/file",
            body=body(),
            headers={
                "X-API-KEY": key,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
        served.stop()
        ctx.close()
    grown_mib = (_vm_hwm_kib() - before) / 1024
    assert response.status == 200, answer
    assert len(digests) == 1
    assert grown_mib < 30, f"peak RSS grew by {grown_mib:.0f} MiB for a 100 MiB upload"


@pytest.mark.parametrize("bypass", ["escaped-name", "padded-dict"])
def test_a_bomb_sent_to_the_sync_endpoint_ends_in_its_child_not_the_api(
    make_settings, flush_redis, bypass: str
) -> None:
    """A Flate bomb that ocr/streams.py's pre-check misses, sent synchronously: the API process
    never opens it; its sandbox child runs out of its 512 MB and the answer is 422
    extraction_failed, nothing billed; the same app then extracts a good document."""
    from tests.fixtures.hostile.make_hostile import flate_bomb_bypass_pdf

    settings = _sqlite_settings(make_settings, sandbox_memory_mb=512)
    ctx = build_context(settings)
    app = create_app(settings, context=ctx, dispatcher=ctx.dispatcher)
    customer_id, key = new_customer_key(ctx, "bomber", quota=100)
    tenant = Tenant(app.test_client(), customer_id, key)
    before = _vm_hwm_kib()
    response = _extract(tenant, flate_bomb_bypass_pdf(bypass), "bomb.pdf")
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"] == "extraction_failed"
    assert "needs more than 512 MB" in response.get_json()["message"]
    assert _vm_hwm_kib() - before < 200 * 1024, "the bomb was inflated in the API process"
    good = _extract(tenant, (CORPUS / "digital-crazyones-1p.pdf").read_bytes(), "good.pdf")
    assert good.status_code == 200 and good.get_json()["page_count"] == 1
    with ctx.session_factory() as session:
        customer = session.scalars(select(Customer).where(Customer.id == customer_id)).one()
        assert (customer.pages_used, customer.pages_reserved) == (1, 0)
    app.extensions["pagelane"].close()
    ctx.close()
