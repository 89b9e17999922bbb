"""`/v1/webhook_endpoints`: register, list, show, delete, the delivery log and replay."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from service import lifecycle, webhooks
from service.api.common import caller, json_response, responses, service
from service.api.errors import ApiError, not_found
from service.clock import isoformat, utcnow
from service.db import transaction
from service.ids import new_id
from service.models import EventType, WebhookDelivery, WebhookEndpoint

tag = Tag(name="webhooks", description="Signed webhooks (Standard Webhooks) for batch events.")
MAX_ENDPOINTS = 20


class CreateWebhookEndpoint(BaseModel):
    url: str = Field(..., max_length=2048)
    events: list[EventType] | None = Field(None, max_length=len(EventType))


class WebhookEndpointPath(BaseModel):
    endpoint_id: str = Field(..., max_length=64)


class DeliveriesQuery(BaseModel):
    cursor: str | None = Field(None, max_length=512)
    limit: int = Field(50, ge=1, le=200)


class ReplayBody(BaseModel):
    since: datetime


class WebhookEndpointResource(BaseModel):
    id: str
    object: str = "webhook_endpoint"
    url: str
    events: list[str] | None
    secret: str | None = None
    created_at: str


class WebhookEndpointList(BaseModel):
    object: str = "list"
    data: list[WebhookEndpointResource]


class WebhookDeliveryResource(BaseModel):
    id: str
    object: str = "webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    batch_id: str
    seq: int
    status: str
    response_code: int | None
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str
    completed_at: str | None


class WebhookDeliveryList(BaseModel):
    object: str = "list"
    data: list[WebhookDeliveryResource]
    next_cursor: str | None


class ReplayResource(BaseModel):
    object: str = "webhook_replay"
    endpoint_id: str
    since: str
    deliveries: int


def make_webhooks_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "webhooks",
        __name__,
        url_prefix="/v1/webhook_endpoints",
        abp_tags=[tag],
        abp_security=[{"ApiKey": []}],
    )
    bp.post(
        "",
        responses={
            201: WebhookEndpointResource,
            **responses(WebhookEndpointResource, 401, 409, 422),
        },
    )(create_endpoint)
    bp.get("", responses=responses(WebhookEndpointList, 401))(list_endpoints)
    bp.get("/<endpoint_id>", responses=responses(WebhookEndpointResource, 401, 404))(get_endpoint)
    bp.delete(
        "/<endpoint_id>", responses={204: None, **responses(WebhookEndpointResource, 401, 404)}
    )(delete_endpoint)
    bp.get("/<endpoint_id>/deliveries", responses=responses(WebhookDeliveryList, 401, 404, 422))(
        list_deliveries
    )
    bp.post("/<endpoint_id>/replay", responses=responses(ReplayResource, 401, 404, 422))(replay)
    return bp


def create_endpoint(body: CreateWebhookEndpoint) -> Response:
    """Register a URL; the response carries its signing secret, shown this once."""
    ctx = service()
    try:
        webhooks.check_url(body.url, allow_private=ctx.settings.webhook_allow_private)
    except webhooks.InvalidWebhookUrlError as exc:
        raise ApiError(422, "invalid_webhook_url", str(exc)) from exc
    secret = webhooks.generate_secret()
    customer_id = caller().customer_id
    with transaction(ctx.session_factory) as session:
        live = session.scalars(
            select(WebhookEndpoint.id).where(
                WebhookEndpoint.customer_id == customer_id, WebhookEndpoint.deleted_at.is_(None)
            )
        ).all()
        if len(live) >= MAX_ENDPOINTS:
            raise ApiError(
                409, "too_many_webhook_endpoints", f"at most {MAX_ENDPOINTS} endpoints a customer"
            )
        endpoint = WebhookEndpoint(
            id=new_id("we"),
            customer_id=customer_id,
            url=body.url,
            events=[str(e) for e in dict.fromkeys(body.events)] if body.events else None,
            secret=webhooks.seal_secret(secret, ctx.settings),
            created_at=utcnow(),
        )
        session.add(endpoint)
        session.flush()
        result = webhooks.endpoint_body(endpoint, secret)
    return json_response(result, 201)


def list_endpoints() -> Response:
    """The caller's webhook endpoints (secrets are not shown again)."""
    with service().session_factory() as session:
        rows = session.scalars(
            select(WebhookEndpoint)
            .where(
                WebhookEndpoint.customer_id == caller().customer_id,
                WebhookEndpoint.deleted_at.is_(None),
            )
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ).all()
        data = [webhooks.endpoint_body(e) for e in rows]
    return json_response({"object": "list", "data": data})


def _endpoint(session: Any, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if (
        endpoint is None
        or endpoint.customer_id != caller().customer_id
        or endpoint.deleted_at is not None
    ):
        raise not_found("webhook_endpoint")
    return endpoint


def get_endpoint(path: WebhookEndpointPath) -> Response:
    """One endpoint."""
    with service().session_factory() as session:
        return json_response(webhooks.endpoint_body(_endpoint(session, path.endpoint_id)))


def delete_endpoint(path: WebhookEndpointPath) -> Response:
    """Stop delivering to it; its pending deliveries are given up."""
    now = utcnow()
    with transaction(service().session_factory) as session:
        endpoint = _endpoint(session, path.endpoint_id)
        endpoint.deleted_at = now
        pending = session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending"
            )
        ).all()
        webhooks.give_up(session, pending, "the endpoint was deleted", now)
    return Response(status=204)


def list_deliveries(path: WebhookEndpointPath, query: DeliveriesQuery) -> Response:
    """Its deliveries, newest first, with their attempts."""
    with service().session_factory() as session:
        endpoint = _endpoint(session, path.endpoint_id)
        statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        if query.cursor:
            try:
                created_at, after_id = lifecycle.decode_list_cursor(query.cursor, prefix="whd_")
            except lifecycle.InvalidCursorError as exc:
                raise ApiError(
                    422, "invalid_cursor", "cursor is not one this API returned"
                ) from exc
            statement = statement.where(
                or_(
                    WebhookDelivery.created_at < created_at,
                    and_(
                        WebhookDelivery.created_at == created_at,
                        WebhookDelivery.id < after_id,
                    ),
                )
            )
        rows = session.scalars(
            statement.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(
                query.limit + 1
            )
        ).all()
        page, more = rows[: query.limit], len(rows) > query.limit
        data = [webhooks.delivery_body(d) for d in page]
        cursor = (
            lifecycle.list_cursor(page[-1].created_at, page[-1].id, prefix="whd_") if more else None
        )
    return json_response({"object": "list", "data": data, "next_cursor": cursor})


def replay(path: WebhookEndpointPath, body: ReplayBody) -> Response:
    """Send every event since ``since`` again (as new deliveries, same webhook-id)."""
    since = body.since
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    with transaction(service().session_factory) as session:
        endpoint = _endpoint(session, path.endpoint_id)
        count = webhooks.replay(session, endpoint, since, utcnow())
        endpoint_id = endpoint.id
    return json_response(
        {
            "object": "webhook_replay",
            "endpoint_id": endpoint_id,
            "since": isoformat(since),
            "deliveries": count,
        },
        202,
    )
