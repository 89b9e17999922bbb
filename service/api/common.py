"""Request plumbing shared by the blueprints: the context, the caller, rate limits, JSON."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, jsonify
from pydantic import BaseModel

from service.api.context import ApiContext
from service.api.errors import ApiError
from service.api.schemas import ErrorResponse
from service.auth import Principal
from service.storage import BlobStore

F = TypeVar("F", bound=Callable[..., Any])


def service() -> ApiContext:
    return cast(ApiContext, current_app.extensions["pagelane"])


def caller() -> Principal:
    return cast(Principal, g.principal)


def blob_store() -> BlobStore:
    store = service().blob_store
    if store is None:
        raise ApiError(503, "uploads_not_configured", "this deployment has no blob store")
    return store


def responses(ok: type[BaseModel], *error_statuses: int) -> dict[str | int, Any]:
    """The OpenAPI responses of an endpoint: its 200 model and the error envelope elsewhere."""
    return {200: ok, **{status: ErrorResponse for status in error_statuses}}


def json_response(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def submission_rate_limited(view: F) -> F:
    """Counts one submission against the caller's key; 429 with Retry-After when over."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        decision = service().rate_limiter.hit(caller().key_id)
        g.rate_limit_headers = decision.headers()
        if not decision.allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"at most {decision.limit} submissions per window on this key",
                headers=decision.headers(),
            )
        return view(*args, **kwargs)

    return cast(F, wrapper)
