"""The HTTP half of authentication: the key from the request's headers, checked before every
authenticated blueprint's views (SPEC: ``X-API-KEY``, or ``Authorization: Bearer``)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import g, request
from werkzeug.datastructures import Headers

from service import logs
from service.api.common import service
from service.api.errors import ApiError
from service.auth import authenticate


def key_from_headers(headers: Mapping[str, str] | Headers) -> str:
    key = headers.get("X-API-KEY") or ""
    if not key:
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            key = value.strip()
    return key.strip()


def require_api_key() -> None:
    """``before_request`` of the authenticated blueprints: 401 unless the key is live."""
    if request.method == "OPTIONS":
        return  # werkzeug's automatic answer (Allow) reveals nothing and runs no view
    # A Core connection, not an ORM session: every request pays for this lookup.
    with service().engine.connect() as connection:
        principal = authenticate(connection, key_from_headers(request.headers))
    if principal is None:
        raise ApiError(401, "unauthorized", "missing or unknown API key (X-API-KEY header)")
    g.principal = principal
    logs.bind(customer_id=principal.customer_id)
