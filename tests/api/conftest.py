"""API tests run twice: Postgres + S3 (moto) and SQLite + local blobs (the embedded mode)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.api.app import create_app
from service.settings import Settings
from tasks.context import TaskContext
from tests.conftest import build_context, new_customer_key, put_upload


@dataclass
class Tenant:
    """One customer seen through the test client."""

    client: FlaskClient
    customer_id: str
    key: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {"X-API-KEY": self.key}

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(
            path, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.client.post(
            path, json=json, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )

    def register(self, data: bytes, filename: str = "doc.pdf") -> dict[str, Any]:
        response = self.post("/v1/files", {"size_bytes": len(data), "filename": filename})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def upload(self, data: bytes, filename: str = "doc.pdf") -> str:
        created = self.register(data, filename)
        assert put_upload(created["upload"], data, self.client) == 200
        return str(created["id"])

    def submit(self, file_ids: list[str], **body: Any) -> Any:
        headers = body.pop("headers", {})
        return self.post("/v1/batches", {"file_ids": file_ids, **body}, headers=headers)


@dataclass
class ApiEnv:
    settings: Settings
    ctx: TaskContext
    client: FlaskClient
    backend: str

    def tenant(self, name: str, **kwargs: Any) -> Tenant:
        customer_id, key = new_customer_key(self.ctx, name, **kwargs)
        return Tenant(self.client, customer_id, key)


@pytest.fixture(params=["postgres", pytest.param("sqlite", marks=pytest.mark.sqlite)])
def api_env(request: pytest.FixtureRequest, flush_redis: None) -> Iterator[ApiEnv]:
    if request.param == "postgres":
        settings = request.getfixturevalue("pg_s3_settings")
    else:
        settings = request.getfixturevalue("sqlite_local_settings")
    ctx = build_context(settings)
    app = create_app(settings, context=ctx, dispatcher=ctx.dispatcher)
    app.config["TESTING"] = True
    yield ApiEnv(settings, ctx, app.test_client(), request.param)
    ctx.close()


@pytest.fixture
def alice(api_env: ApiEnv) -> Tenant:
    return api_env.tenant("alice")


PDF_BYTES = b"%PDF-1.4\n% tiny test bytes\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
