"""Response bodies: database rows → the JSON shapes of the models in service/api/schemas.py
(the item and batch resources are built by service.events, which events carry too)."""

from __future__ import annotations

from typing import Any

from service.clock import isoformat
from service.events import batch_resource, item_resource
from service.models import Batch, File, Item


def file_body(file: File, upload: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": file.id,
        "object": "file",
        "customer_id": file.customer_id,
        "status": file.status,
        "size_bytes": file.size_bytes,
        "filename": file.filename,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "created_at": isoformat(file.created_at),
        "expires_at": isoformat(file.expires_at),
    }
    if upload is not None:
        body["upload"] = upload
    return body


def batch_body(
    batch: Batch, items: list[Item] | None = None, next_cursor: str | None = None
) -> dict[str, Any]:
    body = batch_resource(batch)
    if items is not None:
        body["items"] = [item_resource(item) for item in items]
        body["next_cursor"] = next_cursor
    return body
