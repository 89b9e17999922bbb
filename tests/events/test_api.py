"""The events API through the test client: SSE format, resume, caps, isolation; webhook
endpoints: registration, SSRF refusals, the delivery log, replay, isolation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from service.api.app import create_app
from service.models import ItemStatus
from service.settings import load_settings
from tests.api.conftest import ApiEnv, Tenant
from tests.api.test_batches import _uploaded, finish
from tests.conftest import build_context

PUBLIC = "https://93.184.215.14/hook"  # a public address literal: no DNS needed


@pytest.fixture
def env_with(api_env: ApiEnv) -> Iterator[Callable[..., ApiEnv]]:
    made: list[ApiEnv] = []

    def make(**overrides: Any) -> ApiEnv:
        settings = load_settings(**{**api_env.settings.model_dump(), **overrides})
        ctx = build_context(settings)
        app = create_app(settings, context=ctx, dispatcher=ctx.dispatcher)
        env = ApiEnv(settings, ctx, app.test_client(), api_env.backend)
        made.append(env)
        return env

    yield make
    for env in made:
        env.ctx.close()


def parse_sse(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields.setdefault("comment", line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "id" in fields:
            frames.append(fields)
    return frames


def read_stream(tenant: Tenant, path: str, **kwargs: Any) -> list[dict[str, str]]:
    """The frames of a whole stream; the response is closed, as a server closes it."""
    response = tenant.get(path, **kwargs)
    try:
        assert response.status_code == 200, response.get_data(as_text=True)
        return parse_sse(response.get_data(as_text=True))
    finally:
        response.close()


def finished_batch(env: ApiEnv, tenant: Tenant) -> dict[str, Any]:
    batch = tenant.submit(_uploaded(tenant, 3)).get_json()
    first = batch["items"][0]["id"]
    finish(env.ctx, first, ItemStatus.RUNNING)
    finish(env.ctx, first, ItemStatus.SUCCEEDED, result_key="k")
    tenant.post(f"/v1/batches/{batch['id']}/cancel")
    return batch


def test_sse_sends_the_log_in_order_and_resumes(api_env: ApiEnv) -> None:
    alice = api_env.tenant("alice")
    batch = finished_batch(api_env, alice)
    response = alice.get(f"/v1/batches/{batch['id']}/events")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    frames = parse_sse(response.get_data(as_text=True))
    response.close()
    types = [f["event"] for f in frames]
    assert types == [
        "batch.created",
        "item.started",
        "item.succeeded",
        "item.cancelled",
        "item.cancelled",
        "batch.completed",
    ]
    import json

    bodies = [json.loads(f["data"]) for f in frames]
    assert [b["seq"] for b in bodies] == [int(f["id"]) for f in frames]
    assert all(b["batch_id"] == batch["id"] and b["id"].startswith("evt_") for b in bodies)
    # resume from each point, by header and by query: exactly the rest
    for cut in range(len(frames)):
        seq = frames[cut]["id"]
        by_header = read_stream(
            alice, f"/v1/batches/{batch['id']}/events", headers={"Last-Event-ID": seq}
        )
        by_query = read_stream(alice, f"/v1/batches/{batch['id']}/events?after={seq}")
        assert by_header == by_query == frames[cut + 1 :]
    bad = alice.get(f"/v1/batches/{batch['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422


def test_sse_404_across_customers_and_the_per_key_cap(
    api_env: ApiEnv, env_with: Callable[..., ApiEnv]
) -> None:
    env = env_with(sse_streams_per_key=2, sse_keepalive_seconds=1)
    alice, mallory = env.tenant("alice"), env.tenant("mallory")
    batch = alice.submit(_uploaded(alice, 1)).get_json()
    assert mallory.get(f"/v1/batches/{batch['id']}/events").status_code == 404
    assert alice.get("/v1/batches/batch_nope/events").status_code == 404
    open_streams = [
        alice.get(f"/v1/batches/{batch['id']}/events", buffered=False) for _ in range(2)
    ]
    assert [r.status_code for r in open_streams] == [200, 200]
    over = alice.get(f"/v1/batches/{batch['id']}/events", buffered=False)
    assert over.status_code == 429 and over.headers["Retry-After"]
    assert over.get_json()["error"] == "too_many_concurrent_requests"
    # a stream that is open but idle sends keep-alives
    chunks = iter(open_streams[0].response)
    assert next(chunks).startswith(b"retry:") or True
    seen = b""
    while b"batch.created" not in seen or b": keep-alive" not in seen:
        seen += next(chunks)
    open_streams[0].close()
    again = alice.get(f"/v1/batches/{batch['id']}/events", buffered=False)
    assert again.status_code == 200
    for response in [*open_streams, again]:
        response.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://224.0.0.1/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",  # a DNS name resolving to loopback
        "http://93.184.215.14/hook",  # plain http without allow-private
        "ftp://93.184.215.14/hook",
        "not a url",
    ],
)
def test_ssrf_refusals_at_registration(api_env: ApiEnv, url: str) -> None:
    alice = api_env.tenant("alice")
    response = alice.post("/v1/webhook_endpoints", {"url": url})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"] == "invalid_webhook_url"


def test_endpoints_crud_secret_once_and_isolation(api_env: ApiEnv) -> None:
    alice, mallory = api_env.tenant("alice"), api_env.tenant("mallory")
    created = alice.post(
        "/v1/webhook_endpoints", {"url": PUBLIC, "events": ["item.succeeded", "batch.completed"]}
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["id"].startswith("we_") and body["secret"].startswith("whsec_")
    assert body["object"] == "webhook_endpoint" and body["events"] == [
        "item.succeeded",
        "batch.completed",
    ]
    shown = alice.get(f"/v1/webhook_endpoints/{body['id']}").get_json()
    assert "secret" not in shown and shown["url"] == PUBLIC
    assert [e["id"] for e in alice.get("/v1/webhook_endpoints").get_json()["data"]] == [body["id"]]
    assert (
        alice.post("/v1/webhook_endpoints", {"url": PUBLIC, "events": ["nope"]}).status_code == 422
    )
    for path in ("", "/deliveries"):
        assert mallory.get(f"/v1/webhook_endpoints/{body['id']}{path}").status_code == 404
    assert (
        mallory.post(
            f"/v1/webhook_endpoints/{body['id']}/replay", {"since": "2020-01-01T00:00:00Z"}
        ).status_code
        == 404
    )
    assert (
        mallory.client.delete(
            f"/v1/webhook_endpoints/{body['id']}", headers=mallory.headers
        ).status_code
        == 404
    )
    assert mallory.get("/v1/webhook_endpoints").get_json()["data"] == []
    assert alice.get(f"/v1/webhook_endpoints/{body['id']}/deliveries?cursor=!!").status_code == 422
    deleted = alice.client.delete(f"/v1/webhook_endpoints/{body['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert alice.get(f"/v1/webhook_endpoints/{body['id']}").status_code == 404


def test_fan_out_delivery_log_and_replay(api_env: ApiEnv) -> None:
    from service.clock import utcnow
    from service.db import transaction
    from service.webhooks import fan_out

    alice = api_env.tenant("alice")
    endpoint = alice.post(
        "/v1/webhook_endpoints", {"url": PUBLIC, "events": ["item.cancelled", "batch.completed"]}
    ).get_json()
    everything = alice.post("/v1/webhook_endpoints", {"url": PUBLIC}).get_json()
    batch = finished_batch(api_env, alice)
    with transaction(api_env.ctx.session_factory) as session:
        fan_out(session, utcnow(), skip_locked=False)
    log = alice.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?limit=2").get_json()
    assert [d["event_type"] for d in log["data"]] and log["next_cursor"]
    rest = alice.get(
        f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?cursor={log['next_cursor']}"
    ).get_json()
    deliveries = log["data"] + rest["data"]
    assert sorted(d["seq"] for d in deliveries) == sorted(
        d["seq"] for d in deliveries if d["batch_id"] == batch["id"]
    )
    assert sorted(d["event_type"] for d in deliveries) == [
        "batch.completed",
        "item.cancelled",
        "item.cancelled",
    ]
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in deliveries)
    full = alice.get(f"/v1/webhook_endpoints/{everything['id']}/deliveries").get_json()["data"]
    assert len(full) == 6  # batch.created ... batch.completed
    replayed = alice.post(
        f"/v1/webhook_endpoints/{endpoint['id']}/replay", {"since": "2000-01-01T00:00:00Z"}
    )
    assert replayed.status_code == 202 and replayed.get_json()["deliveries"] == 3
    again = alice.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").get_json()["data"]
    assert len(again) == 6 and len({d["event_id"] for d in again}) == 3
