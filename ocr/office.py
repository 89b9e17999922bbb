"""Office and web documents: a warm LibreOffice converter (document -> PDF).

:class:`OfficeConverter` owns one long-lived conversion server (``ocr/office_uno_server.py``,
run under the system Python that has LibreOffice's ``uno``), which owns one headless
``soffice.bin``. Both run in their own process group, inside an unshared network namespace when
the host allows it (``unshare -n``: only a loopback that is down), with a private profile that
disables macros and blocks links. Per document the engine side:

* writes the bytes to a private temp dir, sends one JSON request, and waits at most
  ``timeout_s`` for the answer; a late answer, a crash or a broken pipe kills the whole process
  group (server and soffice) and the next document starts a fresh one;
* restarts the server every ``max_documents`` conversions (LibreOffice grows over time);
* keeps the last conversion (keyed by the input's SHA-256), so ``probe`` then ``extract`` of the
  same bytes (what a worker does) converts once.

Nothing is created at import time. The caller owns converters: the sandbox child keeps one for
its life; :func:`shared_converter` is a lazily created per-process default (re-created after a
fork) for callers that do not pass one.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocr.errors import (
    CorruptDocumentError,
    EncryptedDocumentError,
    ExtractionError,
    ExtractionTimeoutError,
    ResourceLimitError,
)
from ocr.office_html import epub_to_html, prepare_html
from ocr.office_sniff import zip_expanded_bytes

log = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("office_uno_server.py")
PASSWORD_MESSAGE = "The document is password-protected; remove the password and resubmit."

#: sniffed MIME -> (LibreOffice import filter, application family, file suffix)
FILTERS: dict[str, tuple[str, str, str]] = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (
        "MS Word 2007 XML",
        "writer",
        ".docx",
    ),
    "application/msword": ("MS Word 97", "writer", ".doc"),
    "application/vnd.oasis.opendocument.text": ("writer8", "writer", ".odt"),
    "application/rtf": ("Rich Text Format", "writer", ".rtf"),
    "text/html": ("HTML (StarWriter)", "writer", ".html"),
    # EPUB is flattened to one HTML file first (ocr/epub.py): LibreOffice has no EPUB import
    "application/epub+zip": ("HTML (StarWriter)", "writer", ".html"),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (
        "Calc MS Excel 2007 XML",
        "calc",
        ".xlsx",
    ),
    "application/vnd.ms-excel.sheet.macroEnabled.12": ("Calc MS Excel 2007 XML", "calc", ".xlsm"),
    "application/vnd.ms-excel": ("MS Excel 97", "calc", ".xls"),
    "application/vnd.oasis.opendocument.spreadsheet": ("calc8", "calc", ".ods"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "Impress MS PowerPoint 2007 XML",
        "impress",
        ".pptx",
    ),
    "application/vnd.ms-powerpoint": ("MS PowerPoint 97", "impress", ".ppt"),
    "application/vnd.oasis.opendocument.presentation": ("impress8", "impress", ".odp"),
}


class ConverterUnavailableError(ExtractionError):
    """LibreOffice is not installed or does not start: not the document's fault."""

    code = "internal_error"
    transient = True
    default_message = "The document converter is not available on this worker."


@dataclass(frozen=True)
class Converted:
    pdf: bytes
    warnings: tuple[str, ...] = ()


@dataclass
class OfficeConverterSettings:
    soffice: str = "soffice"
    python: str = "/usr/bin/python3"
    #: per document (conversion only; the PDF path has its own budget)
    timeout_s: float = 120.0
    start_timeout_s: float = 60.0
    #: restart the server after this many conversions
    max_documents: int = 200
    #: run inside ``unshare -n`` when possible (root or user namespaces); "auto" | "on" | "off"
    isolate_network: str = "auto"
    #: spreadsheets: rows/columns of a sheet's used range that are rendered (a warning beyond)
    max_rows: int = 20_000
    max_cols: int = 256
    extra_env: dict[str, str] = field(default_factory=dict)


