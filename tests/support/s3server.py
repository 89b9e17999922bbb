"""moto's S3 server on a loopback port, made strict about presigned URLs the way S3 is.

moto stores and serves objects faithfully but accepts any presigned URL: it never checks the
``X-Amz-Signature`` of a query-signed request, nor its expiry. Our upload contract depends on
exactly those checks (S3 refuses a body whose length differs from the signed
``Content-Length``), so the server here puts a small WSGI layer in front of moto that verifies
query-signed requests with an independent SigV4 implementation written from AWS's
documentation, answering 403 like S3 when the signature does not match or has expired.
Requests signed in the ``Authorization`` header (boto3 calls) pass through untouched.

Usage::

    server = start_moto_server()
    store = S3BlobStore("bucket", endpoint_url=server.endpoint_url, region=server.region)
    ...
    server.stop()
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str


class RequestRecorder:
    """WSGI middleware keeping (method, path, query) of every request, so a test can prove how
    many calls an operation made (e.g. one ListObjectsV2 per 1,000 keys, not one HEAD per key)."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = RecordedRequest(
            environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        )
        with self._lock:
            self._requests.append(request)
        return self._app(environ, start_response)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


@dataclass
class MotoServer:
    """A running server: point boto3 at ``endpoint_url``; ``stop()`` shuts it down."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    _recorder: RequestRecorder | None = field(default=None, repr=False)
    _server: BaseWSGIServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def recorded_requests(self) -> list[RecordedRequest]:
        """Every request the server received since start (or the last ``clear_recorded``)."""
        return self._recorder.snapshot() if self._recorder else []

    def clear_recorded(self) -> None:
        if self._recorder:
            self._recorder.clear()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_moto_server(
    *, strict_presigned_urls: bool = True, clock: Callable[[], float] = time.time
) -> MotoServer:
    """Start moto's S3 server on 127.0.0.1 on a free port, in a thread of this process.

    It is what ``moto.server.ThreadedMotoServer`` does, with three differences: the port is
    chosen by the kernel (no race for a "free" port), presigned URLs are verified, and every
    request is recorded (``MotoServer.recorded_requests``).

    Sets dummy AWS credentials in the environment when none are set, so boto3 in the test
    process signs with credentials this server knows, and never with real ones. With
    ``strict_presigned_urls`` (the default) presigned requests are verified as S3 would;
    ``clock`` (Unix seconds) decides when they expire, so tests can expire URLs without
    sleeping.
    """
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        for name, value in _DUMMY_CREDENTIALS.items():
            os.environ[name] = value
    access_key_id = os.environ["AWS_ACCESS_KEY_ID"]
    secret_access_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")

    # S3 alone: moto's all-services dispatcher scans its module tree on every request, which
    # costs about as much as the S3 work itself.
    app: WSGIApp = create_backend_app("s3")
    if strict_presigned_urls:
        app = PresignedUrlVerifier(app, {access_key_id: secret_access_key}, clock)
    recorder = RequestRecorder(app)
    # Port 0: the kernel picks a free port at bind time, so parallel runs never collide.
    server = make_server(
        "127.0.0.1", 0, recorder, threaded=True, request_handler=_QuietMotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    return MotoServer(
        endpoint_url=f"http://127.0.0.1:{server.server_port}",
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        _recorder=recorder,
        _server=server,
        _thread=thread,
    )


class _QuietMotoRequestHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one access-log line per request would bury a failing test's output


class PresignedUrlVerifier:
    """WSGI middleware: refuse query-signed (presigned) S3 requests that S3 would refuse.

    Implements "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)":
    the canonical request covers the method, the path, every query parameter except the
    signature, the signed headers with the values the client actually sent, and
    ``UNSIGNED-PAYLOAD``. An unknown access key, a mismatch, or a URL past
    ``X-Amz-Date + X-Amz-Expires`` is answered with 403 and S3's error codes.
    """

    def __init__(
        self,
        app: WSGIApp,
        secrets_by_access_key: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._secrets = secrets_by_access_key
        self._clock = clock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if "X-Amz-Signature=" not in environ.get("QUERY_STRING", ""):
            return self._app(environ, start_response)
        refusal = self._refusal(environ)
        if refusal is None:
            return self._app(environ, start_response)
        code, message = refusal
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        ).encode()
        start_response(
            "403 Forbidden",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _refusal(self, environ: dict[str, Any]) -> tuple[str, str] | None:
        params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        query = dict(params)
        try:
            access_key, date, region, service, terminator = query["X-Amz-Credential"].split("/")
            amz_date = query["X-Amz-Date"]
            expires_in = int(query["X-Amz-Expires"])
            signed_header_names = query["X-Amz-SignedHeaders"].split(";")
            signature = query["X-Amz-Signature"]
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError", "malformed presigned URL"
        secret = self._secrets.get(access_key)
        if secret is None:
            return "InvalidAccessKeyId", "unknown access key"
        if self._clock() > signed_at.timestamp() + expires_in:
            return "AccessDenied", "Request has expired"

        headers = _request_headers(environ)
        canonical_headers = ""
        for name in signed_header_names:
            if name not in headers:
                return "SignatureDoesNotMatch", f"signed header {name} missing from the request"
            canonical_headers += f"{name}:{' '.join(headers[name].split())}\n"
        canonical_query = "&".join(
            f"{_uri_encode(name)}={_uri_encode(value)}"
            for name, value in sorted(params)
            if name != "X-Amz-Signature"
        )
        raw_path = environ.get("REQUEST_URI") or environ.get("RAW_URI") or environ["PATH_INFO"]
        canonical_uri = _uri_encode(unquote(raw_path.split("?", 1)[0]), safe="/")
        canonical_request = "\n".join(
            [
                environ["REQUEST_METHOD"],
                canonical_uri,
                canonical_query,
                canonical_headers,
                ";".join(signed_header_names),
                "UNSIGNED-PAYLOAD",
            ]
        )
        scope = f"{date}/{region}/{service}/{terminator}"
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        signing_key = f"AWS4{secret}".encode()
        for part in (date, region, service, terminator):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided",
            )
        return None


def _uri_encode(value: str, safe: str = "") -> str:
    # SigV4's URI encoding: everything but unreserved characters (RFC 3986) is %XX-escaped.
    return quote(value, safe="-_.~" + safe)


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers with lower-case names, as the client sent them."""
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    # WSGI keeps these two outside the HTTP_ namespace.
    for environ_key, name in (
        ("CONTENT_LENGTH", "content-length"),
        ("CONTENT_TYPE", "content-type"),
    ):
        if environ.get(environ_key):
            headers[name] = environ[environ_key]
    return headers


if __name__ == "__main__":
    # A server in its own process (benchmarks): it then competes with the client for nothing
    # but the CPU, as a real S3 would. Prints the endpoint, serves until killed.
    import sys

    standalone = start_moto_server()
    print(standalone.endpoint_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standalone.stop()
        sys.exit(0)
