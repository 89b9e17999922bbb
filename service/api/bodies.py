"""Response bodies: database rows → the JSON shapes of the models in service/api/schemas.py."""

from __future__ import annotations

from typing import Any

from service.clock import isoformat
from service.models import Batch, File, Item, ItemStatus


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


def item_body(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "batch_item",
        "batch_id": item.batch_id,
        "file_id": item.file_id,
        "position": item.position,
        "status": item.status,
        "attempts": item.attempts,
        "page_count": item.page_count,
        "pages_done": item.pages_done,
        "started_at": isoformat(item.started_at),
        "completed_at": isoformat(item.completed_at),
        "updated_at": isoformat(item.updated_at),
        "result_url": (
            f"/v1/batches/{item.batch_id}/items/{item.id}/result"
            if item.status == ItemStatus.SUCCEEDED
            else None
        ),
        "error": (
            {"code": item.error_code, "message": item.error_message or item.error_code}
            if item.error_code
            else None
        ),
    }


def batch_body(
    batch: Batch, items: list[Item] | None = None, next_cursor: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "counts": {
            "pending": batch.count_pending,
            "running": batch.count_running,
            "succeeded": batch.count_succeeded,
            "failed": batch.count_failed,
            "cancelled": batch.count_cancelled,
        },
        "total_items": batch.total_items,
        "engine": batch.engine,
        "options": batch.options,
        "metadata": batch.metadata_,
        "created_at": isoformat(batch.created_at),
        "started_at": isoformat(batch.started_at),
        "completed_at": isoformat(batch.completed_at),
        "cancel_requested_at": isoformat(batch.cancel_requested_at),
        "expires_at": isoformat(batch.expires_at),
        "pages_billed": batch.pages_billed,
        "parent_batch_id": batch.parent_batch_id,  # batch control
    }
    if items is not None:
        body["items"] = [item_body(item) for item in items]
        body["next_cursor"] = next_cursor
    return body
