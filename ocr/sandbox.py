"""Every extraction in a capped, warm, reusable child process.

A :class:`Sandbox` owns a small pool of long-lived child processes. Each child imports the engine
once, then sets a hard address-space limit on itself and serves jobs one at a time: the caller
hands it the *path* of an input it already wrote to disk, the child reads it, runs
:func:`ocr.extract`, :func:`ocr.probe` or :func:`ocr.quote_probe` (a quote chunk's small
documents together, :meth:`Sandbox.quote_many`), and sends back progress and the result. Whatever a
document does to the child (a Flate bomb pdfium inflates, an image that needs gigabytes, a
native abort, an endless loop), the caller gets an :class:`~ocr.errors.ExtractionError` and its
own process, threads and other jobs are untouched; the next job gets a fresh child.

Process model: exec, not fork
    Children are started with :class:`subprocess.Popen` running ``python -c`` (posix_spawn or
    vfork + exec under the hood). A Celery pool child has a lease-keeper thread and the API has
    request threads: ``fork()`` from such a process copies locks some other thread may hold at
    that instant (logging's handler locks, ``PDFIUM_LOCK``, SQLAlchemy's pool, malloc's arenas)
    into a child that can then deadlock on its first log line. multiprocessing's "forkserver"
    avoids that too, but is a process-global singleton (one server per pool child, with its
    preload list shared with every other multiprocessing user in the process), adds a second idle
    process per pool child plus a resource tracker, and ships jobs and results as pickles. Its
    one advantage, a cheaper start, does not matter here because children are reused: a start is
    paid once per pool child and again only after a child was killed or retired (hostile input),
    and it runs in the background while the caller does other work (see :meth:`Sandbox.start`).
    Plain ``fork()`` per item is out for the lock reason above.

Limits
    Memory: the child measures its own virtual size after importing and warming the engine
    (~80 MB) and sets ``RLIMIT_AS`` (soft = hard, so it cannot be raised again) to that baseline
    plus ``SandboxLimits.memory_mb``: the budget is what a *document* may use, independent of the
    interpreter's footprint. Rlimits are inherited across exec, so the ``tesseract`` process that
    pytesseract starts has the same cap (its own, not shared: OCR can use the budget once in
    tesseract and once in the child). ``RLIMIT_DATA`` (private writable mappings only) was
    considered: it is more lenient with code that reserves address space it never touches, but
    every allocation it counts also counts in ``RLIMIT_AS``, the child is single-threaded
    (no 64 MB malloc arena per thread) and tesseract runs with ``OMP_THREAD_LIMIT=1``, so the
    address space is not inflated by reservations and ``RLIMIT_AS`` is the complete, stricter
    bound. A cgroup (``memory.max``) would bound RSS exactly but needs delegation this process
    cannot assume. When the limit is hit, Python raises ``MemoryError`` and pdfium, Pillow's C
    code or tesseract abort (SIGABRT): both become :class:`~ocr.errors.ResourceLimitError`, "The
    document needs more than N MB to process.", as does a child killed by any other signal
    (the kernel's or a container's OOM killer sends SIGKILL).

    Time: the parent waits for each message with the job's remaining wall-clock time; when it
    runs out the parent SIGKILLs the child's whole process group (the child runs in its own
    session, so a tesseract grandchild dies with it) and raises
    :class:`~ocr.errors.ExtractionTimeoutError`. The engine's own ``document_timeout_s`` still
    applies inside the child; by default the sandbox's deadline is that plus a grace, so the
    engine's clean timeout normally fires first and the kill is the backstop.

IPC
    Two pipes per child (``multiprocessing.connection.Connection`` framing over raw fds, not the
    child's stdin/stdout, which native libraries may write to). Messages are JSON both ways, never
    pickle: a child that a malicious document took over (a memory-corruption bug in a parser) must
    not be able to run code in the parent, so the parent only ever decodes JSON, rebuilds errors
    from an allow-list of :mod:`ocr.errors` classes, and caps the size of what it reads (the
    child also gets a scrubbed environment: no credentials). The result comes back through the
    pipe: for a one-page result (2 KB of JSON) that costs 0.15 ms against 0.39 ms for writing,
    reading and deleting a file; for a 5.5 MB result both are ~0.4 s, all of it JSON encoding
    (bench/sandbox.py). Inputs travel as a path the caller wrote, or, from
    :meth:`Sandbox.extract_bytes` up to 1 MiB, down the pipe (saves ~0.3 ms of temp file).
    Progress arrives as ``(pages_done, page_count)`` messages, at most one per 100 ms (a
    message per page would cost a short document two more process wake-ups); the parent calls
    ``on_page`` for every page in order, the last ones when the result arrives. Log records of
    the engine come back as messages too and are re-emitted by the parent's ``logging`` under
    the same logger names, so they carry the caller's context (item id) and formatting.

Reuse and replacement
    A child serves jobs until it dies, is killed (timeout, an exception from ``on_page``, any
    ``BaseException`` in the waiting parent, e.g. Celery's soft time limit), hits a memory error,
    or ends a job with more than ``SandboxLimits.recycle_rss_mb`` resident (glibc rarely returns a
    big peak to the system; an idle child would otherwise hold it). A killed child is replaced at
    once, in the background; a retired one on the next job.

The module imports nothing outside the ``ocr`` package and the standard library: the worker
(one :class:`Sandbox` of size 1 per pool child) and the API (one shared :class:`Sandbox` of size
2+, thread-safe) use it alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from ocr import errors as engine_errors
from ocr.config import EngineConfig
from ocr.errors import ExtractionError, ExtractionTimeoutError, ResourceLimitError
from ocr.pipeline import Probe

log = logging.getLogger(__name__)

OnPage = Callable[[int, int], None]

#: a child exits with this code when Python ran out of memory and it could not report it
_EXIT_MEMORY = 86
_MB = 1024 * 1024
#: extract_bytes/probe_bytes send inputs up to this size down the pipe, larger ones via a file
INLINE_MAX_BYTES = 1024 * 1024
#: the child reports progress at most this often (on_page still sees every page, in order)
PROGRESS_INTERVAL_S = 0.1


class SandboxCrashError(RuntimeError):
    """The child failed in a way no document explains (a bug, a failed start, a broken pipe).

    The caller maps it to ``internal_error``; the child's traceback went to the log, the message
    is not for clients."""


class SandboxClosedError(RuntimeError):
    """The :class:`Sandbox` was closed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-child limits. Not engine settings: the engine runs the same with or without them."""

    #: memory a document may use on top of the child's own baseline (~80 MB virtual). 2048 MB
    #: fits the largest input the engine's own limits admit (an RGBA image at
    #: ``max_image_pixels``: ~1.4 GB during conversion to gray) with room to spare, and is 4.7x
    #: the corpus's largest measured need (435 MB, a 9000 px scan; bench/sandbox.py --memory).
    #: A 2-core worker running 2 pool children can peak at 2 x (budget + ~80 MB), plus as much
    #: again in tesseract processes at worst: size the machine or lower it accordingly.
    memory_mb: int = 2048
    #: wall clock per job; None = the config's ``document_timeout_s`` + ``grace_s``.
    timeout_s: float | None = None
    grace_s: float = 10.0
    #: a child still holding more than this (RSS) after a job is replaced before the next one.
    recycle_rss_mb: int = 512
    #: how long a starting child may take to import the engine and report ready.
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.memory_mb < 64:
            raise ValueError("memory_mb must be >= 64")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.grace_s < 0 or self.recycle_rss_mb <= 0 or self.start_timeout_s <= 0:
            raise ValueError("grace_s must be >= 0, recycle_rss_mb and start_timeout_s > 0")


class Sandbox:
    """A pool of ``size`` warm, capped extraction children. Thread-safe; close it when done.

    ``extract``/``probe`` take a free child (waiting for one if all are busy), run the job there
    and give the child back. Children start lazily on first use, or at :meth:`start`.
    """

    def __init__(self, size: int = 1, limits: SandboxLimits | None = None) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.limits = limits or SandboxLimits()
        self.size = size
        self._idle: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a slot whose child is not started yet
        self._lock = threading.Lock()
        self._closed = False
        self._busy: set[_Child] = set()
        self._retired: list[subprocess.Popen[bytes]] = []

    # -- public API --------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child now (without waiting for them to be ready): a worker calls this
        when its pool child starts, so the first item does not pay the interpreter start."""
        slots = [self._checkout() for _ in range(self.size)]
        try:
            for i, child in enumerate(slots):
                if child is None or not child.alive():
                    slots[i] = self._spawn()
        finally:
            for child in slots:
                self._checkin(child)

    def extract(
        self,
        path: str | os.PathLike[str],
        options: Mapping[str, Any] | None = None,
        *,
        filename: str | None = None,
        file_id: str | None = None,
        config: EngineConfig | None = None,
        on_page: OnPage | None = None,
        timeout_s: float | None = None,
        pages: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """:func:`ocr.extract` of the file at ``path`` (only ``pages``, a page slice, if given),
        in a child. Same result, same errors,
        plus: over the memory budget -> ResourceLimitError ("needs more than N MB"), over the
        wall clock -> ExtractionTimeoutError, a child failure no document explains ->
        :class:`SandboxCrashError`. Whatever ``on_page`` raises propagates unchanged (the child
        is killed first)."""
        config = config or EngineConfig()
        job: dict[str, Any] = {
            "op": "extract",
            "path": os.fspath(path),
            "options": dict(options) if options is not None else None,
            "filename": filename,
            "file_id": file_id,
        }
        if pages is not None:
            job["pages"] = [int(pages[0]), int(pages[1])]
        reply = self._run(job, config, on_page, timeout_s)
        result: dict[str, Any] = reply["result"]
        return result

    def probe(
        self,
        path: str | os.PathLike[str],
        *,
        config: EngineConfig | None = None,
        timeout_s: float | None = None,
    ) -> Probe:
        """:func:`ocr.probe` of the file at ``path``, in a child; returns an ``ocr.Probe``."""
        config = config or EngineConfig()
        reply = self._run({"op": "probe", "path": os.fspath(path)}, config, None, timeout_s)
        kind, content_type, page_count = reply["result"]
        return Probe(str(kind), str(content_type), int(page_count))

    def extract_bytes(
        self,
        data: bytes,
        options: Mapping[str, Any] | None = None,
        *,
        filename: str | None = None,
        file_id: str | None = None,
        config: EngineConfig | None = None,
        on_page: OnPage | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """:meth:`extract` of bytes the caller holds anyway. Up to ``INLINE_MAX_BYTES`` they
        go down the pipe (cheaper than a file for a short document); larger ones through a
        private temporary file."""
        if len(data) > INLINE_MAX_BYTES:
            with input_file(data) as path:
                return self.extract(
                    path,
                    options,
                    filename=filename,
                    file_id=file_id,
                    config=config,
                    on_page=on_page,
                    timeout_s=timeout_s,
                )
        job = {
            "op": "extract",
            "options": dict(options) if options is not None else None,
            "filename": filename,
            "file_id": file_id,
        }
        reply = self._run(job, config or EngineConfig(), on_page, timeout_s, bytes(data))
        result: dict[str, Any] = reply["result"]
        return result

    def probe_bytes(
        self, data: bytes, *, config: EngineConfig | None = None, timeout_s: float | None = None
    ) -> Probe:
        """:meth:`probe` of bytes the caller holds (inline or through a file, as above)."""
        if len(data) > INLINE_MAX_BYTES:
            with input_file(data) as path:
                return self.probe(path, config=config, timeout_s=timeout_s)
        reply = self._run({"op": "probe"}, config or EngineConfig(), None, timeout_s, bytes(data))
        kind, content_type, page_count = reply["result"]
        return Probe(str(kind), str(content_type), int(page_count))

    def quote_bytes(
        self,
        data: bytes,
        options: Mapping[str, Any] | None = None,
        *,
        config: EngineConfig | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, int]:
        """:func:`ocr.quote_probe` of ``data`` in a child: ``(page_count, ocr_pages)``. A quote
        opens untrusted documents too (pdfium parses their structure), so it gets the same
        memory and time caps as an extraction."""
        job: dict[str, Any] = {
            "op": "quote",
            "options": dict(options) if options is not None else None,
        }
        config = config or EngineConfig()
        if len(data) > INLINE_MAX_BYTES:
            with input_file(data) as path:
                reply = self._run({**job, "path": path}, config, None, timeout_s)
        else:
            reply = self._run(job, config, None, timeout_s, bytes(data))
        pages, ocr_pages = reply["result"]
        return int(pages), int(ocr_pages)

    def quote_many(
        self,
        documents: Sequence[bytes],
        options: Mapping[str, Any] | None = None,
        *,
        config: EngineConfig | None = None,
    ) -> list[tuple[int, int] | ExtractionError | SandboxCrashError]:
        """:meth:`quote_bytes` of each document, in order: its answer, or its engine error (a
        crash of the engine on it: ``SandboxCrashError``).

        Small documents go to the child together, up to ``INLINE_MAX_BYTES`` a job (one round
        trip for a quote chunk's one-page PDFs instead of one each). A job that fails as a
        whole (the child ran out of memory or time, or crashed) is redone one document at a
        time, so that only the document that caused it gets the error."""
        config = config or EngineConfig()
        answers: list[tuple[int, int] | ExtractionError | SandboxCrashError] = []
        group: list[bytes] = []

        def quote_one(data: bytes) -> tuple[int, int] | ExtractionError | SandboxCrashError:
            try:
                return self.quote_bytes(data, options, config=config)
            except (ExtractionError, SandboxCrashError) as exc:
                return exc

        def flush() -> None:
            if not group:
                return
            job = {"op": "quote_many", "options": options, "sizes": [len(d) for d in group]}
            try:
                reply = self._run(dict(job), config, None, None, b"".join(group))
            except (ExtractionError, SandboxCrashError):
                answers.extend(quote_one(data) for data in group)
            else:
                answers.extend(
                    (int(found[0]), int(found[1]))
                    if isinstance(found, list)
                    else cast(ExtractionError, _rebuild_error(found, self.limits.memory_mb))
                    for found in reply["result"]
                )
            group.clear()

        for data in documents:
            if len(data) > INLINE_MAX_BYTES:
                flush()
                answers.append(quote_one(data))
                continue
            if sum(map(len, group)) + len(data) > INLINE_MAX_BYTES:
                flush()
            group.append(data)
        flush()
        return answers

    def pids(self) -> list[int]:
        """Process ids of the live children (for tests and diagnostics)."""
        with self._lock:
            children = list(self._busy) + [c for c in list(self._idle.queue) if c is not None]
        return [c.proc.pid for c in children if c.alive()]

    def close(self) -> None:
        """Stop every child (idle ones now, busy ones when their job ends). Idempotent."""
        with self._lock:
            self._closed = True
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                break
            if child is not None:
                self._retire(child, kill=False)
        self._reap(wait=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _checkout(self) -> _Child | None:
        with self._lock:
            if self._closed:
                raise SandboxClosedError("the sandbox is closed")
        child = self._idle.get()
        with self._lock:
            if self._closed:
                self._idle.put(child)
                raise SandboxClosedError("the sandbox is closed")
            if child is not None:
                self._busy.add(child)
        return child

    def _checkin(self, child: _Child | None) -> None:
        with self._lock:
            closed = self._closed
            if child is not None:
                self._busy.discard(child)
        if closed and child is not None:
            self._retire(child, kill=False)
            child = None
        self._idle.put(child)
        self._reap(wait=False)

    def _spawn(self) -> _Child:
        child = _Child.spawn(self.limits)
        with self._lock:
            self._busy.add(child)
        return child

    def _retire(self, child: _Child, *, kill: bool) -> None:
        with self._lock:
            self._busy.discard(child)
            self._retired.append(child.proc)
        if kill:
            child.kill()
        else:
            child.stop()

    def _reap(self, *, wait: bool) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        keep = []
        for proc in retired:
            if wait:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _killpg(proc)
                    proc.wait()
            elif proc.poll() is None:
                keep.append(proc)
        if keep:
            with self._lock:
                self._retired.extend(keep)

    def _run(
        self,
        job: dict[str, Any],
        config: EngineConfig,
        on_page: OnPage | None,
        timeout_s: float | None,
        inline: bytes | None = None,
    ) -> dict[str, Any]:
        limits = self.limits
        if timeout_s is None:
            timeout_s = limits.timeout_s
        if timeout_s is None:
            timeout_s = config.document_timeout_s + limits.grace_s
        child = self._checkout()
        try:
            if child is None or not child.alive():
                if child is not None:
                    self._retire(child, kill=True)
                child = self._spawn()
            try:
                child.wait_ready(limits.start_timeout_s)
            except _ChildGone as gone:  # it did not start: no eager replacement (no loop)
                self._retire(child, kill=True)
                child = None
                raise gone.error from None
            try:
                reply = child.run(job, config, on_page, timeout_s, limits.memory_mb, inline)
            except _JobFailed as failed:  # the document's error; the child is fine
                raise failed.error from None
            except _ChildGone as gone:
                self._retire(child, kill=True)
                child = self._spawn()  # its replacement starts while the caller moves on
                raise gone.error from None
            except BaseException:
                # on_page raised (a lost lease) or the waiting thread was interrupted (a soft
                # time limit): the child may still be working on a job nobody will read
                self._retire(child, kill=True)
                child = self._spawn()
                raise
            if reply.get("retire"):
                self._retire(child, kill=False)
                child = None
            return reply
        finally:
            self._checkin(child)


class _JobFailed(Exception):
    """Internal: the job ended with the document's error; the child is healthy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _ChildGone(Exception):
    """Internal: the child is unusable; ``error`` is what the caller gets."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Child:
    """One child process and its two pipes (parent side)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        requests: Connection,
        replies: Connection,
        limits: SandboxLimits,
    ) -> None:
        self.proc = proc
        self.requests = requests
        self.replies = replies
        self.limits = limits
        self.ready = False
        self.baseline_mb = 0.0
        self._config: EngineConfig | None = None  # the last config this child was sent
        self._max_message = max(64, 2 * limits.memory_mb) * _MB

    @classmethod
    def spawn(cls, limits: SandboxLimits) -> _Child:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[1])
        # only what the engine needs: the worker's and API's environment holds database and
        # store credentials, which a child parsing hostile documents has no business seeing
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV or k.startswith("LC_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        env["OMP_THREAD_LIMIT"] = "1"  # tesseract: parallelism comes from processes
        level = logging.getLogger("ocr").getEffectiveLevel()
        argv = [
            sys.executable,
            "-c",
            "import ocr.sandbox as s; s._child_main()",
            str(req_r),
            str(rep_w),
            str(limits.memory_mb),
            str(limits.recycle_rss_mb),
            str(level),
        ]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                pass_fds=(req_r, rep_w),
                env=env,
                start_new_session=True,  # its own process group: a kill takes tesseract too
            )
        except BaseException:
            for fd in (req_r, req_w, rep_r, rep_w):
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(req_r)
            with contextlib.suppress(OSError):
                os.close(rep_w)
        return cls(
            proc, Connection(req_w, readable=False), Connection(rep_r, writable=False), limits
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._receive(deadline, memory_mb=self.limits.memory_mb, starting=True)
            if msg is None:
                self.kill()
                raise _ChildGone(
                    SandboxCrashError(
                        f"the extraction sandbox did not start within {timeout_s:.0f} s"
                    )
                )
            if msg.get("t") == "ready":
                self.ready = True
                self.baseline_mb = float(msg.get("baseline_mb", 0))
                log.debug(
                    "sandbox child %s ready (baseline %.0f MB virtual, limit +%d MB)",
                    self.proc.pid,
                    self.baseline_mb,
                    self.limits.memory_mb,
                )
                return
            if msg.get("t") == "log":
                _emit_log(msg)

    def run(
        self,
        job: dict[str, Any],
        config: EngineConfig,
        on_page: OnPage | None,
        timeout_s: float,
        memory_mb: int,
        inline: bytes | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        pages_done = 0
        if config != self._config:
            job["config"] = dataclasses.asdict(config)
        try:
            job["inline"] = inline is not None
            self.requests.send_bytes(json.dumps(job).encode())
            if inline is not None:
                self.requests.send_bytes(inline)
        except OSError as exc:  # the child died while idle
            raise _ChildGone(self._death_error(memory_mb)) from exc
        self._config = config
        while True:
            msg = self._receive(deadline, memory_mb=memory_mb, starting=False)
            if msg is None:
                log.warning(
                    "sandbox child %s ran out of time (%.1f s): killed", self.proc.pid, timeout_s
                )
                raise _ChildGone(
                    ExtractionTimeoutError(
                        f"The document took longer than {timeout_s:.0f} s to extract."
                    )
                )
            kind = msg.get("t")
            if kind == "page":
                pages_done = self._replay(on_page, pages_done, int(msg["done"]), int(msg["count"]))
            elif kind == "log":
                _emit_log(msg)
            elif kind == "ok":
                if job["op"] == "extract":
                    count = int(msg["result"]["page_count"])
                    self._replay(on_page, pages_done, count, count)
                return msg
            elif kind == "error":
                error = _rebuild_error(msg, memory_mb)
                if isinstance(error, SandboxCrashError) or msg.get("retire"):
                    raise _ChildGone(error)
                raise _JobFailed(error)
            else:
                raise _ChildGone(SandboxCrashError(f"unexpected sandbox message: {kind!r}"))

    @staticmethod
    def _replay(on_page: OnPage | None, done_before: int, done: int, count: int) -> int:
        """Call ``on_page`` for every page finished since the last call, in order."""
        if on_page is not None:
            for page in range(done_before + 1, done + 1):
                on_page(page, count)
        return max(done_before, done)

    def _receive(self, deadline: float, *, memory_mb: int, starting: bool) -> dict[str, Any] | None:
        """The next message, or None when the deadline passed. A dead child -> _ChildGone."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.replies.poll(remaining):
            return None
        try:
            raw = self.replies.recv_bytes(self._max_message)
        except (EOFError, OSError) as exc:
            # EOF: the child is gone. OSError: a message over the cap, or a broken pipe
            error = self._death_error(memory_mb)
            if starting:
                # a child that cannot even import the engine under its limit is a setup problem
                error = SandboxCrashError(f"the extraction sandbox failed to start ({error})")
            raise _ChildGone(error) from exc
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            log.error("sandbox child %s sent a malformed message", self.proc.pid)
            raise _ChildGone(SandboxCrashError("the extraction sandbox sent a malformed message"))
        return msg

    def _wait_exit(self, timeout_s: float) -> bool:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _death_error(self, memory_mb: int) -> BaseException:
        if not self._wait_exit(2.0):
            self.kill()
            return SandboxCrashError("the extraction sandbox stopped answering")
        code = self.proc.returncode
        if code < 0 or code == _EXIT_MEMORY:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else "out of memory"
            log.warning("sandbox child %s ended by %s during a job", self.proc.pid, how)
            return ResourceLimitError(_memory_message(memory_mb))
        log.error("sandbox child %s exited with code %s during a job", self.proc.pid, code)
        return SandboxCrashError(f"the extraction sandbox exited with code {code}")

    def kill(self) -> None:
        _killpg(self.proc)
        self._wait_exit(5.0)
        self._close_pipes()

    def stop(self) -> None:
        """Ask an idle child to exit (EOF on its request pipe); it is reaped later."""
        self._close_pipes()

    def _close_pipes(self) -> None:
        for conn in (self.requests, self.replies):
            with contextlib.suppress(OSError):
                conn.close()


#: environment variables a child inherits (plus LC_*): the interpreter's, the locale, Tesseract's
_CHILD_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "TZ",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "VIRTUAL_ENV",
        "TESSDATA_PREFIX",
        "OMP_THREAD_LIMIT",
        "LD_LIBRARY_PATH",
        "PYTHONDONTWRITEBYTECODE",
    }
)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    if proc.pid <= 0 or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own group (new session)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()


def _memory_message(memory_mb: int) -> str:
    return f"The document needs more than {memory_mb} MB to process."


#: the only classes a child's error message may name (never anything it invents)
_ERROR_CLASSES: dict[str, type[ExtractionError]] = {
    name: getattr(engine_errors, name) for name in engine_errors.__all__
}


def _rebuild_error(msg: Mapping[str, Any], memory_mb: int) -> BaseException:
    kind = msg.get("kind")
    if kind == "memory":
        return ResourceLimitError(_memory_message(memory_mb))
    if kind == "extraction":
        cls = _ERROR_CLASSES.get(str(msg.get("class")), ExtractionError)
        error = cls.__new__(cls)
        ExtractionError.__init__(error, str(msg.get("message") or ""))
        error.transient = bool(msg.get("transient"))
        if str(msg.get("code")) != cls.code:
            error.code = str(msg.get("code"))
        if isinstance(error, engine_errors.UnsupportedLanguageError):
            error.languages = [str(x) for x in msg.get("languages") or []]
        return error
    log.error("extraction crashed in the sandbox:\n%s", str(msg.get("traceback", ""))[-20000:])
    return SandboxCrashError(f"the extraction failed unexpectedly ({msg.get('class')})")


def _emit_log(msg: Mapping[str, Any]) -> None:
    name = str(msg.get("name") or "ocr")
    level = int(msg.get("level") or logging.INFO)
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", str(msg.get("msg", ""))[:20000], extra={"sandbox": True})


@contextlib.contextmanager
def input_file(data: bytes, *, suffix: str = "") -> Iterator[str]:
    """Write ``data`` to a private temporary file (0600), yield its path, delete it after."""
    fd, path = tempfile.mkstemp(prefix="pagelane-in-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


class _PipeLogHandler(logging.Handler):
    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._send = send
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never fail a job
            self._send(
                {
                    "t": "log",
                    "name": record.name,
                    "level": record.levelno,
                    "msg": self.format(record),
                }
            )


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MB


def _warm_up() -> None:
    """Import and initialise everything a job may touch, so the baseline includes it and the
    first job is as fast as the others."""
    import pdfplumber  # noqa: F401  (tables)
    import pytesseract  # noqa: F401
    from PIL import Image

    import ocr
    import ocr.tables
    import ocr.tesseract

    Image.init()
    with contextlib.suppress(ocr.ExtractionError):
        ocr.extract(_TINY_PDF, {"ocr": "never"})


def _is_memory_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _child_main() -> None:
    req_fd, rep_fd, memory_mb, recycle_mb, level = (int(x) for x in sys.argv[1:6])
    requests = Connection(req_fd, writable=False)
    replies = Connection(rep_fd, readable=False)

    def send(msg: dict[str, Any]) -> None:
        replies.send_bytes(json.dumps(msg, separators=(",", ":")).encode())

    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(level)
    _warm_up()

    import resource

    import ocr

    baseline = _status_kb("VmSize") * 1024
    limit = baseline + memory_mb * _MB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        send({"t": "ready", "pid": os.getpid(), "baseline_mb": round(baseline / _MB, 1)})
    except BrokenPipeError:
        return  # the parent closed the sandbox while this child was starting

    config = EngineConfig()
    while True:
        try:
            raw = requests.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed the pipe (or died): nothing more to do
        try:
            job = json.loads(raw)
            if job.get("config") is not None:
                config = EngineConfig(**job["config"])
            inline = requests.recv_bytes() if job.get("inline") else None
            result = _child_job(job, config, send, inline)
            payload = json.dumps({"t": "ok", "result": result}, separators=(",", ":"))
            del result
            if _rss_mb() > recycle_mb:
                payload = payload[:-1] + ',"retire":true}'
            replies.send_bytes(payload.encode())
            del payload
        except ocr.ExtractionError as exc:
            if _is_memory_error(exc):
                _send_memory_error(send)
                continue
            send({"t": "error", **_error_fields(exc)})
        except MemoryError:
            _send_memory_error(send)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # a bug: the parent logs the traceback, the client sees none
            send(
                {
                    "t": "error",
                    "kind": "crash",
                    "class": type(exc).__name__,
                    "traceback": traceback.format_exc(),
                    "retire": True,
                }
            )
            return


def _error_fields(exc: ExtractionError) -> dict[str, Any]:
    """An engine error as the parent rebuilds it (``_rebuild_error``)."""
    fields: dict[str, Any] = {
        "kind": "extraction",
        "class": type(exc).__name__,
        "code": exc.code,
        "message": exc.message,
        "transient": exc.transient,
    }
    if isinstance(exc, engine_errors.UnsupportedLanguageError):
        fields["languages"] = exc.languages
    return fields


def _send_memory_error(send: Callable[[dict[str, Any]], None]) -> None:
    # the heap may be left fragmented or half-initialised: report, then exit for a fresh child
    try:
        send({"t": "error", "kind": "memory", "retire": True})
    except BaseException:
        os._exit(_EXIT_MEMORY)
    os._exit(0)


def _child_job(
    job: Mapping[str, Any],
    config: EngineConfig,
    send: Callable[[dict[str, Any]], None],
    inline: bytes | None,
) -> Any:
    import ocr

    if inline is not None:
        data = inline
    else:
        path = str(job["path"])
        size = os.stat(path).st_size
        if size > config.max_file_bytes:
            raise ocr.DocumentTooLargeError(
                f"The document is {size:,} bytes; the maximum is {config.max_file_bytes:,}."
            )
        with open(path, "rb") as fh:
            data = fh.read()
    if job["op"] == "probe":
        found = ocr.probe(data, config=config)
        return [found.kind, found.content_type, found.page_count]
    if job["op"] == "quote":
        return list(ocr.quote_probe(data, job.get("options"), config))
    if job["op"] == "quote_many":
        return _quote_many(data, [int(n) for n in job["sizes"]], job.get("options"), config)

    # Progress goes out at most every PROGRESS_INTERVAL_S (the parent replays every page in
    # order from it, and from the final reply): a message per page would cost every short
    # document two more process wake-ups, which is most of the sandbox's per-item cost.
    last_sent = time.monotonic()

    def on_page(done: int, count: int) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent >= PROGRESS_INTERVAL_S:
            last_sent = now
            send({"t": "page", "done": done, "count": count})

    result = ocr.extract(
        data,
        job.get("options"),
        filename=job.get("filename"),
        file_id=job.get("file_id"),
        config=config,
        on_page=on_page,
        pages=tuple(job["pages"]) if job.get("pages") else None,
    )
    return result


def _quote_many(
    joined: bytes, sizes: list[int], options: Mapping[str, Any] | None, config: EngineConfig
) -> list[Any]:
    """Each document's ``[page_count, ocr_pages]``, or its engine error's fields. A memory
    error ends the whole job (the parent then quotes each document on its own)."""
    import ocr

    answers: list[Any] = []
    offset = 0
    for size in sizes:
        data = joined[offset : offset + size]
        offset += size
        try:
            answers.append(list(ocr.quote_probe(data, options, config)))
        except ocr.ExtractionError as exc:
            if _is_memory_error(exc):
                raise
            answers.append(_error_fields(exc))
    return answers


#: one page, "warm", Helvetica: what _warm_up extracts once so pdfium and the text path are hot
_TINY_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]/Resources<</Font<</F1 4 0 R>>>>"
    b"/Contents 5 0 R>>endobj\n"
    b"4 0 obj<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>endobj\n"
    b"5 0 obj<</Length 36>>stream\nBT /F1 12 Tf 20 100 Td (warm) Tj ET\nendstream endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
