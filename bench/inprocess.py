"""The worker with its extractions in-process: the baseline the sandbox's cost is measured against.

Production runs every extraction in a capped child process (``ocr/sandbox.py``; a worker pool
child owns one). To measure what that isolation costs, bench/throughput.py runs this worker
beside the real one: the same `pagelane worker` (``service.cli.roles.run_worker``), built by the
same composition root (``tasks.worker.make_worker_app``), given :class:`InProcessSandbox` as its
sandbox factory, the one thing that differs. bench/sandbox.py uses the same class as its
in-process arm.

There is no setting that does this: a deployment cannot turn its isolation off, and
tests/integration/test_isolation.py proves that `pagelane worker` extracts in a sandbox child.

Run: ``python -m bench.inprocess worker --concurrency=N [--queues=...] [--hostname=...]
[--loglevel=...]`` (pagelane's worker arguments) with the settings in the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ocr
from ocr.config import EngineConfig
from ocr.pipeline import Probe
from ocr.sandbox import OnPage, Sandbox, SandboxCrashError

if TYPE_CHECKING:
    from celery import Celery

    from service.settings import Settings


class InProcessSandbox(Sandbox):
    """:class:`Sandbox`'s interface, run in the calling process: no child, no memory cap, no
    wall-clock kill (the engine's own ``document_timeout_s`` still applies). The calls are
    those the sandbox child makes (``ocr.sandbox._child_job``), so the difference between the
    two is the isolation alone. For benchmarks only: a hostile document takes this process
    down."""

    def __init__(self, settings: Settings | None = None) -> None:
        # The factory's signature (tasks.context.SandboxFactory); no settings apply in-process.
        super().__init__(1)

    def start(self) -> None:
        pass  # nothing to start: the engine is imported with this module

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass

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
        return self.extract_bytes(
            _read(path, config),
            options,
            filename=filename,
            file_id=file_id,
            config=config,
            on_page=on_page,
            timeout_s=timeout_s,
            pages=pages,
        )

    def probe(
        self,
        path: str | os.PathLike[str],
        *,
        config: EngineConfig | None = None,
        timeout_s: float | None = None,
    ) -> Probe:
        return self.probe_bytes(_read(path, config), config=config, timeout_s=timeout_s)

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
        pages: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        return ocr.extract(
            data,
            options,
            filename=filename,
            file_id=file_id,
            config=config or EngineConfig(),
            on_page=on_page,
            pages=pages,
        )

    def probe_bytes(
        self, data: bytes, *, config: EngineConfig | None = None, timeout_s: float | None = None
    ) -> Probe:
        return ocr.probe(data, config=config or EngineConfig())

    def quote_bytes(
        self,
        data: bytes,
        options: Mapping[str, Any] | None = None,
        *,
        config: EngineConfig | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, int]:
        return ocr.quote_probe(data, options, config or EngineConfig())

    def quote_many(
        self,
        documents: Sequence[bytes],
        options: Mapping[str, Any] | None = None,
        *,
        config: EngineConfig | None = None,
    ) -> list[tuple[int, int] | ocr.ExtractionError | SandboxCrashError]:
        answers: list[tuple[int, int] | ocr.ExtractionError | SandboxCrashError] = []
        for data in documents:
            try:
                answers.append(self.quote_bytes(data, options, config=config))
            except ocr.ExtractionError as exc:
                answers.append(exc)
        return answers


def _read(path: str | os.PathLike[str], config: EngineConfig | None) -> bytes:
    # As the sandbox child does: refuse an oversized file before reading it into memory.
    limit = (config or EngineConfig()).max_file_bytes
    size = os.stat(path).st_size
    if size > limit:
        raise ocr.DocumentTooLargeError(
            f"The document is {size:,} bytes; the maximum is {limit:,}."
        )
    with open(path, "rb") as fh:
        return fh.read()


def _in_process_worker_app(settings: Settings) -> Celery:
    # Imported when run_worker calls it, after it has set the metrics directory up (as the real
    # command's factory does).
    from tasks.worker import make_worker_app

    return make_worker_app(settings, make_sandbox=InProcessSandbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--concurrency", "-c", type=int, default=2)
    parser.add_argument("--queues", "-Q", default="items,sweeps,quotes")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--hostname", "-n", default=None)
    args = parser.parse_args()

    from service.cli.common import load
    from service.cli.roles import run_worker

    run_worker(
        load(),
        _in_process_worker_app,
        concurrency=args.concurrency,
        queues=args.queues,
        loglevel=args.loglevel,
        hostname=args.hostname,
    )


if __name__ == "__main__":
    main()
