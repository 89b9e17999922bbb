"""How a run shows its progress: rich bars on a terminal, plain log lines anywhere else."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass
class RunProgress:
    """Counters the runner keeps current; reporters only read them."""

    upload_total: int = 0
    uploaded: int = 0
    items_total: int = 0
    items_done: int = 0
    pages_total: int = 0  # pages of the items whose page count is known so far
    pages_done: int = 0
    downloads_total: int = 0
    downloaded: int = 0


class Reporter(Protocol):
    def start(self) -> None: ...

    def update(self, progress: RunProgress) -> None:
        """Counters changed (called often; a reporter decides when to draw)."""

    def note(self, message: str) -> None:
        """A one-off event worth a line (batch submitted, retrying after 429, ...)."""

    def stop(self) -> None: ...


def make_reporter(stream: TextIO | None = None, *, interactive: bool | None = None) -> Reporter:
    """Bars when ``stream`` (stdout by default) is a terminal, log lines otherwise."""
    stream = stream or sys.stdout
    if interactive is None:
        interactive = stream.isatty()
    return RichReporter(stream) if interactive else LineReporter(stream)


class RichReporter:
    """Three bars: upload (files), processing (pages done / pages known), download (results)."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream)
        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]:<7} {task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def start(self) -> None:
        for name, unit in (("upload", "files"), ("processing", "pages"), ("download", "results")):
            self._tasks[name] = self._progress.add_task(name, total=None, unit=unit, detail="")
        self._progress.start()

    def update(self, progress: RunProgress) -> None:
        self._progress.update(
            self._tasks["upload"], total=progress.upload_total, completed=progress.uploaded
        )
        self._progress.update(
            self._tasks["processing"],
            total=max(progress.pages_total, 1) if progress.items_total else None,
            completed=progress.pages_done,
            detail=f"({progress.items_done}/{progress.items_total} items)",
        )
        self._progress.update(
            self._tasks["download"],
            total=progress.downloads_total,
            completed=progress.downloaded,
        )

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)

    def stop(self) -> None:
        self._progress.stop()


class LineReporter:
    """One line per phase when its counters change, at most every ``interval`` seconds (and
    always when a phase completes), so a log of a 10,000-file run stays readable."""

    def __init__(self, stream: TextIO, interval: float = 2.0) -> None:
        self._stream = stream
        self._interval = interval
        self._last_line: dict[str, str] = {}
        self._last_time: dict[str, float] = {}
        self._lock = threading.Lock()  # notes come from upload threads too (retry notices)

    def start(self) -> None:
        pass

    def update(self, progress: RunProgress) -> None:
        self._maybe(
            "upload",
            f"{progress.uploaded}/{progress.upload_total} files",
            progress.upload_total > 0 and progress.uploaded >= progress.upload_total,
        )
        if progress.items_total:
            self._maybe(
                "processing",
                f"{progress.items_done}/{progress.items_total} items, "
                f"{progress.pages_done}/{progress.pages_total} pages",
                progress.items_done >= progress.items_total,
            )
        if progress.downloads_total:
            self._maybe(
                "download",
                f"{progress.downloaded}/{progress.downloads_total} results",
                progress.downloaded >= progress.downloads_total,
            )

    def _maybe(self, phase: str, text: str, complete: bool) -> None:
        if self._last_line.get(phase) == text:
            return
        now = time.monotonic()
        if not complete and now - self._last_time.get(phase, 0.0) < self._interval:
            return
        self._last_line[phase] = text
        self._last_time[phase] = now
        self._write(f"{phase}: {text}")

    def note(self, message: str) -> None:
        self._write(message)

    def _write(self, line: str) -> None:
        with self._lock:
            self._stream.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
            self._stream.flush()

    def stop(self) -> None:
        pass
