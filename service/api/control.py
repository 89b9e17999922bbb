"""Batch control endpoints (SPEC "Batch control"): retry a batch's failures, delete on demand.

``POST /v1/batches/{id}/retry``, ``DELETE /v1/batches/{id}``, ``DELETE /v1/files/{id}``; the
work is in ``service/control.py``. Retries share the submit's idempotency keys (one namespace
per customer: the request hash covers the path, so a key used for a submit and then for a retry
is a mismatch) and its rate limit.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from flask import Response
from flask_openapi3 import APIBlueprint

from service import control, lifecycle, metrics
from service.api import batches as batches_api
from service.api.common import caller, responses, service, submission_rate_limited
from service.api.errors import ApiError, not_found
from service.api.files import tag as files_tag
from service.api.schemas import (
    BatchPath,
    BatchResource,
    FilePath,
    IdempotencyHeader,
    RetryBatch,
)
from service.clock import utcnow
from service.db import transaction
from service.models import Customer

_STATUS = {"not_found": 404, "batch_not_terminal": 409, "nothing_to_retry": 409}


def make_control_blueprint() -> APIBlueprint:
    bp = APIBlueprint("control", __name__, url_prefix="/v1", abp_security=[{"ApiKey": []}])
    bp.post(
        "/batches/<batch_id>/retry",
        tags=[batches_api.tag],
        responses={201: BatchResource, **_errors(401, 402, 404, 409, 422, 429)},
    )(submission_rate_limited(retry_batch))
    bp.delete(
        "/batches/<batch_id>",
        tags=[batches_api.tag],
        responses={204: None, **_errors(401, 404, 409)},
    )(delete_batch)
    bp.delete("/files/<file_id>", tags=[files_tag], responses={204: None, **_errors(401, 404)})(
        delete_file
    )
    return bp


def _errors(*statuses: int) -> dict[str | int, Any]:
    every = responses(BatchResource, *statuses)
    every.pop(200)
    return every


def retry_batch(path: BatchPath, body: RetryBatch, header: IdempotencyHeader) -> Response:
    """A new batch of the parent's retryable failures (and cancelled items if asked)."""
    ctx = service()
    key = header.idempotency_key
    if key:
        request_hash = _retry_hash(path.batch_id, body)
        replay = batches_api._claim_idempotency_key(key, request_hash)
        if replay is not None:
            response = batches_api._batch_response(replay)
            response.status_code = 201
            return response
    try:
        batch_id = _retry(path.batch_id, body.include_cancelled, key)
    except BaseException:
        if key:
            batches_api._forget_idempotency_key(key)
        raise
    ctx.dispatcher.admit(caller().customer_id)
    response = batches_api._batch_response(batch_id)
    response.status_code = 201
    return response


def _retry(parent_id: str, include_cancelled: bool, key: str | None) -> str:
    ctx = service()
    customer_id = caller().customer_id
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        try:
            plan = control.plan_retry(
                session,
                ctx.blob_store,
                customer_id,
                parent_id,
                include_cancelled=include_cancelled,
            )
        except control.ControlError as exc:
            raise _api_error(exc) from exc
        customer = session.get(Customer, customer_id)
        assert customer is not None
        if lifecycle.quota_exhausted(customer):
            raise ApiError(402, "payment_required", "the page quota of this account is used up")
        batch = control.create_retry(
            session,
            plan,
            customer,
            now=now,
            retention=timedelta(hours=ctx.settings.retention_hours),
        )
        if key:
            batches_api._settle_idempotency_key(session, customer_id, key, batch.id)
        return batch.id


def delete_batch(path: BatchPath) -> Response:
    """Delete a terminal batch: its results now, then the batch and its items are 404."""
    ctx = service()
    with transaction(ctx.session_factory) as session:
        try:
            control.delete_batch(session, ctx.blob_store, caller().customer_id, path.batch_id)
        except control.ControlError as exc:
            raise _api_error(exc) from exc
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
            raise _api_error(exc) from exc
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


def _api_error(exc: control.ControlError) -> ApiError:
    if isinstance(exc, control.NotFoundError):
        return not_found(exc.message.split(" ")[0])
    return ApiError(_STATUS.get(exc.code, 409), exc.code, exc.message, **exc.context)


def _retry_hash(batch_id: str, body: RetryBatch) -> str:
    canonical = json.dumps(
        {"retry": batch_id, **body.model_dump(mode="json")}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
