"""Batch control: ``DELETE /v1/batches/{id}`` and ``DELETE /v1/files/{id}`` (SPEC "Deleting
data before retention"). Registered on the batches and files blueprints (one OpenAPI path entry
per path); the work is in ``service/control.py``."""

from __future__ import annotations

from typing import Any

from flask import Response

from service import control, metrics
from service.api.common import caller, responses, service
from service.api.errors import ApiError, not_found
from service.api.schemas import BatchPath, BatchResource, FilePath
from service.clock import utcnow
from service.db import transaction

_STATUS = {"not_found": 404, "batch_not_terminal": 409, "nothing_to_retry": 409}


def errors(*statuses: int) -> dict[str | int, Any]:
    """The error responses of an endpoint whose success has no body model."""
    every = responses(BatchResource, *statuses)
    every.pop(200)
    return every


DELETE_BATCH_RESPONSES = {204: None, **errors(401, 404, 409)}
DELETE_FILE_RESPONSES = {204: None, **errors(401, 404)}


def delete_batch(path: BatchPath) -> Response:
    """Delete a terminal batch: its results now, then the batch and its items are 404."""
    ctx = service()
    with transaction(ctx.session_factory) as session:
        try:
            control.delete_batch(session, ctx.blob_store, caller().customer_id, path.batch_id)
        except control.ControlError as exc:
            raise api_error(exc) from exc
    return Response(status=204)


def delete_file(path: FilePath) -> Response:
    """Delete a file's input now; batches that still need it fail it with upload_missing."""
    ctx = service()
    customer_id = caller().customer_id
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        try:
            control.delete_file(session, ctx.blob_store, customer_id, path.file_id, now)
        except control.ControlError as exc:
            raise api_error(exc) from exc
    # Its pending items fail now, one batch lock at a time (in id order, as everywhere). A
    # running item has fetched its input already, or fails upload_missing when it does.
    with ctx.session_factory() as session:
        batch_ids = control.pending_batches_of_file(session, path.file_id)
    admitted: list[str] = []
    failed = 0
    for batch_id in batch_ids:
        with transaction(ctx.session_factory) as session:
            moved, held = control.fail_pending_items_of_file(session, batch_id, path.file_id, now)
        failed += moved
        admitted += held
    if failed:
        metrics.item_finished("failed", control.UPLOAD_MISSING, failed)
    if admitted:
        ctx.dispatcher.semaphore.release(customer_id, admitted)
        ctx.dispatcher.admit(customer_id)
    return Response(status=204)


def api_error(exc: control.ControlError) -> ApiError:
    if isinstance(exc, control.NotFoundError):
        return not_found(exc.message.split(" ")[0])
    return ApiError(_STATUS.get(exc.code, 409), exc.code, exc.message, **exc.context)
