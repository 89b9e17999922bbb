"""`pagelane run DIR --out OUT`: a folder of documents in, a folder of results out.

The phases, each resumable from ``OUT/.pagelane-run.json`` (see :mod:`pagelane.state`):

1. Scan DIR; files unchanged since the last invocation keep what the server already knows.
2. Register new files in bulk (hashing them on the way: the SHA-256 lets the worker verify the
   bytes and keys the batch's idempotency) and upload them, ``concurrency`` at a time. Uploads
   start as soon as the first thousand files are registered.
3. Submit one batch per ``batch_size`` files, each with an Idempotency-Key derived from its
   files' content hashes and ids, saved before the request is sent.
4. Follow each batch's change feed with its cursor; download each result the moment its item
   succeeds (to ``OUT/<relative path>.json``) and append each failure to ``OUT/errors.jsonl``.

Concurrency model: the main thread owns the state and does all the bookkeeping; uploads and
downloads run as blocking SDK calls on ``concurrency`` daemon threads. The blocking client was
chosen over :class:`~client.AsyncClient` for this job because, measured on 500 uploads, httpx's
thread-pool path used 0.4 s of CPU where its asyncio path used 1.1 s, and on a small machine
that CPU is taken from the workers doing the extraction. Daemon threads mean Ctrl-C never waits
for a request in flight: whatever it was doing is not in the state, so a rerun redoes or
re-checks it.

Ctrl-C (KeyboardInterrupt in the main thread) saves the state and raises
:class:`RunInterruptedError`; with ``cancel_on_interrupt`` the submitted batches are cancelled
first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mimetypes
import queue
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pagelane._sync.client import Client
from pagelane.errors import ApiError, PagelaneConnectionError
from pagelane.models import (
    TERMINAL_BATCH_STATUSES,
    TERMINAL_ITEM_STATUSES,
    BatchItem,
    File,
    FileSpec,
    ItemError,
    Quote,
    sha256_of_file,
)
from pagelane.progress import Reporter, RunProgress
from pagelane.protocol import BULK_REGISTRATION_LIMIT
from pagelane.state import BatchEntry, FileEntry, StateStore, json_line, write_atomically
from pagelane.walk import LocalFile, scan_folder

T = TypeVar("T")
ERRORS_FILENAME = "errors.jsonl"
RESULT_SUFFIX = ".json"
# Re-register a file whose upload URL expires within this margin instead of racing the clock.
UPLOAD_URL_MARGIN_SECONDS = 120
# How often the main thread wakes up to redraw progress and save the state while it waits.
TICK_SECONDS = 0.25


class RunInterruptedError(Exception):
    """The run stopped on Ctrl-C after saving its state; ``cancelled`` lists the batch ids
    cancelled because ``cancel_on_interrupt`` was set."""

    def __init__(self, cancelled: list[str]) -> None:
        super().__init__("interrupted")
        self.cancelled = cancelled


class RunFailedError(Exception):
    """The run cannot go on (the server refused a batch, e.g. ``payment_required``)."""


@dataclass(frozen=True)
class RunPlan:
    """What one ``pagelane run`` invocation was asked to do."""

    source: Path
    out: Path
    includes: tuple[str, ...] = ()
    concurrency: int = 16
    batch_size: int = 10_000
    batch_options: dict[str, Any] = field(default_factory=dict)
    poll_interval: float = 1.0
    cancel_on_interrupt: bool = False
    # Follow each batch's event stream (page-level progress) when the server offers one;
    # False, a 404 or a connection error: poll the change feed.
    follow_events: bool = True
    # Before following: turn the failures of the batches recorded in OUT into retry batches.
    retry_failed: bool = False

    def resume_command(self) -> str:
        """The command line that resumes this run."""
        argv = ["pagelane", "run", str(self.source), "--out", str(self.out)]
        for pattern in self.includes:
            argv += ["--include", pattern]
        options = self.batch_options
        if "ocr" in options:
            argv += ["--ocr", options["ocr"]]
        if "languages" in options:
            argv += ["--languages", ",".join(options["languages"])]
        if options.get("extract_tables") is False:
            argv.append("--no-tables")
        if options.get("extract_images") is False:
            argv.append("--no-images")
        if self.batch_size != 10_000:
            argv += ["--batch-size", str(self.batch_size)]
        return shlex.join(argv)


@dataclass
class RunSummary:
    """The outcome over every invocation of the run so far."""

    files: int
    pages: int
    succeeded: int
    failed_by_code: dict[str, int]
    unfinished: int
    elapsed_seconds: float
    batch_ids: list[str]
    out: Path
    # Wall-clock seconds of this invocation's phases (the benchmark's breakdown).
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded, 2 when some did not (the documented exit codes)."""
        return 0 if self.failed == 0 and self.unfinished == 0 else 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "pages": self.pages,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failed_by_code": dict(sorted(self.failed_by_code.items())),
            "unfinished": self.unfinished,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "pages_per_second": round(self.pages_per_second, 2),
            "batch_ids": self.batch_ids,
            "out": str(self.out),
            "errors_file": str(self.out / ERRORS_FILENAME),
            "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
        }

    def render(self) -> str:
        lines = [
            f"{self.files} files, {self.pages} pages in {self.elapsed_seconds:.1f} s "
            f"({self.pages_per_second:.1f} pages/s)",
            f"  succeeded  {self.succeeded}",
        ]
        if self.failed_by_code:
            by_code = ", ".join(f"{code} {n}" for code, n in sorted(self.failed_by_code.items()))
            lines.append(f"  failed     {self.failed}  ({by_code})")
        if self.unfinished:
            lines.append(f"  unfinished {self.unfinished}")
        lines.append(f"results in {self.out}/")
        if self.failed:
            lines.append(f"failures in {self.out / ERRORS_FILENAME}")
        return "\n".join(lines)


