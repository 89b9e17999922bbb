"""`/v1/batches`: submit, poll with a cursor, list, cancel, fetch results."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta

from flask import Response, redirect
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

import ocr
from service import lifecycle, metrics
from service.api import deletes  # batch control
from service.api.bodies import batch_body
from service.api.common import (
    caller,
    json_response,
    responses,
    service,
    submission_rate_limited,
)
from service.api.errors import ApiError, not_found, validation_error
from service.api.schemas import (
    BatchList,
    BatchPath,
    BatchResource,
    CreateBatch,
    ExtractionResult,
    IdempotencyHeader,
    ItemPath,
    ListBatchesQuery,
    PollQuery,
    ResultQuery,
)
from service.clock import utcnow
from service.db import transaction
from service.models import (
    Batch,
    Customer,
    FileStatus,
    IdempotencyKey,
    Item,
    ItemStatus,
)
from service.uploads import load_file_states, refresh_uploads

tag = Tag(name="batches", description="Submit, poll, cancel and read results.")
# How long a duplicate request waits for the first one with its Idempotency-Key to finish
# before answering 409 idempotency_key_in_use.
IDEMPOTENCY_WAIT_SECONDS = 5.0
ABANDONED_CLAIM = timedelta(minutes=2)


def make_batches_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "batches", __name__, url_prefix="/v1/batches", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )
    bp.post("", responses=responses(BatchResource, 401, 402, 404, 409, 422, 429))(
        submission_rate_limited(create_batch)
    )
    bp.get("", responses=responses(BatchList, 401, 422))(list_batches)
    bp.get("/<batch_id>", responses=responses(BatchResource, 401, 404, 422))(get_batch)
    bp.post("/<batch_id>/cancel", responses=responses(BatchResource, 401, 404))(cancel_batch)
    bp.delete("/<batch_id>", responses=deletes.DELETE_BATCH_RESPONSES)(deletes.delete_batch)
    bp.get(
        "/<batch_id>/items/<item_id>/result",
        responses=responses(ExtractionResult, 401, 404, 409, 410),
    )(get_result)
    return bp


def create_batch(body: CreateBatch, header: IdempotencyHeader) -> Response:
    """Submit up to 10,000 uploaded files as one batch."""
    ctx = service()
    if len(body.file_ids) > ctx.settings.max_files_per_batch:
        raise validation_error(
            ["body", "file_ids"],
            f"at most {ctx.settings.max_files_per_batch} file ids per batch",
            "too_long",
        )
    _check_languages(body.options.languages)
    key = header.idempotency_key
    if key:
        replay = _claim_idempotency_key(key, _request_hash(body))
        if replay is not None:
            return _batch_response(replay)
    try:
        batch_id = _submit(body, key)
    except BaseException:
        if key:
            _forget_idempotency_key(key)
        raise
    ctx.dispatcher.admit(caller().customer_id)
    return _batch_response(batch_id)


def list_batches(query: ListBatchesQuery) -> Response:
    """The caller's batches, newest first."""
    ctx = service()
    statement = select(Batch).where(Batch.customer_id == caller().customer_id)
    if query.status:
        statement = statement.where(Batch.status == query.status)
    if query.cursor:
        try:
            created_at, after_id = lifecycle.decode_list_cursor(query.cursor)
        except lifecycle.InvalidCursorError as exc:
            raise ApiError(422, "invalid_cursor", str(exc)) from exc
        statement = statement.where(
            (Batch.created_at < created_at)
            | ((Batch.created_at == created_at) & (Batch.id < after_id))
        )
    statement = statement.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(query.limit + 1)
    with ctx.session_factory() as session:
        rows = list(session.scalars(statement))
    page, more = rows[: query.limit], len(rows) > query.limit
    next_cursor = lifecycle.list_cursor(page[-1].created_at, page[-1].id) if more else None
    return json_response(
        {"object": "list", "data": [batch_body(b) for b in page], "next_cursor": next_cursor}
    )


def get_batch(path: BatchPath, query: PollQuery) -> Response:
    """The batch and the items that changed after `cursor`, oldest change first."""
    try:
        after = lifecycle.decode_item_cursor(query.cursor)
    except lifecycle.InvalidCursorError as exc:
        raise ApiError(422, "invalid_cursor", str(exc)) from exc
    return _batch_response(path.batch_id, after=after, limit=query.limit, cursor=query.cursor)


