"""The BlobStore contract, run unchanged against S3 (moto server) and local disk (Flask server).

Every upload and download goes over real HTTP with a plain client, exactly as a customer's
client would use the presigned requests.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from service.storage import BlobInfo, BlobNotFoundError, BlobTooLargeError
from service.storage.base import COPY_CHUNK_BYTES
from tests.support.s3server import RecordedRequest

from .harness import Backend

PDF_BYTES = b"%PDF-1.7\n" + os.urandom(4096) + b"\n%%EOF\n"


def upload(backend: Backend, key: str, body: bytes, **presign: object) -> int:
    options: dict[str, object] = {
        "content_length": len(body),
        "content_type": "application/pdf",
        "expires_in": 600,
    }
    options.update(presign)
    request = backend.store.presign_put(key, **options)  # type: ignore[arg-type]
    response = backend.http.request(
        request.method, request.url, content=body, headers=request.headers
    )
    return response.status_code


def test_presigned_upload_then_head_get_presigned_get_list_delete(backend: Backend) -> None:
    key = backend.key("inputs/file_roundtrip")
    before = datetime.now(UTC)
    request = backend.store.presign_put(
        key, content_length=len(PDF_BYTES), content_type="application/pdf", expires_in=900
    )

    assert request.method == "PUT"
    assert request.headers == {"Content-Type": "application/pdf", "If-None-Match": "*"}
    assert request.expires_at.tzinfo is not None
    # Never later than the store's own expiry, and not much earlier either.
    assert before + timedelta(seconds=898) <= request.expires_at <= before + timedelta(seconds=900)
    assert backend.store.head(key) is None

    response = backend.http.put(request.url, content=PDF_BYTES, headers=request.headers)
    assert response.status_code == 200, response.text

    info = backend.store.head(key)
    assert info is not None
    assert (info.key, info.size) == (key, len(PDF_BYTES))
    assert info.last_modified is not None
    assert abs(info.last_modified - datetime.now(UTC)) < timedelta(minutes=5)
    assert backend.store.get(key) == PDF_BYTES

    download = backend.http.get(backend.store.presign_get(key, expires_in=60))
    assert download.status_code == 200
    assert download.content == PDF_BYTES

    assert [blob.key for blob in backend.store.list_prefix(backend.key("inputs/"))] == [key]

    backend.store.delete(key)
    assert backend.store.head(key) is None
    with pytest.raises(BlobNotFoundError):
        backend.store.get(key)
    assert list(backend.store.list_prefix(backend.prefix)) == []
    assert backend.http.get(backend.store.presign_get(key, expires_in=60)).status_code == 404


def test_presigned_get_with_filename_asks_to_save_under_that_name(backend: Backend) -> None:
    key = backend.key("results/batch_1/item_1.json")
    backend.store.put(key, b'{"object": "extraction"}', content_type="application/json")

    response = backend.http.get(
        backend.store.presign_get(key, expires_in=60, filename="rapport été.json")
    )

    assert response.status_code == 200
    assert response.content == b'{"object": "extraction"}'
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''rapport%20%C3%A9t%C3%A9.json" in disposition


@pytest.mark.parametrize("sent_length_delta", [+1, -1])
def test_upload_of_another_length_than_signed_is_refused(
    backend: Backend, sent_length_delta: int
) -> None:
    key = backend.key("inputs/file_wrong_length")
    declared = len(PDF_BYTES)
    request = backend.store.presign_put(
        key, content_length=declared, content_type="application/pdf", expires_in=600
    )
    body = PDF_BYTES + b"x" if sent_length_delta > 0 else PDF_BYTES[:-1]

    response = backend.http.put(request.url, content=body, headers=request.headers)

    # S3 answers 403 (Content-Length is a signed header); the local store 400 length_mismatch.
    assert response.status_code in (400, 403), response.text
    assert backend.store.head(key) is None


def test_upload_with_another_content_type_than_signed_is_refused(backend: Backend) -> None:
    key = backend.key("inputs/file_wrong_type")
    request = backend.store.presign_put(
        key, content_length=len(PDF_BYTES), content_type="application/pdf", expires_in=600
    )

    response = backend.http.put(
        request.url, content=PDF_BYTES, headers={"Content-Type": "text/html"}
    )

    assert response.status_code == 403, response.text
    assert backend.store.head(key) is None


def test_url_signed_without_length_or_type_accepts_any(backend: Backend) -> None:
    key = backend.key("inputs/file_unconstrained")
    request = backend.store.presign_put(key, content_length=None, content_type=None, expires_in=600)
    assert request.headers == {"If-None-Match": "*"}

    response = backend.http.put(
        request.url, content=b"any bytes", headers={**request.headers, "Content-Type": "text/plain"}
    )

    assert response.status_code == 200, response.text
    assert backend.store.get(key) == b"any bytes"


def test_uploads_are_create_only_a_replayed_url_changes_nothing(backend: Backend) -> None:
    """A presigned upload URL replayed after the file was processed must not swap the input
    behind its recorded sha256: 412 on both stores, the first bytes stay."""
    key = backend.key("inputs/file_create_only")
    request = backend.store.presign_put(
        key, content_length=len(PDF_BYTES), content_type=None, expires_in=600
    )
    first = backend.http.put(request.url, content=PDF_BYTES, headers=request.headers)
    assert first.status_code == 200, first.text

    swapped = bytes(reversed(PDF_BYTES))  # the same length: the signature still fits
    replay = backend.http.put(request.url, content=swapped, headers=request.headers)
    assert replay.status_code == 412, replay.text
    if backend.name == "local":
        assert replay.json()["error"] == "blob_exists"
    # A fresh URL for the same key is refused too.
    again = backend.store.presign_put(
        key, content_length=len(swapped), content_type=None, expires_in=600
    )
    assert backend.http.put(again.url, content=swapped, headers=again.headers).status_code == 412
    # Leaving the condition out does not help: on S3 it is a signed header (403), the local
    # store refuses any second PUT (412).
    bare = backend.http.put(request.url, content=swapped)
    assert bare.status_code in (403, 412), bare.text
    assert backend.store.get(key) == PDF_BYTES


def test_expired_upload_and_download_urls_are_refused(backend: Backend) -> None:
    key = backend.key("inputs/file_expired")
    backend.store.put(key, b"existing")
    put_request = backend.store.presign_put(
        key, content_length=len(PDF_BYTES), content_type="application/pdf", expires_in=60
    )
    get_url = backend.store.presign_get(key, expires_in=60)

    backend.clock.advance(61)

    upload_response = backend.http.put(
        put_request.url, content=PDF_BYTES, headers=put_request.headers
    )
    assert upload_response.status_code == 403
    assert backend.http.get(get_url).status_code == 403
    assert backend.store.get(key) == b"existing"


def _flip_signature(url: str) -> str:
    """The URL with one hex digit of its signature changed (``sig`` local, S3's own name)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {"sig", "X-Amz-Signature"}
    (position,) = [i for i, (name, _) in enumerate(query) if name in names]
    name, value = query[position]
    query[position] = (name, ("1" if value[0] == "0" else "0") + value[1:])
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def test_tampered_urls_are_refused(backend: Backend) -> None:
    key = backend.key("inputs/file_tamper")
    other_key = backend.key("inputs/file_other")
    request = backend.store.presign_put(
        key, content_length=len(PDF_BYTES), content_type="application/pdf", expires_in=600
    )
    url = request.url
    bad_signature = _flip_signature(url)
    other_path = _with_path(url, urlsplit(url).path.replace(key, other_key))

    for tampered in (bad_signature, other_path):
        response = backend.http.put(tampered, content=PDF_BYTES, headers=request.headers)
        assert response.status_code == 403, (tampered, response.text)
    # An upload URL is not a download URL, nor the other way round.
    backend.store.put(key, b"stored")
    assert backend.http.get(url).status_code == 403
    get_url = backend.store.presign_get(key, expires_in=60)
    assert backend.http.put(get_url, content=b"overwrite").status_code == 403

    assert backend.store.get(key) == b"stored"
    assert backend.store.head(other_key) is None


def test_put_replaces_whole_blob_and_download_to_streams_it(
    backend: Backend, tmp_path: Path
) -> None:
    key = backend.key("results/batch_1/item_2.json")
    backend.store.put(key, b"first version, longer than the second")
    backend.store.put(key, b"second", content_type="application/json")

    assert backend.store.get(key) == b"second"
    info = backend.store.head(key)
    assert info is not None and info.size == len(b"second")
    destination = tmp_path / "copy.json"
    backend.store.download_to(key, destination)
    assert destination.read_bytes() == b"second"
    with pytest.raises(BlobNotFoundError):
        backend.store.download_to(backend.key("results/batch_1/missing.json"), tmp_path / "x")


def test_download_to_returns_the_sha256_of_what_it_streamed(
    backend: Backend, tmp_path: Path
) -> None:
    # Several copy chunks and a ragged tail: the digest covers every byte, in order.
    body = os.urandom(3 * COPY_CHUNK_BYTES + 5)
    key = backend.key("inputs/file_large")
    assert upload(backend, key, body) == 200
    destination = tmp_path / "input"

    digest = backend.store.download_to(key, destination, max_bytes=len(body))

    assert digest == hashlib.sha256(body).hexdigest()
    assert destination.read_bytes() == body


def test_download_to_refuses_a_blob_over_max_bytes_before_writing_anything(
    backend: Backend, tmp_path: Path
) -> None:
    key = backend.key("inputs/file_too_big")
    assert upload(backend, key, PDF_BYTES) == 200
    destination = tmp_path / "input"

    with pytest.raises(BlobTooLargeError) as refused:
        backend.store.download_to(key, destination, max_bytes=len(PDF_BYTES) - 1)

    assert refused.value.size == len(PDF_BYTES)
    assert not destination.exists()


def test_put_file_streams_a_file_in_replacing_the_blob(backend: Backend, tmp_path: Path) -> None:
    key = backend.key("results/batch_1/item_3.json")
    backend.store.put(key, b'{"old": true}')
    # Over the S3 backend's multipart threshold: the multipart path is the one exercised.
    body = b'{"chunks":[' + b",".join(b'"%d"' % n for n in range(2_000_000)) + b"]}"
    assert len(body) > 16 * 1024 * 1024
    source = tmp_path / "result.json"
    source.write_bytes(body)

    backend.store.put_file(key, source, content_type="application/json")

    destination = tmp_path / "copy.json"
    assert backend.store.download_to(key, destination) == hashlib.sha256(body).hexdigest()
    assert destination.read_bytes() == body
    info = backend.store.head(key)
    assert info is not None and info.size == len(body)
    served = backend.http.get(backend.store.presign_get(key, expires_in=60))
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    if backend.moto is not None:
        uploads = [r for r in _recorded(backend) if r.method == "POST" and "uploads" in r.query]
        assert uploads, "a large file goes up in parts"


def test_put_file_of_a_missing_file_leaves_the_blob_as_it_was(
    backend: Backend, tmp_path: Path
) -> None:
    key = backend.key("results/batch_1/item_4.json")
    backend.store.put(key, b"kept")

    with pytest.raises(FileNotFoundError):
        backend.store.put_file(key, tmp_path / "never-written.json")

    assert backend.store.get(key) == b"kept"


def test_deleting_missing_keys_is_not_an_error(backend: Backend) -> None:
    backend.store.delete(backend.key("inputs/never_existed"))
    backend.store.delete_many([backend.key("a"), backend.key("b/c")])
    backend.store.delete_many([])
    assert list(backend.store.list_prefix(backend.prefix)) == []


def test_list_prefix_is_a_plain_string_prefix_in_key_order(backend: Backend) -> None:
    names = ["p/a/b", "p/a/c/d", "p/ab", "p/a-x", "p/b", "q/a"]
    for name in names:
        backend.store.put(backend.key(name), name.encode())

    def listed(prefix: str) -> list[str]:
        return [
            blob.key.removeprefix(backend.prefix + "/")
            for blob in backend.store.list_prefix(backend.key(prefix))
        ]

    # S3 orders keys by their bytes: "-" (0x2d) < "/" (0x2f) < "b" (0x62).
    assert listed("p/a") == ["p/a-x", "p/a/b", "p/a/c/d", "p/ab"]
    assert listed("p/a/") == ["p/a/b", "p/a/c/d"]
    assert listed("p/a/c") == ["p/a/c/d"]
    assert listed("p/") == ["p/a-x", "p/a/b", "p/a/c/d", "p/ab", "p/b"]
    assert listed("p/zzz") == []
    assert listed("") == sorted(names)
    sizes = {blob.key: blob.size for blob in backend.store.list_prefix(backend.key("p/"))}
    assert sizes[backend.key("p/a/c/d")] == len(b"p/a/c/d")


def test_get_refuses_a_blob_over_max_bytes(backend: Backend) -> None:
    from service.storage import BlobTooLargeError

    key = backend.key("inputs/big")
    backend.store.put(key, b"x" * 100)
    assert backend.store.get(key, max_bytes=100) == b"x" * 100
    with pytest.raises(BlobTooLargeError) as raised:
        backend.store.get(key, max_bytes=99)
    assert raised.value.size == 100


def test_list_prefix_starts_after_a_key(backend: Backend) -> None:
    for name in ["p/a", "p/b", "p/c", "p/d"]:
        backend.store.put(backend.key(name), b"x")

    def listed(start_after: str) -> list[str]:
        blobs = backend.store.list_prefix(backend.key("p/"), start_after=start_after)
        return [blob.key.removeprefix(backend.prefix + "/") for blob in blobs]

    assert listed(backend.key("p/b")) == ["p/c", "p/d"]  # exclusive, like S3's StartAfter
    assert listed(backend.key("p/bb")) == ["p/c", "p/d"]  # need not exist
    assert listed(backend.key("p/d")) == []


def test_more_than_a_thousand_keys_are_listed_and_deleted_completely(backend: Backend) -> None:
    keys = [backend.key(f"inputs/file_{index:05d}") for index in range(1005)]
    outside = backend.key("inputs-other/file_00000")
    for key in [*keys, outside]:
        backend.store.put(key, b"%PDF")

    calls_before = _recorded(backend)
    listed = list(backend.store.list_prefix(backend.key("inputs/")))
    list_calls = _recorded(backend)[len(calls_before) :]

    assert [blob.key for blob in listed] == keys
    assert all(isinstance(blob, BlobInfo) and blob.size == 4 for blob in listed)

    calls_before = _recorded(backend)
    backend.store.delete_many(keys)
    delete_calls = _recorded(backend)[len(calls_before) :]

    assert list(backend.store.list_prefix(backend.key("inputs/"))) == []
    assert [blob.key for blob in backend.store.list_prefix(backend.prefix)] == [outside]
    if backend.moto:
        # S3 answers at most 1,000 keys per ListObjectsV2 and takes at most 1,000 per
        # DeleteObjects: two calls each for 1,005 keys, and never one request per key.
        assert [(r.method, "list-type=2" in r.query) for r in list_calls] == [("GET", True)] * 2
        assert [(r.method, "delete" in r.query) for r in delete_calls] == [("POST", True)] * 2


def _recorded(backend: Backend) -> list[RecordedRequest]:
    return backend.moto.recorded_requests() if backend.moto else []


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "../escape",
        "a/../../escape",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a/",
        "a b",
        "a\\b",
        "a~b",
        "ünïcode",
        "x" * 1025,
    ],
)
def test_invalid_keys_are_rejected_before_touching_the_store(
    backend: Backend, bad_key: str
) -> None:
    store = backend.store
    with pytest.raises(ValueError):
        store.presign_put(bad_key, content_length=1, content_type=None, expires_in=60)
    with pytest.raises(ValueError):
        store.presign_get(bad_key, expires_in=60)
    with pytest.raises(ValueError):
        store.put(bad_key, b"x")
    with pytest.raises(ValueError):
        store.head(bad_key)
    with pytest.raises(ValueError):
        store.get(bad_key)
    with pytest.raises(ValueError):
        store.delete(bad_key)
    with pytest.raises(ValueError):
        store.delete_many([backend.key("fine"), bad_key])


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_presign_expiry_outside_s3_limits_is_rejected(backend: Backend, expires_in: int) -> None:
    with pytest.raises(ValueError):
        backend.store.presign_put(
            backend.key("k"), content_length=1, content_type=None, expires_in=expires_in
        )
    with pytest.raises(ValueError):
        backend.store.presign_get(backend.key("k"), expires_in=expires_in)


def test_content_type_that_cannot_be_a_header_is_rejected(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.store.presign_put(
            backend.key("k"),
            content_length=1,
            content_type="text/plain\r\nX-Evil: 1",
            expires_in=60,
        )


def test_ensure_ready_is_idempotent_and_ping_answers(backend: Backend) -> None:
    backend.store.ensure_ready()
    backend.store.ensure_ready()
    assert backend.store.ping() is True
