"""Both blob stores, each behind a real HTTP server on a loopback port.

* S3: ``S3BlobStore`` against moto's S3 server (``tests.support.s3server``), which verifies
  presigned URLs as S3 does.
* local: ``LocalBlobStore`` whose signed URLs are served by a real Flask app holding only the
  blobs blueprint, run by werkzeug in a thread.

Both share one adjustable clock, so a test can expire URLs on either backend without sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from service.storage import BlobStore, S3BlobStore
from tests.support.s3server import MotoServer, start_moto_server

from .harness import AdjustableClock, Backend, LocalBlobServer, start_local_blob_server


@pytest.fixture(scope="session")
def clock() -> AdjustableClock:
    return AdjustableClock()


@pytest.fixture(autouse=True)
def _reset_clock(clock: AdjustableClock) -> Iterator[None]:
    yield
    clock.offset = 0.0


@pytest.fixture(scope="session")
def moto_server(clock: AdjustableClock) -> Iterator[MotoServer]:
    server = start_moto_server(clock=clock)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_store(moto_server: MotoServer) -> S3BlobStore:
    store = S3BlobStore(
        f"pagelane-test-{uuid.uuid4().hex[:12]}",
        endpoint_url=moto_server.endpoint_url,
        region=moto_server.region,
    )
    store.ensure_ready()
    return store


@pytest.fixture(scope="session")
def local_blob_server(
    tmp_path_factory: pytest.TempPathFactory, clock: AdjustableClock
) -> Iterator[LocalBlobServer]:
    server = start_local_blob_server(tmp_path_factory.mktemp("blobs"), clock)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy configured for the machine must not intercept loopback calls.
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def _unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["s3", "local"])
def backend(request: pytest.FixtureRequest, http: httpx.Client, clock: AdjustableClock) -> Backend:
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        store: BlobStore = request.getfixturevalue("s3_store")
        return Backend("s3", store, http, clock, _unique_prefix(), moto=moto)
    local: LocalBlobServer = request.getfixturevalue("local_blob_server")
    return Backend("local", local.store, http, clock, _unique_prefix())


@pytest.fixture
def local(
    local_blob_server: LocalBlobServer, http: httpx.Client, clock: AdjustableClock
) -> Backend:
    return Backend("local", local_blob_server.store, http, clock, _unique_prefix())