def cancel_batch(path: BatchPath) -> Response:
    """Cancel every pending item; running items finish on their own."""
    ctx = service()
    _owned_batch_id(path.batch_id)
    with transaction(ctx.session_factory) as session:
        admitted = list(
            session.scalars(
                select(Item.id).where(
                    Item.batch_id == path.batch_id,
                    Item.status == ItemStatus.PENDING,
                    Item.admitted_at.is_not(None),
                )
            )
        )
        batch, cancelled = lifecycle.cancel_batch(session, path.batch_id)
        body = batch_body(batch)
    metrics.item_finished("cancelled", "", cancelled)
    # Cancelled items that held a slot give it back; their queued messages find nothing
    # claimable and do nothing.
    ctx.dispatcher.semaphore.release(batch.customer_id, admitted)
    return json_response(body)


def get_result(path: ItemPath, query: ResultQuery) -> BaseResponse:
    """302 to a short-lived signed URL of the result JSON (`?inline=true`: the JSON)."""
    ctx = service()
    with ctx.engine.connect() as connection:
        item = connection.execute(
            _RESULT_OF_ITEM,
            {
                "item_id": path.item_id,
                "batch_id": path.batch_id,
                "customer_id": caller().customer_id,
            },
        ).first()
    if item is None:
        raise not_found("item")
    if item.status != ItemStatus.SUCCEEDED or item.result_key is None:
        raise ApiError(409, "result_not_ready", f"item is {item.status}", status=item.status)
    expired = item.result_deleted_at is not None or (
        item.result_expires_at is not None and item.result_expires_at <= utcnow()
    )
    if expired:
        raise ApiError(410, "result_expired", "the result was deleted after retention")
    store = ctx.blob_store
    assert store is not None  # an item only succeeds by writing its result there
    if query.inline:
        from service.storage import BlobNotFoundError

        try:
            data = store.get(item.result_key)
        except BlobNotFoundError as exc:
            raise ApiError(410, "result_expired", "the result is no longer stored") from exc
        return Response(data, status=200, mimetype="application/json")
    url = store.presign_get(item.result_key, expires_in=ctx.settings.result_url_ttl_seconds)
    return redirect(url, code=302)


# Clients fetch one result per item, so this runs as often as everything else together: built
# once, and only the columns the answer needs (no ORM object to load).
_RESULT_OF_ITEM = select(
    Item.status, Item.result_key, Item.result_deleted_at, Item.result_expires_at
).where(
    Item.id == bindparam("item_id"),
    Item.batch_id == bindparam("batch_id"),
    Item.customer_id == bindparam("customer_id"),
)


# --- submit ------------------------------------------------------------------------------------


def _submit(body: CreateBatch, idempotency_key: str | None) -> str:
    ctx = service()
    customer_id = caller().customer_id
    now = utcnow()
    with transaction(ctx.session_factory) as session:
        files_by_id = load_file_states(session, customer_id, body.file_ids)
        missing = [i for i in body.file_ids if i not in files_by_id]
        if missing:
            raise _file_error(404, "file_not_found", "unknown or expired file ids", missing)
        customer = session.get(Customer, customer_id)
        assert customer is not None
        if lifecycle.quota_exhausted(customer):
            raise ApiError(402, "payment_required", "the page quota of this account is used up")
        status = {file_id: state.status for file_id, state in files_by_id.items()}
        if ctx.blob_store is not None:
            status.update(refresh_uploads(session, ctx.blob_store, files_by_id.values()))
        expired = [i for i in body.file_ids if status[i] == FileStatus.EXPIRED]
        if expired:
            raise _file_error(404, "file_not_found", "unknown or expired file ids", expired)
        waiting = [i for i in body.file_ids if status[i] != FileStatus.UPLOADED]
        if waiting:
            raise _file_error(409, "file_not_uploaded", "no bytes uploaded yet", waiting)
        batch = lifecycle.create_batch(
            session,
            customer=customer,
            file_ids=body.file_ids,
            options=body.options.model_dump(),
            metadata=body.metadata,
            engine=body.engine,
            now=now,
            retention=timedelta(hours=ctx.settings.retention_hours),
        )
        if idempotency_key:
            _settle_idempotency_key(session, customer_id, idempotency_key, batch.id)
        return batch.id


