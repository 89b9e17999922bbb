"""What only the local backend does: its own URL signatures, path safety and atomic files."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from service.settings import load_settings
from service.storage import (
    BlobExistsError,
    BlobLengthMismatchError,
    BlobNotFoundError,
    LocalBlobStore,
    S3BlobStore,
    UploadInterruptedError,
    make_blob_store,
)

from .harness import Backend, wait_for


def _store(backend: Backend) -> LocalBlobStore:
    assert isinstance(backend.store, LocalBlobStore)
    return backend.store


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if "~" in path.name] if directory.is_dir() else []


# --- the signed URL format --------------------------------------------------------------------


def test_upload_url_has_the_documented_shape(local: Backend) -> None:
    store = _store(local)
    key = local.key("inputs/file_shape")

    request = store.presign_put(
        key, content_length=1234, content_type="application/pdf", expires_in=300
    )

    parts = urlsplit(request.url)
    base = urlsplit(store.public_url)
    assert (parts.scheme, parts.netloc, parts.path) == (base.scheme, base.netloc, f"/blobs/{key}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert set(query) == {"method", "expires", "len", "sig"}
    assert query["method"] == "PUT"
    assert query["len"] == "1234"
    assert int(query["expires"]) == int(request.expires_at.timestamp())
    assert len(query["sig"]) == 64
    int(query["sig"], 16)

    unbounded = store.presign_put(key, content_length=None, content_type=None, expires_in=300)
    assert dict(parse_qsl(urlsplit(unbounded.url).query, keep_blank_values=True))["len"] == ""


@pytest.mark.parametrize(
    "changes",
    [
        {"sig": "0" * 64},
        {"sig": "not-hex"},
        {"sig": ""},
        {"expires": "9999999999"},
        {"expires": "soon"},
        {"len": "1"},
        {"len": ""},
        {"len": "-3"},
        {"method": "GET"},
        {"method": "DELETE"},
    ],
    ids=lambda changes: ",".join(f"{k}={v[:8]}" for k, v in changes.items()),
)
def test_tampered_upload_query_is_403_invalid_signature(
    local: Backend, changes: dict[str, str]
) -> None:
    key = local.key("inputs/file_tampered")
    request = local.store.presign_put(
        key, content_length=4, content_type="application/pdf", expires_in=300
    )

    response = local.http.put(
        _with_query(request.url, **changes), content=b"%PDF", headers=request.headers
    )

    assert response.status_code == 403
    assert response.json()["error"] == "invalid_signature"
    assert response.json()["message"]
    assert local.store.head(key) is None


def test_tampered_download_query_or_filename_is_403(local: Backend) -> None:
    key = local.key("results/batch_1/item_1.json")
    local.store.put(key, b"{}")
    url = local.store.presign_get(key, expires_in=300, filename="result.json")
    assert local.http.get(url).status_code == 200

    for changes in ({"filename": "evil.html"}, {"expires": "9999999999"}, {"len": "2"}):
        response = local.http.get(_with_query(url, **changes))
        assert response.status_code == 403, changes
        assert response.json()["error"] == "invalid_signature"
    without_filename = urlunsplit(
        urlsplit(url)._replace(
            query=urlencode([(k, v) for k, v in parse_qsl(urlsplit(url).query) if k != "filename"])
        )
    )
    assert local.http.get(without_filename).status_code == 403


def test_url_expires_exactly_at_its_expiry_second(local: Backend) -> None:
    key = local.key("inputs/file_clock")
    store = _store(local)
    request = store.presign_put(key, content_length=1, content_type=None, expires_in=60)
    expires = int(dict(parse_qsl(urlsplit(request.url).query))["expires"])
    sig = dict(parse_qsl(urlsplit(request.url).query))["sig"]

    local.clock.offset = expires - 0.5 - local.clock()  # half a second before expiry
    assert store.verify("PUT", key, expires, 1, sig) is True
    local.clock.advance(0.5)
    assert store.verify("PUT", key, expires, 1, sig) is False

    response = local.http.put(request.url, content=b"x")
    assert response.status_code == 403
    assert response.json()["error"] == "invalid_signature"


def test_verify_binds_every_signed_field(local: Backend) -> None:
    store = _store(local)
    key = local.key("inputs/file_fields")
    query = dict(
        parse_qsl(
            urlsplit(
                store.presign_put(
                    key, content_length=10, content_type="image/png", expires_in=60
                ).url
            ).query
        )
    )
    expires, sig = int(query["expires"]), query["sig"]

    assert store.verify("PUT", key, expires, 10, sig, "image/png")
    assert not store.verify("PUT", key, expires, 10, sig, "image/jpeg")
    assert not store.verify("PUT", key, expires, 10, sig)  # the signed type is required
    assert not store.verify("PUT", key, expires, 11, sig, "image/png")
    assert not store.verify("PUT", key, expires, None, sig, "image/png")
    assert not store.verify("PUT", key, expires + 1, 10, sig, "image/png")
    assert not store.verify("GET", key, expires, 10, sig, "image/png")
    assert not store.verify("PUT", key + "x", expires, 10, sig, "image/png")
    assert not store.verify("PUT", key, expires, 10, sig.upper(), "image/png")
    other_secret = LocalBlobStore(
        store.root, public_url="http://x", secret_key="another-secret", clock=local.clock
    )
    assert not other_secret.verify("PUT", key, expires, 10, sig, "image/png")


def test_length_mismatch_is_400_and_stores_nothing(local: Backend) -> None:
    key = local.key("inputs/file_short")
    request = local.store.presign_put(key, content_length=10, content_type=None, expires_in=60)

    response = local.http.put(request.url, content=b"123456789")

    assert response.status_code == 400
    assert response.json()["error"] == "length_mismatch"
    assert local.store.head(key) is None
    assert _temp_files(_store(local).root / local.prefix / "inputs") == []


def _chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


@pytest.mark.parametrize(
    ("parts", "expected_status"),
    [
        ((b"12345", b"67890"), 200),
        ((b"12345", b"6789"), 400),
        ((b"12345", b"67890", b"1"), 400),
    ],
)
def test_chunked_upload_without_content_length_is_counted(
    local: Backend, parts: tuple[bytes, ...], expected_status: int
) -> None:
    key = local.key("inputs/file_chunked")
    request = local.store.presign_put(key, content_length=10, content_type=None, expires_in=60)

    # A generator body makes httpx send Transfer-Encoding: chunked, with no Content-Length.
    response = local.http.put(request.url, content=_chunks(*parts))

    assert response.status_code == expected_status, response.text
    if expected_status == 200:
        assert local.store.get(key) == b"1234567890"
    else:
        assert response.json()["error"] == "length_mismatch"
        assert local.store.head(key) is None


def test_missing_blob_download_is_404_not_found(local: Backend) -> None:
    response = local.http.get(local.store.presign_get(local.key("nothing"), expires_in=60))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_download_is_typed_from_the_key_and_supports_ranges(local: Backend) -> None:
    key = local.key("results/batch_1/item_9.json")
    local.store.put(key, b'{"page_count": 3}')
    url = local.store.presign_get(key, expires_in=60)

    response = local.http.get(url)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Content-Length"] == str(len(b'{"page_count": 3}'))
    partial = local.http.get(url, headers={"Range": "bytes=0-3"})
    assert partial.status_code == 206
    assert partial.content == b'{"pa'


# --- keys and paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/blobs/../outside", "/blobs/%2e%2e/outside", "/blobs/a/..%2f..%2foutside"]
)
def test_traversal_in_the_url_never_reaches_outside_the_root(local: Backend, path: str) -> None:
    store = _store(local)
    base = store.public_url
    query = urlsplit(
        store.presign_put(local.key("k"), content_length=1, content_type=None, expires_in=60).url
    ).query

    response = local.http.put(f"{base}{path}?{query}", content=b"x")

    assert response.status_code in (403, 404)
    assert not (store.root.parent / "outside").exists()
    assert not (store.root / "outside").exists()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs/path", "a/./b", "a/.."])
def test_verify_refuses_traversal_keys_even_with_a_matching_hmac(local: Backend, key: str) -> None:
    store = _store(local)
    expires = int(local.clock()) + 60
    # Sign the bad key the way the store would, to prove the key check is not just the HMAC.
    sig = store._signature("PUT", key, expires, 1, "", "")

    assert store.verify("PUT", key, expires, 1, sig) is False


@pytest.mark.parametrize("prefix", ["../", "a/../", "/abs", "a b", "a/./"])
def test_invalid_list_prefixes_are_rejected(local: Backend, prefix: str) -> None:
    with pytest.raises(ValueError):
        list(local.store.list_prefix(prefix))


def test_files_live_under_root_and_delete_prunes_empty_directories(local: Backend) -> None:
    store = _store(local)
    key = local.key("results/batch_7/item_1.json")
    store.put(key, b"{}")
    assert (store.root / key).read_bytes() == b"{}"

    store.delete(key)

    assert not (store.root / local.prefix).exists()
    assert store.root.is_dir()


# --- atomic writes ----------------------------------------------------------------------------


def _start_partial_upload(url: str, total: int, sent: bytes) -> socket.socket:
    """Begin a PUT that announces ``total`` bytes but sends only ``sent``, and keep it open."""
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    )
    connection.sendall(head.encode() + sent)
    return connection


def test_half_written_upload_is_never_visible(local: Backend) -> None:
    # (Uploads are create-only: a key holding a previous version refuses the PUT outright,
    # see test_an_upload_that_loses_the_race_stores_nothing.)
    store = _store(local)
    key = local.key("inputs/file_partial")
    directory = store.root / local.prefix / "inputs"
    body = os.urandom(200_000)
    request = store.presign_put(key, content_length=len(body), content_type=None, expires_in=60)

    connection = _start_partial_upload(request.url, len(body), body[:80_000])
    try:
        assert wait_for(lambda: _temp_files(directory)), "the server never started writing"
        assert store.head(key) is None
        with pytest.raises(BlobNotFoundError):
            store.get(key)
        assert list(store.list_prefix(local.prefix)) == []
        assert local.http.get(store.presign_get(key, expires_in=60)).status_code == 404
    finally:
        connection.close()  # the client hangs up mid-body

    assert wait_for(lambda: not _temp_files(directory)), "the partial upload was left behind"
    assert store.head(key) is None


def test_an_upload_that_loses_the_race_stores_nothing(local: Backend) -> None:
    """Two uploads of one key at once: the one published first stays, the other is refused
    when it tries to publish (link, not rename), and leaves no temp file."""
    store = _store(local)
    key = local.key("inputs/file_race")

    class WinnerArrivesMidBody(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            if chunk and store.head(key) is None:
                store.put(key, b"the winner")  # the other upload finishes first
            return chunk

    with pytest.raises(BlobExistsError):
        store.receive_upload(key, WinnerArrivesMidBody(b"the loser"), expected_length=9)
    assert store.get(key) == b"the winner"
    assert _temp_files(store.root / local.prefix / "inputs") == []
    with pytest.raises(BlobExistsError):  # and once there, refused before reading the body
        store.receive_upload(key, io.BytesIO(b"late"), expected_length=None)


def test_temp_files_are_not_blobs(local: Backend) -> None:
    store = _store(local)
    directory = store.root / local.prefix / "inputs"
    directory.mkdir(parents=True)
    (directory / "file_1~x7k2.part").write_bytes(b"half")
    store.put(local.key("inputs/file_2"), b"whole")

    assert [blob.key for blob in store.list_prefix(local.prefix)] == [local.key("inputs/file_2")]
    assert store.head(local.key("inputs/file_1")) is None


class _RecordingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_sizes: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.read_sizes.append(len(chunk))
        return chunk


def test_receive_upload_streams_in_bounded_chunks(local: Backend) -> None:
    store = _store(local)
    body = os.urandom(5 * 1024 * 1024 + 17)
    stream = _RecordingStream(body)

    stored = store.receive_upload(local.key("big"), stream, expected_length=len(body))

    assert stored == len(body)
    assert store.get(local.key("big")) == body
    assert max(stream.read_sizes) <= 1024 * 1024


def test_receive_upload_stops_one_byte_past_the_signed_length(local: Backend) -> None:
    store = _store(local)
    stream = _RecordingStream(b"x" * 10_000_000)

    with pytest.raises(BlobLengthMismatchError) as caught:
        store.receive_upload(local.key("overlong"), stream, expected_length=10)

    assert sum(stream.read_sizes) == 11
    assert (caught.value.expected, caught.value.received) == (10, 11)
    assert store.head(local.key("overlong")) is None
    assert _temp_files(store.root / local.prefix) == []


def test_failed_write_stores_nothing_and_leaves_no_temp_file(local: Backend) -> None:
    store = _store(local)
    key = local.key("inputs/file_fail")

    class _BrokenStream(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise OSError("connection reset by peer")

    with pytest.raises(UploadInterruptedError, match="connection reset"):
        store.receive_upload(key, _BrokenStream(), expected_length=None)  # type: ignore[arg-type]

    assert store.head(key) is None
    assert _temp_files(store.root / local.prefix / "inputs") == []


# --- readiness and the factory ----------------------------------------------------------------


def test_ping_is_false_until_ensure_ready_creates_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "later", public_url="http://x", secret_key="s")

    assert store.ping() is False
    store.ensure_ready()
    assert store.ping() is True


def test_a_secret_key_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path, public_url="http://x", secret_key="")


def test_make_blob_store_builds_the_configured_backend(tmp_path: Path) -> None:
    local = make_blob_store(
        load_settings(
            blob_store="local",
            data_dir=tmp_path,
            secret_key="s",
            public_url="http://api.example:8080/",
        )
    )
    assert isinstance(local, LocalBlobStore)
    assert local.root == tmp_path / "blobs"
    assert local.presign_get("a", expires_in=5).startswith("http://api.example:8080/blobs/a?")

    s3 = make_blob_store(
        load_settings(
            blob_store="s3",
            s3_bucket="pagelane-inputs",
            s3_endpoint_url="http://127.0.0.1:9",
            s3_region="eu-west-1",
        )
    )
    assert isinstance(s3, S3BlobStore)
    assert s3.bucket == "pagelane-inputs"
    assert s3.presign_get("a", expires_in=5).startswith("http://127.0.0.1:9/pagelane-inputs/a?")


def test_access_log_lines_do_not_print_the_signature_of_signed_urls() -> None:
    """Whoever reads the API's access log must not be able to replay a signed URL."""
    import datetime as dt
    import logging
    from types import SimpleNamespace

    from gunicorn.config import Config

    from service.logs import GunicornLogger

    cfg = Config()
    cfg.set("accesslog", "-")
    logger = GunicornLogger(cfg)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger.access_log.addHandler(Collect())
    sig = "9f" * 32
    query = f"method=PUT&expires=1700000000&len=12&sig={sig}"
    environ = {
        "REQUEST_METHOD": "PUT",
        "RAW_URI": f"/blobs/cus_1/inputs/file_1?{query}",
        "PATH_INFO": "/blobs/cus_1/inputs/file_1",
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": f"http://127.0.0.1:8080/blobs/cus_1/inputs/file_1?{query}",
    }
    response = SimpleNamespace(status="200 OK", headers=[], sent=0)
    request = SimpleNamespace(headers=[])
    logger.access(response, request, environ, dt.timedelta(milliseconds=3))

    assert lines, "no access line"
    assert sig not in "".join(lines)
    assert "/blobs/cus_1/inputs/file_1?method=PUT" in lines[0] and "sig=REDACTED" in lines[0]
    atoms = logger.atoms(response, request, environ, dt.timedelta(milliseconds=3))
    assert not [name for name, value in atoms.items() if isinstance(value, str) and sig in value]
