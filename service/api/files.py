"""`/v1/files`: register uploads (one or a thousand) and read them back."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import select
from werkzeug.routing import BaseConverter

from service.api import deletes  # batch control
from service.api.bodies import file_body
from service.api.common import (
    blob_store,
    caller,
    json_response,
    responses,
    service,
    submission_rate_limited,
)
from service.api.errors import ApiError, not_found
from service.api.schemas import (
    CreateFile,
    CreateFilesBulk,
    FileList,
    FilePath,
    FileResource,
)
from service.db import transaction
from service.models import File
from service.uploads import refresh_uploads, register_files

tag = Tag(name="files", description="Register uploads; bytes go straight to the blob store.")


def make_files_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "files", __name__, url_prefix="/v1/files", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )

    @bp.post("", responses=responses(FileResource, 401, 413, 422, 429, 503))
    @submission_rate_limited
    def create_file(body: CreateFile) -> Response:
        """Register one upload; returns a presigned PUT for the bytes."""
        return json_response(_register([body])[0])

    @bp.post("/bulk", responses=responses(FileList, 401, 413, 422, 429, 503))
    @submission_rate_limited
    def create_files_bulk(body: CreateFilesBulk) -> Response:
        """Register up to 1,000 uploads in one request (one rate-limit hit)."""
        return json_response({"object": "list", "data": _register(body.files)})

    # Only file ids route here, so `/v1/files/bulk` is not also "GET a file named bulk" (its
    # 405 and OPTIONS answer Allow: POST, as the document says).
    @bp.get(
        "/<fileid:file_id>",
        responses=responses(FileResource, 401, 404),
        operation_id="files_get_file__file_id__get",
    )
    def get_file(path: FilePath) -> Response:
        """Read a file; while awaiting upload it re-checks the blob store."""
        ctx = service()
        with transaction(ctx.session_factory) as session:
            file = session.scalar(
                select(File).where(
                    File.id == path.file_id,
                    File.customer_id == caller().customer_id,
                    File.deleted_at.is_(None),  # batch control: deleted files are 404
                )
            )
            if file is None:
                raise not_found("file")
            if ctx.blob_store is not None and refresh_uploads(session, ctx.blob_store, [file]):
                session.refresh(file)
            return json_response(file_body(file))

    # batch control
    bp.delete("/<fileid:file_id>", responses=deletes.DELETE_FILE_RESPONSES)(deletes.delete_file)
    return bp


class FileIdConverter(BaseConverter):
    """``file_`` and the rest of one path segment (the app registers it as ``fileid``)."""

    regex = r"file_[^/]*"


def _register(requests: list[CreateFile]) -> list[dict]:
    ctx = service()
    store = blob_store()
    too_large = [i for i, r in enumerate(requests) if r.size_bytes > ctx.settings.max_file_bytes]
    if too_large:
        raise ApiError(
            413,
            "document_too_large",
            f"size_bytes exceeds the maximum file size of {ctx.settings.max_file_bytes} bytes",
            max_file_bytes=ctx.settings.max_file_bytes,
            indexes=too_large,
        )
    with transaction(ctx.session_factory) as session:
        registered = register_files(session, store, ctx.settings, caller().customer_id, requests)
        return [file_body(file, upload) for file, upload in registered]
