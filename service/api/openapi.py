"""The finishing pass over the generated OpenAPI document: what flask-openapi3 cannot say from
the models alone, so that the document and the validation agree (schemathesis proves it,
tests/api/test_schemathesis.py).

- every ``/v1`` operation takes the key the same way (``X-API-KEY`` or a bearer token) and
  declares 401; the probes declare no security at all;
- every error status an operation can answer is declared with the one error envelope,
  including the 422 of request validation (flask-openapi3's default is another shape), 413 on
  every operation with a body and 302 on the result endpoint;
- what this deployment accepts: the installed OCR languages, the largest file size, the most
  files per batch;
- links (file → batch → item → result, and the list → batch) for clients and for stateful
  testing.

The local blob store's signed ``/blobs/{key}`` routes are deliberately not in the document: they
exist only in the embedded mode, take no API key, and their only valid inputs are whole URLs
the API signed and handed out in ``upload.url`` (as S3's presigned URLs are not part of it either).
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]

_DESCRIPTIONS = {
    302: "Found: a short-lived signed URL of the result JSON in Location",
    400: "Bad Request",
    401: "Unauthorized: missing or unknown API key",
    402: "Payment Required",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content: validation_error (or invalid_cursor)",
    429: "Too Many Requests (Retry-After says when to retry)",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# operationId → (link name → (target operationId, parameters, request body)).
_LINKS: dict[str, dict[str, tuple[str, dict[str, str], Any]]] = {
    "files_create_file_post": {
        "GetFile": ("files_get_file__file_id__get", {"file_id": "$response.body#/id"}, None),
        "SubmitBatch": (
            "batches_create_batch_post",
            {},
            {"file_ids": ["$response.body#/id"]},
        ),
    },
    "files_create_files_bulk_bulk_post": {
        "GetFirstFile": (
            "files_get_file__file_id__get",
            {"file_id": "$response.body#/data/0/id"},
            None,
        ),
    },
    "batches_create_batch_post": {
        "GetBatch": ("batches_get_batch__batch_id__get", {"batch_id": "$response.body#/id"}, None),
        "CancelBatch": (
            "batches_cancel_batch__batch_id__cancel_post",
            {"batch_id": "$response.body#/id"},
            None,
        ),
        "GetFirstResult": (
            "batches_get_result__batch_id__items__item_id__result_get",
            {"batch_id": "$response.body#/id", "item_id": "$response.body#/items/0/id"},
            None,
        ),
    },
    "batches_list_batches_get": {
        "GetFirstBatch": (
            "batches_get_batch__batch_id__get",
            {"batch_id": "$response.body#/data/0/id"},
            None,
        ),
        "NextPage": ("batches_list_batches_get", {"cursor": "$response.body#/next_cursor"}, None),
    },
    "batches_get_batch__batch_id__get": {
        "NextChanges": (
            "batches_get_batch__batch_id__get",
            {"batch_id": "$response.body#/id", "cursor": "$response.body#/next_cursor"},
            None,
        ),
        "GetFirstResult": (
            "batches_get_result__batch_id__items__item_id__result_get",
            {"batch_id": "$response.body#/id", "item_id": "$response.body#/items/0/id"},
            None,
        ),
        "CancelBatch": (
            "batches_cancel_batch__batch_id__cancel_post",
            {"batch_id": "$response.body#/id"},
            None,
        ),
    },
    "batches_cancel_batch__batch_id__cancel_post": {
        "GetBatch": ("batches_get_batch__batch_id__get", {"batch_id": "$response.body#/id"}, None),
    },
}


def finish_document(
    document: dict[str, Any],
    *,
    languages: list[str],
    max_file_bytes: int,
    max_files_per_batch: int,
) -> dict[str, Any]:
    """Complete ``document`` (flask-openapi3's cached dict) in place; returns it."""
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            _finish_operation(path, method, operation)
    schemas = document["components"]["schemas"]
    if languages:
        for model in ("BatchOptions", "ExtractForm"):
            _languages(schemas[model]["properties"]["languages"])["enum"] = languages
    schemas["CreateFile"]["properties"]["size_bytes"]["maximum"] = max_file_bytes
    schemas["CreateBatch"]["properties"]["file_ids"]["maxItems"] = max_files_per_batch
    # flask-openapi3 registers its own validation model; nothing refers to it any more.
    schemas.pop("ValidationErrorModel", None)
    return document


def _languages(prop: dict[str, Any]) -> dict[str, Any]:
    items = prop.get("items")
    assert isinstance(items, dict), prop
    items.pop("pattern", None)
    return items


# Successful answers that are not JSON: their media type and body, as the response carries them.
_NON_JSON_SUCCESS = {
    "/v1/batches/{batch_id}/errors.csv": ("text/csv", {"type": "string"}),
    "/v1/batches/{batch_id}/results.zip": (
        "application/zip",
        {"type": "string", "contentMediaType": "application/zip"},
    ),
    # Each event's `data` is an event object (SPEC "Events"); the stream itself has no schema.
    "/v1/batches/{batch_id}/events": ("text/event-stream", {}),
    "/v1/batches/{batch_id}/items/{item_id}/result.md": ("text/markdown", {"type": "string"}),
}


def _finish_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if method == "get" and path in _NON_JSON_SUCCESS and "200" in responses:
        media_type, schema = _NON_JSON_SUCCESS[path]
        responses["200"]["content"] = {media_type: {"schema": schema}}
    has_input = bool(operation.get("parameters")) or "requestBody" in operation
    statuses: set[int] = set()
    if path.startswith("/v1/"):
        operation["security"] = SECURITY
        statuses.add(401)
    else:
        operation["security"] = []
    if has_input:
        statuses.add(422)
    else:
        responses.pop("422", None)
    if "requestBody" in operation:
        statuses.add(413)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)
    for code, response in list(responses.items()):
        # The probes answer 503 with their own model; every /v1 error is the envelope.
        if path.startswith("/v1/") and code.isdigit() and int(code) >= 400:
            responses[code] = _error_response(int(code), response.get("description"))
    if operation.get("operationId") == "batches_get_result__batch_id__items__item_id__result_get":
        responses["302"] = {
            "description": _DESCRIPTIONS[302],
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        }
    links = _LINKS.get(operation.get("operationId", ""))
    if links:
        responses["200"]["links"] = {
            name: {
                "operationId": target,
                **({"parameters": parameters} if parameters else {}),
                **({"requestBody": body} if body is not None else {}),
            }
            for name, (target, parameters, body) in links.items()
        }


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS.get(status, description or str(status)),
        "content": {"application/json": {"schema": ERROR}},
    }