def run_folder(client: Client, plan: RunPlan, reporter: Reporter) -> RunSummary:
    """Run ``plan`` to the end (or to Ctrl-C) and return the summary.

    Raises :class:`RunInterruptedError` on Ctrl-C (state saved), :class:`RunFailedError` when
    the server refuses the work, :class:`pagelane.state.StateError` when OUT holds another run,
    and the SDK's errors when the API stays unreachable. The state is saved in every case.
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    store = StateStore.open(
        plan.out, api_url=client.base_url, source=plan.source, options=plan.batch_options
    )
    workers = DaemonWorkers(plan.concurrency)
    run = _Run(client, plan, store, reporter, workers)
    started = time.monotonic()
    reporter.start()
    try:
        run.execute()
    except KeyboardInterrupt:
        workers.stop()
        cancelled = run.cancel_batches() if plan.cancel_on_interrupt else []
        raise RunInterruptedError(cancelled) from None
    finally:
        workers.stop()
        store.state.elapsed_seconds += time.monotonic() - started
        store.save()
        run.write_errors_file()
        reporter.update(run.progress)
        reporter.stop()
    return run.summary()


@dataclass
class QuoteReport:
    """A quote of a folder: the server's answer and the relative path of each quoted file."""

    quote: Quote
    paths: dict[str, str]  # file id -> relative path
    rejected: dict[str, ItemError]  # relative path -> why it was not even uploaded


def quote_folder(client: Client, plan: RunPlan, reporter: Reporter) -> QuoteReport:
    """Scan and upload as :func:`run_folder` does (recorded in OUT's state, so a later run of
    the same folder does not upload again), then ask for a quote of the uploaded files and
    wait for it. Nothing is submitted, extracted or billed."""
    plan.out.mkdir(parents=True, exist_ok=True)
    store = StateStore.open(
        plan.out, api_url=client.base_url, source=plan.source, options=plan.batch_options
    )
    workers = DaemonWorkers(plan.concurrency)
    run = _Run(client, plan, store, reporter, workers)
    reporter.start()
    try:
        files = scan_folder(plan.source, plan.includes, skip=[plan.out])
        run.reconcile(files)
        run.upload_phase()
    finally:
        workers.stop()
        store.save()
        reporter.update(run.progress)
        reporter.stop()
    paths = {
        entry.file_id: rel
        for rel, entry in sorted(store.state.files.items())
        if entry.uploaded and entry.file_id and not entry.rejected
    }
    rejected = {
        rel: entry.error
        for rel, entry in store.state.files.items()
        if entry.error is not None and (entry.rejected or not entry.uploaded)
    }
    if not paths:
        raise RunFailedError("nothing to quote: no file of the folder could be uploaded")
    quote = client.quotes.create(list(paths), options=plan.batch_options or None)
    quote = client.quotes.wait(quote.id, poll_interval=min(plan.poll_interval, 0.5))
    return QuoteReport(quote, paths, rejected)


