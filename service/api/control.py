"""Batch control (SPEC "Batch control"): ``POST /v1/batches/{id}/retry``; the work is in
``service/control.py`` (the deletes are in ``service/api/deletes.py``). Retries share the
submit's idempotency keys (one namespace per customer: the request hash covers the path, so a
key used for a submit and then for a retry is a mismatch) and its rate limit.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from flask import Response
from flask_openapi3 import APIBlueprint

from service import control, lifecycle
from service.api import batches as batches_api
from service.api.common import caller, service, submission_rate_limited
from service.api.deletes import api_error as _api_error
from service.api.deletes import errors
from service.api.errors import ApiError
from service.api.schemas import (
    BatchPath,
    BatchResource,
    IdempotencyHeader,
    RetryBatch,
)
from service.clock import utcnow
from service.db import transaction
from service.models import Customer


def make_control_blueprint() -> APIBlueprint:
    bp = APIBlueprint("control", __name__, url_prefix="/v1", abp_security=[{"ApiKey": []}])
    bp.post(
        "/batches/<batch_id>/retry",
        tags=[batches_api.tag],
        responses={201: BatchResource, **errors(401, 402, 404, 409, 422, 429)},
    )(submission_rate_limited(retry_batch))
    return bp


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


def _retry_hash(batch_id: str, body: RetryBatch) -> str:
    canonical = json.dumps(
        {"retry": batch_id, **body.model_dump(mode="json")}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
