"""What only the S3 backend does: SigV4 presigning, bucket set-up and failure reporting."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest

from service.storage import BlobStoreError, S3BlobStore
from tests.support.s3server import MotoServer

# Nothing listens on port 9 (discard) on a test machine: connections are refused at once.
UNREACHABLE = "http://127.0.0.1:9"


def test_presigned_put_signs_length_and_type_so_s3_enforces_them(s3_store: S3BlobStore) -> None:
    request = s3_store.presign_put(
        "cus_1/inputs/file_1", content_length=42, content_type="application/pdf", expires_in=60
    )

    query = dict(parse_qsl(urlsplit(request.url).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "60"
    assert query["X-Amz-SignedHeaders"].split(";") == [
        "content-length",
        "content-type",
        "host",
        "if-none-match",  # create-only: the client cannot drop the condition
    ]
    # Path-style addressing: the bucket is in the path, so any endpoint host works.
    assert urlsplit(request.url).path == f"/{s3_store.bucket}/cus_1/inputs/file_1"
    # No SDK checksum parameters: S3-compatible stores that do not know them reject the PUT.
    assert not [name for name in query if "checksum" in name.lower()]


def test_presigned_put_without_constraints_signs_only_the_host(s3_store: S3BlobStore) -> None:
    request = s3_store.presign_put(
        "cus_1/inputs/file_2", content_length=None, content_type=None, expires_in=60
    )
    query = dict(parse_qsl(urlsplit(request.url).query))
    assert query["X-Amz-SignedHeaders"] == "host;if-none-match"


def test_ensure_ready_creates_a_missing_bucket_outside_us_east_1(moto_server: MotoServer) -> None:
    store = S3BlobStore(
        f"pagelane-eu-{uuid.uuid4().hex[:8]}",
        endpoint_url=moto_server.endpoint_url,
        region="eu-west-1",
    )
    assert store.ping() is False

    store.ensure_ready()
    store.ensure_ready()

    assert store.ping() is True
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_a_missing_bucket_is_a_store_error_not_a_missing_blob(moto_server: MotoServer) -> None:
    store = S3BlobStore(
        f"pagelane-absent-{uuid.uuid4().hex[:8]}", endpoint_url=moto_server.endpoint_url
    )
    with pytest.raises(BlobStoreError):
        store.get("cus_1/inputs/file_1")
    with pytest.raises(BlobStoreError):
        list(store.list_prefix("cus_1/"))


def test_unreachable_endpoint_ping_is_false_fast_and_ensure_ready_explains() -> None:
    store = S3BlobStore("pagelane", endpoint_url=UNREACHABLE)

    started = time.monotonic()
    assert store.ping() is False
    assert time.monotonic() - started < 3

    with pytest.raises(BlobStoreError, match="unreachable"):
        store.ensure_ready()


def test_put_sends_its_body_without_waiting_for_100_continue(s3_store: S3BlobStore) -> None:
    """botocore asks for ``Expect: 100-continue`` on every PUT by default: a round trip per
    result written. Our PUTs go straight through, and still store the bytes."""
    sent: list[dict[str, str]] = []
    s3_store._client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    s3_store.put("cus_1/results/b/i.json", b'{"ok": true}', content_type="application/json")
    assert sent and not {name.lower() for name in sent[0]} & {"expect"}
    assert s3_store.get("cus_1/results/b/i.json") == b'{"ok": true}'
