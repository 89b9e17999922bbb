"""The one error envelope: ``{"error": code, "message": text, ...context}``.

Every failure a client can see is an :class:`ApiError` with a stable code. Anything else is
logged with the request id and answered as a sanitised ``internal_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("pagelane.api")


class ApiError(Exception):
    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.status = http_status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.context = context

    def to_response(self) -> Response:
        response = jsonify({"error": self.code, "message": self.message, **self.context})
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def not_found(what: str) -> ApiError:
    # Another customer's resource gets exactly this too: existence is never revealed.
    return ApiError(404, "not_found", f"{what} not found")


def validation_error(loc: list[str | int], msg: str, type_: str = "value_error") -> ApiError:
    return ApiError(422, "validation_error", msg, detail=[{"loc": loc, "msg": msg, "type": type_}])


def body_too_large(limit: int | None) -> ApiError:
    """413 for a body over its route's limit (SPEC "Request limits"): ``request_too_large``,
    or ``document_too_large`` on the sync extraction endpoint, where the body is the document."""
    if request.endpoint == "extract.extract_file":
        return ApiError(
            413,
            "document_too_large",
            "the document exceeds the maximum file size",
            max_bytes=limit,
        )
    return ApiError(
        413,
        "request_too_large",
        f"the request body exceeds {limit} bytes for this endpoint",
        max_bytes=limit,
    )


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's callback for request models that fail validation."""
    detail = [
        {
            "loc": [str(p) if not isinstance(p, int) else p for p in err["loc"]],
            "msg": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    # SPEC: a malformed cursor is `invalid_cursor`, whichever check caught it.
    code = (
        "invalid_cursor"
        if detail and all(d["loc"] and d["loc"][-1] == "cursor" for d in detail)
        else "validation_error"
    )
    response = jsonify({"error": code, "message": message, "detail": detail})
    response.status_code = 422
    return response


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.to_response()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # flask-openapi3 aborts with a ready validation response; pass it through untouched.
        if exc.response is not None:
            return exc.response  # type: ignore[return-value]
        status = exc.code or 500
        if status == 413:
            return body_too_large(request.max_content_length).to_response()
        code = _HTTP_CODES.get(status, "http_error")
        response = jsonify({"error": code, "message": exc.description or code})
        response.status_code = status
        # The exception's own headers: 405 carries Allow (RFC 9110 15.5.6), 401 WWW-Authenticate.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        response = jsonify(
            {
                "error": "internal_error",
                "message": "unexpected server error; it has been logged, safe to retry",
                "request_id": g.get("request_id"),
            }
        )
        response.status_code = 500
        return response
