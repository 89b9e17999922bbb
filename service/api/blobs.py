"""The local blob store's signed URLs: ``PUT`` and ``GET /blobs/<key>`` served by the API.

Only the embedded mode (``PAGELANE_BLOB_STORE=local``) registers this blueprint; with S3 the
bytes never pass through the API. The signature in the query string is the only credential:
these routes must stay outside API-key auth, rate limits and request-body parsing, and they are
not part of the public OpenAPI document (hence a plain ``flask.Blueprint``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import ClientDisconnected

from service.storage import (
    UPLOAD_EXISTS_CODE,
    UPLOAD_EXISTS_STATUS,
    BlobExistsError,
    BlobLengthMismatchError,
    BlobStoreError,
    LocalBlobStore,
    UploadInterruptedError,
)

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def _invalid_signature(message: str) -> Response:
    return _error(403, "invalid_signature", message)


@dataclass(frozen=True)
class _SignedQuery:
    method: str
    expires: int
    length: int | None
    sig: str
    filename: str | None


def _parse_signed_query() -> _SignedQuery | None:
    """The signature fields of the query string, or None when they cannot be a signed URL."""
    args = request.args
    try:
        expires = int(args.get("expires", ""))
        raw_length = args.get("len", "")
        length = int(raw_length) if raw_length else None
    except ValueError:
        return None
    if length is not None and length < 0:
        return None
    return _SignedQuery(
        method=args.get("method", ""),
        expires=expires,
        length=length,
        sig=args.get("sig", ""),
        filename=args.get("filename"),
    )


def make_blobs_blueprint(store: LocalBlobStore) -> Blueprint:
    """Routes that honour the URLs ``store.presign_put`` / ``presign_get`` make.

    Contract: a request whose signature is missing, tampered with (key, method, expiry, length,
    content type or download name changed), expired, or used with another HTTP method gets 403
    ``invalid_signature``, before any body byte is read. An upload whose body length differs
    from the signed one gets 400 ``length_mismatch`` and stores nothing; a finished upload
    is published atomically and answers 200 with an empty body (as S3 does). Uploads are
    create-only: a PUT to a key that holds a blob gets 412 ``blob_exists`` and changes
    nothing. A download of a missing blob is 404 ``not_found``.
    """
    blueprint = Blueprint("blobs", __name__)

    @blueprint.after_request
    def allow_cross_origin(response: Response) -> Response:
        # Browsers (the console) PUT and GET these URLs from a page that may sit on another
        # origin than PAGELANE_PUBLIC_URL (localhost vs 127.0.0.1, a proxy's name). The signed
        # query string is the only credential and no cookie is ever read, so any origin may
        # use a URL it was given, exactly like an S3 presigned URL.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "Content-Length, X-Request-Id"
        return response

    @blueprint.route("/blobs/<path:key>", methods=["OPTIONS"])
    def preflight(key: str) -> Response:
        """CORS preflight of a PUT (its Content-Type makes browsers ask first)."""
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "PUT, GET"
        # The upload headers a presigned PUT carries (create-only uploads: If-None-Match).
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, If-None-Match"
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    @blueprint.put("/blobs/<path:key>")
    def receive_upload(key: str) -> Response | tuple[str, int]:
        signed = _parse_signed_query()
        if signed is None or signed.method != "PUT":
            return _invalid_signature("this URL was not issued for uploads (PUT)")
        content_type = request.headers.get("Content-Type")
        if not store.verify("PUT", key, signed.expires, signed.length, signed.sig, content_type):
            return _invalid_signature(
                "the upload URL is invalid, expired, or the request's Content-Type differs "
                "from the signed one; register the file again for a fresh URL"
            )
        declared = request.content_length
        if signed.length is not None:
            if declared is not None and declared != signed.length:
                return _length_mismatch(signed.length, declared)
            # The app may cap request bodies for other routes; this one's cap follows the signed
            # length, which may be far larger (150 MB inputs). One byte more, because the store
            # reads one past the signed length to tell an overlong chunked body from an exact
            # one; werkzeug would answer 413 to that probe instead of letting us say 400.
            request.max_content_length = signed.length + 1
        try:
            stored = store.receive_upload(key, request.stream, expected_length=signed.length)
        except BlobLengthMismatchError as exc:
            return _length_mismatch(exc.expected, exc.received)
        except BlobExistsError:
            # Create-only, as S3 with If-None-Match: * (412): a replayed URL cannot swap the
            # input after its sha256 was recorded.
            return _error(
                UPLOAD_EXISTS_STATUS,
                UPLOAD_EXISTS_CODE,
                "this file was already uploaded; uploads cannot be replaced "
                "(register a new file for other bytes)",
            )
        except (ClientDisconnected, UploadInterruptedError):
            # Nobody is left to read this answer; the point is that nothing was stored.
            log.info("upload of %s abandoned by the client; nothing stored", key)
            return _error(400, "upload_incomplete", "the request body ended early")
        except BlobStoreError:
            log.exception("local blob store failed to store %s", key)
            return _error(503, "storage_unavailable", "could not store the upload; retry")
        # DEBUG: the access log line already says this PUT succeeded; a second INFO line an
        # upload was a tenth of the upload's CPU.
        log.debug("stored upload %s (%d bytes)", key, stored)
        return "", 200

    @blueprint.get("/blobs/<path:key>")
    def serve_download(key: str) -> Response:
        signed = _parse_signed_query()
        if signed is None or signed.method != "GET":
            return _invalid_signature("this URL was not issued for downloads (GET)")
        if not store.verify(
            "GET", key, signed.expires, signed.length, signed.sig, filename=signed.filename
        ):
            return _invalid_signature("the download URL is invalid or expired")
        try:
            # Opened by send_file itself: checking existence first would race with deletes.
            return send_file(
                store.blob_path(key),
                as_attachment=signed.filename is not None,
                download_name=signed.filename,
                max_age=0,
            )
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return _error(404, "not_found", "no blob at this URL (it may have expired)")

    return blueprint


def _length_mismatch(expected: int, received: int) -> Response:
    return _error(
        400,
        "length_mismatch",
        f"the upload URL was signed for {expected} bytes but the body has {received}",
    )