def _settle_idempotency_key(session: Session, customer_id: str, key: str, batch_id: str) -> None:
    # Settled in the batch's own transaction: a crash leaves either both or neither.
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.customer_id == customer_id, IdempotencyKey.key == key)
        .values(batch_id=batch_id)
    )


def _file_error(status: int, code: str, message: str, file_ids: list[str]) -> ApiError:
    # Echo at most 1,000 ids: enough to act on, without a multi-megabyte error body.
    return ApiError(status, code, f"{message} ({len(file_ids)})", file_ids=file_ids[:1000])


def _check_languages(languages: list[str]) -> None:
    try:
        ocr.validate_languages(languages)
    except ocr.errors.ExtractionError as exc:
        raise validation_error(["body", "options", "languages"], exc.message, "language") from exc


def _batch_response(
    batch_id: str, *, after: int = 0, limit: int = 100, cursor: str | None = None
) -> Response:
    ctx = service()
    with ctx.session_factory() as session:
        batch = session.scalar(
            select(Batch).where(Batch.id == batch_id, Batch.customer_id == caller().customer_id)
        )
        if batch is None:
            raise not_found("batch")
        items = lifecycle.items_page(session, batch_id, after, limit)
    # An empty page hands back the cursor it was given, so a client can poll with it forever.
    next_cursor = (
        lifecycle.item_cursor(items[-1].change_seq)
        if items
        else (cursor or lifecycle.item_cursor(after))
    )
    return json_response(batch_body(batch, items, next_cursor))


def _owned_batch_id(batch_id: str) -> None:
    with service().session_factory() as session:
        found = session.scalar(
            select(Batch.id).where(Batch.id == batch_id, Batch.customer_id == caller().customer_id)
        )
    if found is None:
        raise not_found("batch")


# --- idempotency (Stripe's behaviour; RELIABILITY "Idempotency keys") ---------------------------


def _request_hash(body: CreateBatch) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _claim_idempotency_key(key: str, request_hash: str) -> str | None:
    """Claim ``key`` for this request, or return the batch id an earlier request created.

    The claim is a committed row with no batch yet; a concurrent duplicate finds it and waits
    briefly for the winner, then answers 409. Only one insert can win the primary key.
    """
    ctx = service()
    customer_id = caller().customer_id
    window = timedelta(hours=ctx.settings.idempotency_hours)
    deadline = time.monotonic() + IDEMPOTENCY_WAIT_SECONDS
    while True:
        try:
            with transaction(ctx.session_factory) as session:
                existing = session.get(IdempotencyKey, (customer_id, key))
                now = utcnow()
                if existing is not None and (
                    existing.created_at <= now - window  # older than the window: free again
                    # A claim whose request died before settling it frees itself in time.
                    or (existing.batch_id is None and existing.created_at <= now - ABANDONED_CLAIM)
                ):
                    session.delete(existing)
                    session.flush()
                    existing = None
                if existing is None:
                    session.add(
                        IdempotencyKey(
                            customer_id=customer_id,
                            key=key,
                            request_hash=request_hash,
                            batch_id=None,
                            created_at=utcnow(),
                        )
                    )
                    return None
                if existing.request_hash != request_hash:
                    raise ApiError(
                        422,
                        "idempotency_key_mismatch",
                        "this Idempotency-Key was used with a different request body",
                    )
                if existing.batch_id is not None:
                    return existing.batch_id
        except IntegrityError:
            pass  # a concurrent request inserted the claim first: look again
        if time.monotonic() >= deadline:
            raise ApiError(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.05)


def _forget_idempotency_key(key: str) -> None:
    # A rejected submission (404/409/402) creates nothing; the client may fix the cause and
    # retry with the same key.
    with transaction(service().session_factory) as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.customer_id == caller().customer_id,
                IdempotencyKey.key == key,
                IdempotencyKey.batch_id.is_(None),
            )
        )