class DaemonWorkers:
    """``size`` daemon threads running submitted calls, each answered through a Future.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter exits, so Ctrl-C would
    wait for every request in flight (and every retry's Retry-After sleep) to finish.
    """

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._size = size
        self._stopped = False
        for n in range(size):
            threading.Thread(target=self._work, name=f"pagelane-io-{n}", daemon=True).start()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, call))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def stop(self) -> None:
        """Cancel what has not started; threads end after their current call."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job[0].cancel()
        for _ in range(self._size):
            self._jobs.put(None)


class _Run:
    def __init__(
        self,
        client: Client,
        plan: RunPlan,
        store: StateStore,
        reporter: Reporter,
        workers: DaemonWorkers,
    ) -> None:
        self.client = client
        self.plan = plan
        self.store = store
        self.state = store.state
        self.reporter = reporter
        self.workers = workers
        self.progress = RunProgress()
        self.phase_seconds: dict[str, float] = {}
        self._pages_done: dict[str, int] = {}  # relative path -> pages done (not persisted)
        self._errors_stream: Any = None
        # Calls in flight on the workers, with what to do (in the main thread) when they end,
        # and the queue the workers put them in when they do.
        self._pending: dict[Future[Any], Callable[[Future[Any]], None]] = {}
        self._finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    # --- the phases ------------------------------------------------------------------------

    def execute(self) -> None:
        started = time.monotonic()
        files = scan_folder(self.plan.source, self.plan.includes, skip=[self.plan.out])
        self.reconcile(files)
        self.note(f"{len(files)} files in {self.plan.source}")
        # A batch refused for files the server no longer has sends us back to uploading them;
        # twice is plenty (a third refusal means something else is wrong, and we say so).
        for _ in range(3):
            self.upload_phase()
            self.phase_seconds["upload"] = time.monotonic() - started
            if self.submit_phase():
                break
        else:
            raise RunFailedError("the server keeps refusing the batch's files; see above")
        if self.plan.retry_failed:
            self.retry_failed()
        submitted = time.monotonic()
        self.phase_seconds["submit"] = submitted - started - self.phase_seconds["upload"]
        self.process_phase()
        self.phase_seconds["process_and_download"] = time.monotonic() - submitted

    def reconcile(self, files: Sequence[LocalFile]) -> None:
        """Fit the state to what is on disk now: unchanged files keep their entries, new or
        changed ones get fresh ones, vanished ones are forgotten unless already batched."""
        in_batches = {rel for batch in self.state.batches for rel in batch.files}
        current: dict[str, FileEntry] = {}
        for local in files:
            entry = self.state.files.get(local.relative)
            if entry is None or (entry.size, entry.mtime_ns) != (local.size, local.mtime_ns):
                if entry is not None:
                    # Changed since the last invocation: its result was the old content's.
                    self._result_path(local.relative).unlink(missing_ok=True)
                entry = FileEntry(size=local.size, mtime_ns=local.mtime_ns)
                if local.relative in in_batches:
                    self._forget_in_batches(local.relative)
            if local.size == 0 and not entry.rejected:
                entry.status = "rejected"
                entry.error = ItemError(
                    code="unsupported_input",
                    message="the file is empty (0 bytes): nothing to extract, not uploaded",
                )
            current[local.relative] = entry
        for relative, entry in self.state.files.items():
            if relative not in current and relative in in_batches:
                current[relative] = entry  # its batch still reports on it
        self.state.files = current
        self.store.touch()

    def _forget_in_batches(self, relative: str) -> None:
        """``relative`` changed on disk after it was put in a batch."""
        for batch in list(self.state.batches):
            if relative not in batch.files:
                continue
            if batch.id is None:
                # Never submitted: drop it; its files are batched again, this one with its new
                # content (and so under a new Idempotency-Key).
                self.state.batches.remove(batch)
            else:
                # Submitted: the old item's outcome is not this content's; the new content
                # goes into a new batch.
                batch.files.remove(relative)

    def upload_phase(self) -> None:
        batched = self._batched()
        todo = {
            rel: entry
            for rel, entry in self.state.files.items()
            if not entry.uploaded and not entry.rejected and rel not in batched
        }
        self.progress.upload_total = sum(1 for e in self.state.files.values() if not e.rejected)
        self.progress.uploaded = sum(1 for e in self.state.files.values() if e.uploaded)
        if not todo:
            return
        self._check_known(todo)
        self._register(todo)
        self._drain()
        self.store.save()

    def _check_known(self, todo: dict[str, FileEntry]) -> None:
        """Files registered by an earlier invocation whose upload was not recorded: ask the
        server (its GET re-checks the blob store) before sending the bytes again. Uploads of
        those still awaiting theirs start at once; expired ones are registered afresh."""

        def look_up(file_id: str) -> File | None:
            try:
                return self.client.files.get(file_id)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

        checks: list[Future[File | None]] = []
        for relative, entry in todo.items():
            if entry.file_id is None:
                continue

            def checked(done: Future[File | None], relative: str = relative) -> None:
                entry, remote = self.state.files[relative], done.result()
                if remote is not None and remote.status == "uploaded":
                    self._uploaded(entry)
                elif remote is None or remote.status != "awaiting_upload" or _expiring(entry):
                    _forget_registration(entry)  # _register picks it up
                else:
                    self._start_upload(relative, entry)

            checks.append(self._start(functools.partial(look_up, entry.file_id), checked))
        # Registration, next, must know which files these checks sent back to it.
        while any(check in self._pending for check in checks):
            self._collect(timeout=0.05)

    def _register(self, todo: dict[str, FileEntry]) -> None:
        fresh = sorted(rel for rel, e in todo.items() if e.file_id is None and not e.uploaded)
        for start in range(0, len(fresh), BULK_REGISTRATION_LIMIT):
            chunk = fresh[start : start + BULK_REGISTRATION_LIMIT]
            entries = [self.state.files[rel] for rel in chunk]
            for relative, entry in zip(chunk, entries, strict=True):
                if entry.sha256 is None:
                    entry.sha256 = sha256_of_file(self.plan.source / relative)
            for relative, entry, remote in self._register_chunk(chunk, entries):
                entry.file_id = remote.id
                entry.upload = remote.upload
                self._start_upload(relative, entry)
            self.store.touch()
            self._collect(timeout=0)

    def _register_chunk(
        self, relatives: list[str], entries: list[FileEntry]
    ) -> list[tuple[str, FileEntry, File]]:
        pairs = list(zip(relatives, entries, strict=True))
        while pairs:
            specs = [
                FileSpec(
                    size_bytes=entry.size,
                    filename=relative[-512:],
                    content_type=mimetypes.guess_type(relative)[0],
                    sha256=entry.sha256,
                )
                for relative, entry in pairs
            ]
            try:
                remote = self.client.files.create_many(specs)
            except ApiError as exc:
                indexes = exc.context.get("indexes")
                if exc.code != "document_too_large" or not isinstance(indexes, list):
                    raise
                # The server names the files over its size limit: they fail here, the rest go on.
                for index in sorted(indexes, reverse=True):
                    _, entry = pairs.pop(index)
                    entry.status = "rejected"
                    entry.error = ItemError(code="document_too_large", message=exc.message)
                continue
            return [(rel, entry, file) for (rel, entry), file in zip(pairs, remote, strict=True)]
        return []

    def _start_upload(self, relative: str, entry: FileEntry) -> None:
        instructions, path = entry.upload, self.plan.source / relative
        assert instructions is not None

        def uploaded(done: Future[None]) -> None:
            try:
                done.result()
            except ApiError as exc:
                # The store refused these bytes (an expired URL, a file that changed size since
                # it was registered): report it and register it afresh on the next run.
                _forget_registration(entry)
                entry.error = ItemError(
                    code="upload_failed", message=f"{exc.status} {exc.code}: {exc.message}"
                )
                self.note(f"upload of {relative} failed: {exc}")
                self.store.touch()
                return
            self._uploaded(entry)

        self._start(lambda: self.client.files.upload(instructions, path), uploaded)

    def _uploaded(self, entry: FileEntry) -> None:
        entry.uploaded = True
        entry.upload = None  # the presigned URL is a large, spent credential
        entry.error = None
        self.progress.uploaded += 1
        self.store.touch()

    def submit_phase(self) -> bool:
        """Form and submit the batches; False when files must be uploaded again first."""
        batched = self._batched()
        ready = sorted(
            rel
            for rel, e in self.state.files.items()
            if e.uploaded and not e.rejected and rel not in batched
        )
        for start in range(0, len(ready), self.plan.batch_size):
            chunk = ready[start : start + self.plan.batch_size]
            self.state.batches.append(
                BatchEntry(idempotency_key=self._idempotency_key(chunk), files=chunk)
            )
        # Saved before submitting: a crash after the server made the batch is repaired by
        # sending the same key and body again.
        self.store.save()
        for batch in self.state.batches:
            if batch.id is not None:
                continue
            file_ids = [self.state.files[rel].file_id or "" for rel in batch.files]
            try:
                created = self.client.batches.create(
                    file_ids,
                    options=self.plan.batch_options or None,
                    idempotency_key=batch.idempotency_key,
                )
            except ApiError as exc:
                if exc.code in ("file_not_found", "file_not_uploaded"):
                    self._requeue_refused(batch, exc)
                    return False
                raise RunFailedError(f"the server refused the batch: {exc}") from exc
            batch.id = created.id
            batch.status = created.status
            self.store.save()
            self.note(f"submitted batch {created.id} ({len(batch.files)} files)")
        return True

    def retry_failed(self) -> None:
        """Ask the server to retry the failures of every finished batch of this run (its
        retryable ones, and the cancelled items); the files it takes move to the new batch,
        which the process phase then follows like any other."""
        for batch in list(self.state.batches):
            if batch.id is None or not batch.drained:
                continue
            failed = [
                rel
                for rel in batch.files
                if (entry := self.state.files.get(rel)) is not None
                and entry.status in ("failed", "cancelled")
            ]
            if not failed:
                continue
            try:
                child = self.client.batches.retry(
                    batch.id,
                    include_cancelled=True,
                    idempotency_key=f"pagelane-run-retry-{batch.id}",
                )
            except ApiError as exc:
                if exc.code in ("nothing_to_retry", "not_found", "batch_not_found"):
                    self.note(f"batch {batch.id}: nothing to retry ({exc.code})")
                    continue
                raise RunFailedError(f"the server refused to retry {batch.id}: {exc}") from exc
            file_ids = self._child_file_ids(child.id)
            moved = [rel for rel in failed if self.state.files[rel].file_id in file_ids]
            for rel in moved:
                entry = self.state.files[rel]
                entry.status, entry.error, entry.item_id = None, None, None
                self._pages_done.pop(rel, None)
                batch.files.remove(rel)
            self.state.batches.append(
                BatchEntry(
                    idempotency_key=f"pagelane-run-retry-{batch.id}",
                    files=moved,
                    id=child.id,
                    status=child.status,
                )
            )
            self.store.save()
            self.note(f"retrying {len(moved)} failed files of {batch.id} as batch {child.id}")

    def _child_file_ids(self, batch_id: str) -> set[str]:
        file_ids: set[str] = set()
        cursor: str | None = None
        while True:
            page = self.client.batches.get(batch_id, cursor=cursor, limit=500)
            items = page.items or []
            file_ids.update(item.file_id for item in items)
            cursor = page.next_cursor or cursor
            if len(items) < 500:
                return file_ids

    def _requeue_refused(self, batch: BatchEntry, exc: ApiError) -> None:
        refused = set(exc.context.get("file_ids") or [])
        self.note(f"the server refused {len(refused)} files ({exc.code}); uploading them again")
        for relative in batch.files:
            entry = self.state.files[relative]
            if entry.file_id in refused or not refused:
                if exc.code == "file_not_found":
                    _forget_registration(entry)
                else:
                    entry.uploaded = False
        self.state.batches.remove(batch)  # never created: the server forgot its key too
        self.store.save()

    def _idempotency_key(self, relatives: Sequence[str]) -> str:
        """Same files with the same content, ids and options → the same key, hence the same
        batch. File ids are part of it, so a run that lost its state (and registered the files
        again) gets a new batch instead of a 422 idempotency_key_mismatch."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.plan.batch_options, sort_keys=True).encode())
        for relative in relatives:
            entry = self.state.files[relative]
            digest.update(f"\n{relative}\0{entry.sha256}\0{entry.file_id}".encode())
        return f"pagelane-run-{digest.hexdigest()[:48]}"

    def process_phase(self) -> None:
        self._start_errors_file()
        try:
            by_file_id = {
                entry.file_id: (rel, entry)
                for batch in self.state.batches
                for rel in batch.files
                if (entry := self.state.files.get(rel)) is not None and entry.file_id
            }
            batched = [self.state.files[rel] for b in self.state.batches for rel in b.files]
            self.progress.items_total = len(batched)
            self.progress.items_done = sum(1 for e in batched if e.status in TERMINAL_ITEM_STATUSES)
            self.progress.pages_total = sum(e.page_count or 0 for e in batched)
            self.progress.pages_done = sum(
                e.page_count or 0 for e in batched if e.status == "succeeded"
            )
            missing = [
                (rel, e)
                for rel, e in self.state.files.items()
                if e.status == "succeeded" and not self._result_path(rel).exists()
            ]
            self.progress.downloads_total = sum(
                1 for e in self.state.files.values() if e.status == "succeeded"
            )
            self.progress.downloaded = self.progress.downloads_total - len(missing)
            for relative, entry in missing:
                self._start_download(relative, entry)
            # Batches are followed one after the other: the server runs a customer's batches
            # oldest first, so a later batch has little to report before an earlier one ends.
            for batch in self.state.batches:
                if batch.id is not None and not batch.drained:
                    self._follow(batch, by_file_id)
            self._drain()
        finally:
            if self._errors_stream is not None:
                self._errors_stream.close()
                self._errors_stream = None

    def _follow(self, batch: BatchEntry, by_file_id: dict[str, tuple[str, FileEntry]]) -> None:
        if self.plan.follow_events and self._follow_events(batch, by_file_id):
            return
        self._poll(batch, by_file_id)

    def _follow_events(
        self, batch: BatchEntry, by_file_id: dict[str, tuple[str, FileEntry]]
    ) -> bool:
        """Follow the batch's event stream: every ``item.progress`` moves the page bar, each
        terminal item event is recorded and downloaded at once. False when the server has no
        stream (404 before the first event) or cannot be reached: poll instead. The change
        feed's cursor is not moved, so polling later still sees every item."""
        assert batch.id is not None
        stream = self.client.batches.events(batch.id)
        received = 0
        try:
            for event in stream:
                received += 1
                item = event.item
                if item is not None:
                    known = by_file_id.get(item.file_id)
                    if known is not None:
                        self._record(item, *known)
                    self.store.touch()
                elif event.type == "batch.completed" and event.batch is not None:
                    batch.status = event.batch.status
                self._collect(timeout=0)
        except ApiError as exc:
            if exc.status == 404 and received == 0:
                return False
            if exc.status in (404, 405, 501):
                self.note(f"the event stream of {batch.id} failed ({exc}); polling instead")
                return False
            raise
        except PagelaneConnectionError as exc:
            self.note(f"the event stream of {batch.id} is unreachable ({exc}); polling instead")
            return False
        finally:
            stream.close()
        # The stream ended with batch.completed: every item's final event has been seen. One
        # poll of the change feed settles the cursor and reports any item the stream's
        # data could not place (it never should).
        self._poll(batch, by_file_id)
        return True

    def _poll(self, batch: BatchEntry, by_file_id: dict[str, tuple[str, FileEntry]]) -> None:
        assert batch.id is not None
        # The feed's waits between polls are spent collecting finished downloads.
        feed = self.client.batches.iter_changes(
            batch.id, cursor=batch.cursor, poll_interval=self.plan.poll_interval
        )
        feed.sleep = self._collect
        for item in feed:
            # The feed's cursor covers only items already handed to us, each recorded below
            # before the next is asked for: saving it never skips an outcome.
            batch.cursor = feed.cursor
            known = by_file_id.get(item.file_id)
            if known is not None:
                self._record(item, *known)
            self.store.touch()
            self._collect(timeout=0)
        batch.cursor = feed.cursor
        batch.status = feed.batch.status if feed.batch else batch.status
        batch.drained = True
        self.store.save()
        self.note(f"batch {batch.id} {batch.status}")

    def _record(self, item: BatchItem, relative: str, entry: FileEntry) -> None:
        if entry.page_count is None and item.page_count is not None:
            self.progress.pages_total += item.page_count
        entry.item_id = item.id
        entry.page_count = item.page_count
        if entry.status in TERMINAL_ITEM_STATUSES:
            return  # replayed from before our cursor; nothing new
        pages_now = (item.page_count or 0) if item.status == "succeeded" else item.pages_done
        self.progress.pages_done += pages_now - self._pages_done.get(relative, 0)
        self._pages_done[relative] = pages_now
        entry.status = item.status
        if not item.is_terminal:
            return
        self.progress.items_done += 1
        if item.status == "succeeded":
            entry.error = None
            self.progress.downloads_total += 1
            self._start_download(relative, entry)
            return
        entry.error = item.error or ItemError(code=item.status, message=f"item {item.status}")
        self._append_error(relative, entry)

    def _start_download(self, relative: str, entry: FileEntry) -> None:
        batch_id, item_id = self._batch_id_of(relative), entry.item_id
        assert batch_id is not None and item_id is not None
        target = self._result_path(relative)

        def downloaded(done: Future[Path]) -> None:
            try:
                done.result()
            except ApiError as exc:
                entry.download_error = ItemError(code=exc.code, message=exc.message)
                self._append_error(relative, entry)
                self.store.touch()
                return
            entry.download_error = None
            self.progress.downloaded += 1
            self.store.touch()

        self._start(lambda: self.client.results.download(batch_id, item_id, target), downloaded)

    # --- running calls on the workers --------------------------------------------------------

    def _start(self, call: Callable[[], T], then: Callable[[Future[T]], None]) -> Future[T]:
        """Run ``call`` on a worker; ``then(future)`` runs in this thread once it is done."""
        future = self.workers.submit(call)
        self._pending[future] = then
        future.add_done_callback(self._finished.put)
        return future

    def _collect(self, timeout: float) -> None:
        """Handle finished calls for ``timeout`` seconds (0: only those already done), redrawing
        and saving on the way; this is also how the change feed waits between polls. A call's
        own error (the API unreachable, say) is raised here, in the main thread."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = min(deadline - time.monotonic(), TICK_SECONDS)
            try:
                # Workers queue each finished call: waiting costs O(1) however many are
                # in flight (concurrent.futures.wait would visit every pending future).
                future = self._finished.get(timeout=remaining) if remaining > 0 else None
                while True:
                    if future is not None:
                        self._pending.pop(future)(future)
                    future = self._finished.get_nowait()
            except queue.Empty:
                pass
            self.reporter.update(self.progress)
            self.store.save_if_due()
            if time.monotonic() >= deadline:
                return

    def _drain(self) -> None:
        while self._pending:
            self._collect(timeout=0.05)

    # --- interrupt, errors, summary ----------------------------------------------------------

    def cancel_batches(self) -> list[str]:
        cancelled = []
        for batch in self.state.batches:
            if batch.id is None or batch.status in TERMINAL_BATCH_STATUSES:
                continue
            try:
                remote = self.client.batches.cancel(batch.id)
            except Exception as exc:  # report and go on: the other batches still get cancelled
                self.note(f"could not cancel {batch.id}: {exc}")
                continue
            batch.status = remote.status
            cancelled.append(batch.id)
        return cancelled

    def _start_errors_file(self) -> None:
        # Rewritten from the state first, so failures appended by an interrupted invocation
        # that did not reach its state save are never listed twice.
        self.write_errors_file()
        self._errors_stream = open(self.plan.out / ERRORS_FILENAME, "a", encoding="utf-8")  # noqa: SIM115 - closed by process_phase

    def _append_error(self, relative: str, entry: FileEntry) -> None:
        if self._errors_stream is not None:
            self._errors_stream.write(json_line(self._error_record(relative, entry)))
            self._errors_stream.flush()

    def write_errors_file(self) -> None:
        lines = [
            json_line(self._error_record(rel, entry))
            for rel, entry in sorted(self.state.files.items())
            if _failure(entry) is not None
        ]
        write_atomically(self.plan.out / ERRORS_FILENAME, "".join(lines).encode())

    def _error_record(self, relative: str, entry: FileEntry) -> dict[str, Any]:
        error = _failure(entry) or ItemError(code="unknown", message="")
        return {
            "path": relative,
            "item_id": entry.item_id,
            "code": error.code,
            "message": error.message,
            "file_id": entry.file_id,
            "batch_id": self._batch_id_of(relative),
        }

    def _batched(self) -> set[str]:
        return {rel for batch in self.state.batches for rel in batch.files}

    def _batch_id_of(self, relative: str) -> str | None:
        for batch in self.state.batches:
            if relative in batch.files:
                return batch.id
        return None

    def _result_path(self, relative: str) -> Path:
        return self.plan.out / (relative + RESULT_SUFFIX)

    def note(self, message: str) -> None:
        self.reporter.note(message)

    def summary(self) -> RunSummary:
        failed: Counter[str] = Counter()
        succeeded = pages = unfinished = 0
        for entry in self.state.files.values():
            failure = _failure(entry)
            if failure is not None:
                failed[failure.code] += 1
            elif entry.status == "succeeded":
                succeeded += 1
                pages += entry.page_count or 0
            else:
                unfinished += 1
        return RunSummary(
            files=len(self.state.files),
            pages=pages,
            succeeded=succeeded,
            failed_by_code=dict(failed),
            unfinished=unfinished,
            elapsed_seconds=self.state.elapsed_seconds,
            batch_ids=[b.id for b in self.state.batches if b.id],
            out=self.plan.out,
            phase_seconds=self.phase_seconds,
        )


def _failure(entry: FileEntry) -> ItemError | None:
    """Why this file has no result, if it failed (None while it is still on its way)."""
    if entry.status == "succeeded":
        return entry.download_error
    if entry.status in ("failed", "cancelled", "rejected"):
        return entry.error or ItemError(code=entry.status or "failed", message="")
    if entry.error is not None and entry.error.code == "upload_failed" and not entry.uploaded:
        return entry.error
    return None


def _forget_registration(entry: FileEntry) -> None:
    entry.file_id = None
    entry.upload = None
    entry.uploaded = False


def _expiring(entry: FileEntry) -> bool:
    """True when the stored upload URL is missing or about to expire."""
    if entry.upload is None or entry.upload.expires_at is None:
        return entry.upload is None
    try:
        expires = datetime.fromisoformat(entry.upload.expires_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    return (expires - datetime.now(UTC)).total_seconds() < UPLOAD_URL_MARGIN_SECONDS