class OfficeConverter:
    """A warm LibreOffice behind a JSON-lines pipe. Thread-safe (one conversion at a time)."""

    def __init__(self, settings: OfficeConverterSettings | None = None) -> None:
        self.settings = settings or OfficeConverterSettings()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._done = 0
        self._cache: tuple[str, int, Converted] | None = None
        self._pid = os.getpid()
        self.starts = 0
        self.network_isolated: bool | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server now (otherwise the first document does)."""
        with self._lock:
            self._ensure_started()

    def close(self) -> None:
        with self._lock:
            self._kill()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> OfficeConverter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # forked: the process belongs to the parent
            self._proc = None
            self._workdir = None
            self._cache = None
            self._pid = os.getpid()
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        s = self.settings
        soffice = shutil.which(s.soffice)
        if soffice is None or not Path(s.python).exists():
            raise ConverterUnavailableError()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="pagelane-office-"))
        profile = self._workdir / f"profile-{self.starts}"
        shutil.rmtree(profile, ignore_errors=True)
        pipe = f"pagelane_{os.getpid()}_{secrets.token_hex(6)}"
        cmd = [s.python, "-I", str(SERVER_SCRIPT), soffice, str(profile), pipe]
        isolate = self._can_isolate()
        if isolate:
            cmd = ["unshare", "--net", "--", *cmd]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._workdir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self._workdir),
            "SAL_USE_VCLPLUGIN": "svp",
            # no proxy settings leak in; the namespace (or BlockUntrustedRefererLinks) does the rest
            **s.extra_env,
        }
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: one kill ends server and soffice
            close_fds=True,
        )
        self.starts += 1
        self._done = 0
        try:
            hello = self._read_reply(s.start_timeout_s)
        except ExtractionError:
            self._kill()
            raise ConverterUnavailableError("The document converter did not start.") from None
        if not hello.get("ok"):
            self._kill()
            log.error("office converter failed to start: %s", hello.get("detail"))
            raise ConverterUnavailableError("The document converter did not start.")
        self.network_isolated = isolate
        log.info(
            "office converter started in %.2f s (network isolated: %s)",
            time.monotonic() - t0,
            isolate,
        )

    def _can_isolate(self) -> bool:
        mode = self.settings.isolate_network
        if mode == "off":
            return False
        ok = (
            shutil.which("unshare") is not None
            and subprocess.run(
                ["unshare", "--net", "--", "true"], capture_output=True, timeout=10
            ).returncode
            == 0
        )
        if mode == "on" and not ok:
            raise ConverterUnavailableError("Network isolation for the converter is unavailable.")
        return ok

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._cache = None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    # -- protocol ------------------------------------------------------------------------------

    def _read_reply(self, timeout_s: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExtractionTimeoutError(
                    f"Converting the document took longer than {timeout_s:g} s."
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise CorruptDocumentError("The document converter stopped while converting.")
            buf += chunk
            if len(buf) > 1_000_000:
                raise CorruptDocumentError("The document converter answered nonsense.")
        reply = json.loads(buf)
        if not isinstance(reply, dict):
            raise CorruptDocumentError("The document converter answered nonsense.")
        return reply

    # -- conversion ----------------------------------------------------------------------------

    def convert(
        self, data: bytes, content_type: str, *, max_pages: int, timeout_s: float | None = None
    ) -> Converted:
        """``data`` (of sniffed type ``content_type``) rendered to PDF, at most ``max_pages`` + 1
        pages (one more, so the caller can tell the limit was exceeded)."""
        if content_type not in FILTERS:
            raise ValueError(f"not an office type: {content_type}")
        import_filter, family, suffix = FILTERS[content_type]
        key = hashlib.sha256(data).hexdigest() + content_type
        if content_type == "text/html":
            data = prepare_html(data)
        elif content_type == "application/epub+zip":
            data = epub_to_html(data)
        with self._lock:
            if self._cache is not None and self._cache[:2] == (key, max_pages):
                return self._cache[2]
            if self._done >= self.settings.max_documents:
                self._kill()
            self._ensure_started()
            assert self._workdir is not None and self._proc is not None
            job = self._workdir / f"job-{secrets.token_hex(8)}"
            job.mkdir()
            try:
                src, dst = job / f"input{suffix}", job / "output.pdf"
                src.write_bytes(data)
                request = {
                    "op": "convert",
                    "src": str(src),
                    "dst": str(dst),
                    "filter": import_filter,
                    "family": family,
                    "max_pages": max_pages,
                    "max_rows": self.settings.max_rows,
                    "max_cols": self.settings.max_cols,
                }
                limit = self.settings.timeout_s if timeout_s is None else timeout_s
                try:
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(json.dumps(request).encode() + b"\n")
                    self._proc.stdin.flush()
                    reply = self._read_reply(limit)
                except (OSError, ValueError) as exc:
                    self._kill()
                    raise CorruptDocumentError(
                        "The document could not be converted (the converter stopped)."
                    ) from exc
                except ExtractionError:
                    self._kill()  # stuck or crashed: the next document gets a fresh one
                    raise
                self._done += 1
                if not reply.get("ok"):
                    raise _reply_error(reply)
                try:
                    pdf = dst.read_bytes()
                except OSError as exc:
                    raise CorruptDocumentError(
                        "The document could not be converted to pages."
                    ) from exc
            finally:
                shutil.rmtree(job, ignore_errors=True)
            result = Converted(pdf, tuple(str(w) for w in reply.get("warnings") or ()))
            self._cache = (key, max_pages, result)
            return result


def _reply_error(reply: dict[str, Any]) -> ExtractionError:
    error, detail = reply.get("error"), reply.get("detail")
    log.info("office conversion failed: %s: %s", error, detail)
    if error == "password":
        return EncryptedDocumentError(PASSWORD_MESSAGE)
    if error == "load":
        return CorruptDocumentError("The document is damaged or not readable as its format.")
    return CorruptDocumentError("The document could not be converted to pages.")


_shared: OfficeConverter | None = None
_shared_lock = threading.Lock()


def shared_converter() -> OfficeConverter:
    """This process's default converter, created on first use (never at import); a forked
    child gets its own. Stopped at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._pid != os.getpid():
            _shared = OfficeConverter()
            atexit.register(_shared.close)
        return _shared


def render_to_pdf(
    data: bytes,
    content_type: str,
    *,
    encrypted: bool,
    max_pages: int,
    timeout_s: float,
    max_expanded_bytes: int,
    converter: OfficeConverter | None = None,
) -> Converted:
    """What the engine calls for kind "office": the document as PDF bytes (at most
    ``max_pages`` + 1 pages), or an ExtractionError. ``converter`` defaults to
    :func:`shared_converter`."""
    if encrypted:
        raise EncryptedDocumentError(PASSWORD_MESSAGE)
    expanded = zip_expanded_bytes(data)
    if expanded is not None and expanded > max_expanded_bytes:
        raise ResourceLimitError(
            f"The document's parts expand to {expanded:,} bytes; the engine allows"
            f" {max_expanded_bytes:,} (a ZIP bomb?)."
        )
    conv = converter if converter is not None else shared_converter()
    timeout = min(conv.settings.timeout_s, max(timeout_s, 1.0))
    return conv.convert(data, content_type, max_pages=max_pages, timeout_s=timeout)


def page_limit_error(max_pages: int) -> ExtractionError:
    from ocr.errors import PageLimitExceededError

    return PageLimitExceededError(
        f"The document has more than {max_pages} pages when rendered; the maximum is {max_pages}."
    )
