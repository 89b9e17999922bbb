"""`pagelane run` end to end: how much does the client add on top of the server's own work?

Two workloads, on one embedded stack (`pagelane up`: SQLite, embedded Redis, local blobs served
by the API, a worker with W processes) on a free port; the real CLI, `pagelane run DIR --out
OUT`, is timed as a subprocess:

  * ``text``: N small one-page text-layer PDFs (the server is done in seconds: fixed costs
    dominate, goal ≤ 1.15);
  * ``mixed``: the folder users bring, scans and born-digital documents of every size, a few
    hundred pages (the corpus's documents, each PDF copy made distinct by a trailing comment,
    plus generated multi-page scans): the server alone needs 30 s or more, goal ≤ 1.10.

Printed per workload, from one run:

  * the server's own processing time: the same files, uploaded beforehand and submitted as one
    batch through the SDK, from the batch's ``created_at`` to its ``completed_at``
  * register + upload (scan, hash, bulk registration, parallel PUTs): seconds and files/s
  * processing as `pagelane run` drove it: batch created → completed, while the client follows
    the batch's event stream and downloads each result as its item succeeds (through the API,
    which serves the blobs in the embedded stack: CPU taken from the workers on a small machine)
  * how it followed: the API's access log of the run, counted per batch: event-stream requests
    vs polls of the batch (``GET /v1/batches/{id}?cursor=``); following the stream is one
    stream request and the one settling poll after ``batch.completed``, where polling would be
    one request every 0.25-1 s
  * download tail: from the batch's completion to the client's exit (results are downloaded
    while the batch runs, so only the last ones are left by then)
  * end-to-end / the server's own processing time, and end-to-end / the processing as the run
    drove it (what the client adds outside the batch's own time)

Each of the two is measured ``--rounds`` times (3), alternately, and the fastest run kept (a
shared VM's speed drifts from one run to the next; other people's jobs on it even more).

A small warm-up run first makes both sides pay their one-off start-up costs (worker imports,
first connections) outside the measured run.

    .venv/bin/python bench/client_e2e.py [--workload text|mixed|both] [--files 500]
        [--copies 2] [--rounds 3] [--compare-poll]
        [--workers 2] [--concurrency 16]

Not a test; needs nothing but the repository's .venv (no Postgres, no Redis server).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.slices import scanned_pdf  # noqa: E402
from pagelane import Client, FileSpec  # noqa: E402
from pagelane.walk import scan_folder  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402

# What the `pagelane` script runs: the client commands (pagelane.cli) and the server's
# (service.cli, plugged into `pagelane` through the pagelane.commands entry point).
CLI = [sys.executable, "-m", "pagelane.cli"]
SERVER_CLI = [sys.executable, "-m", "service.cli"]

WORDS = [
    *("batch", "lane", "extraction", "document", "worker", "cursor", "upload", "result"),
    *("page", "text", "layer", "quota", "signed", "blob", "retry", "idempotent", "poll"),
    *("fleet", "semaphore", "tesseract", "pdfium", "table", "chunk"),
]


def text_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF drawing ``lines`` in Helvetica (a real text layer, no images)."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = " ".join(f"({escape(line)}) '" for line in lines)
    content = f"BT /F1 11 Tf 72 740 Td 14 TL {shown} ET".encode("latin-1")
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(bodies) + 1,
        xref,
    )
    return bytes(out)


def generate(folder: Path, count: int) -> None:
    for n in range(count):
        lines = [f"Document {n} of {count}"] + [
            " ".join(WORDS[(n * 7 + i * 3 + j) % len(WORDS)] for j in range(10)) for i in range(30)
        ]
        target = folder / f"{n % 10}" / f"doc-{n:05d}.pdf"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text_pdf(lines))


# The mixed folder: per copy, born-digital documents (1-22 pages), scans that need OCR
# (1-6 pages, one in four orientations), images; once, a 117-page book (sliced by the server).
MIXED_PER_COPY = [
    "digital-chinese-quarterly-report-22p.pdf",
    "digital-table-multipage-warn-report-16p.pdf",
    "digital-lorem-pdflatex-4p.pdf",
    "digital-two-column-latex-3p.pdf",
    "digital-french-minutes-2p.pdf",
    "digital-crazyones-1p.pdf",
    "digital-multilang-hello-world-1p.pdf",
    "digital-table-nics-background-checks-1p.pdf",
    "digital-table-rotated-page-nics-1p.pdf",
    "hybrid-scan-with-ocr-layer-vicksburg-6p.pdf",
    "mixed-generated-scan-and-digital-pages-6p.pdf",
    "scan-four-orientations-4p.pdf",
    "scan-generated-multipage-3p.pdf",
    "scan-skewed-1p.pdf",
    "scan-rotated-and-skewed-1p.pdf",
    "scan-french-lowres-1p.pdf",
    "image-eurotext-multilang.tif",
    "image-phototest-1bit.tif",
    "image-generated-simple-text.jpg",
    "image-generated-multipage-3p.tiff",
]
MIXED_ONCE = ["digital-german-math-book-117p.pdf"]
GENERATED_SCAN_PAGES = (4, 2)  # two generated scans a copy, 100 dpi


def generate_mixed(folder: Path, copies: int) -> None:
    scans = {n: scanned_pdf(n, dpi=100) for n in GENERATED_SCAN_PAGES}
    for copy in range(copies):
        target = folder / f"copy-{copy}"
        target.mkdir(parents=True, exist_ok=True)
        for name in MIXED_PER_COPY + (MIXED_ONCE if copy == 0 else []):
            data = (CORPUS / name).read_bytes()
            if name.endswith(".pdf"):
                # A comment after %%EOF: a distinct file (its own hash) that reads the same.
                data += b"\n%%pagelane-copy-%d\n" % copy
            (target / name).write_bytes(data)
        for count, data in scans.items():
            (target / f"generated-scan-{count}p.pdf").write_bytes(
                data + b"\n%%pagelane-copy-%d\n" % copy
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedStack:
    """`pagelane up` in a temporary data dir; stopped by its own process id."""

    def __init__(self, data_dir: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELANE_")}
        env["PAGELANE_DATA_DIR"] = str(data_dir)
        self.log_path = data_dir.parent / "up.log"  # the API's access log is in it too
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*SERVER_CLI, "up", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.key = self._wait_ready(data_dir / "dev_api_key")

    def _wait_ready(self, key_file: Path, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"pagelane up exited {self.process.returncode}; see up.log")
            try:
                if key_file.exists() and httpx.get(f"{self.url}/readyz").status_code == 200:
                    return key_file.read_text().strip()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("pagelane up did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def pagelane_run(
    stack: EmbeddedStack, source: Path, out: Path, concurrency: int, *options: str
) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELANE_")}
    env.update(PAGELANE_API_URL=stack.url, PAGELANE_API_KEY=stack.key)
    started = time.time()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            *CLI,
            *("run", str(source), "--out", str(out), "--concurrency", str(concurrency), "--json"),
            *options,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    finished = time.time()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"pagelane run exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    summary = json.loads(done.stdout)
    # The client's own CPU: on a 2-core machine every second of it is taken from the workers.
    summary["client_cpu_seconds"] = (cpu_after.ru_utime + cpu_after.ru_stime) - (
        cpu_before.ru_utime + cpu_before.ru_stime
    )
    return started, finished, summary


def server_alone(stack: EmbeddedStack, source: Path) -> float:
    """Seconds from created_at to completed_at of one batch of ``source``'s files, uploaded
    before it is submitted: the server's own processing time, with no client work beside it."""
    paths = [local.path for local in scan_folder(source)]  # what `pagelane run` takes
    with Client(stack.key, stack.url) as client:
        files: list = []
        for start in range(0, len(paths), 1000):
            chunk = paths[start : start + 1000]
            files += client.files.create_many(
                [FileSpec(size_bytes=p.stat().st_size, filename=p.name) for p in chunk]
            )
        with ThreadPoolExecutor(16) as pool:
            for done in [
                pool.submit(client.files.upload, file.upload, path)
                for file, path in zip(files, paths, strict=True)
            ]:
                done.result()
        batch = client.batches.create([f.id for f in files])
        while not batch.is_terminal:
            time.sleep(0.5)
            batch = client.batches.get(batch.id, limit=1)
    assert batch.created_at and batch.completed_at
    return instant(batch.completed_at) - instant(batch.created_at)


def instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def requests_of(stack: EmbeddedStack, batch_ids: list[str], since: int) -> tuple[int, int]:
    """(event-stream requests, polls) for these batches in the API's access log after byte
    ``since``: how the run followed them."""
    stack.log.flush()
    with open(stack.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    streams = polls = 0
    for batch_id in batch_ids:
        streams += text.count(f"/v1/batches/{batch_id}/events")
        polls += text.count(f"/v1/batches/{batch_id}?")
    return streams, polls


def measure(
    stack: EmbeddedStack,
    root: Path,
    name: str,
    source: Path,
    concurrency: int,
    rounds: int,
    compare_poll: bool,
) -> dict[str, Any]:
    """The server alone and `pagelane run`, ``rounds`` times each, alternately; the fastest of
    each (and of `pagelane run --poll` with ``compare_poll``)."""
    alone: list[float] = []
    runs: list[tuple[Any, ...]] = []
    polled: list[float] = []
    for attempt in range(rounds):
        alone.append(server_alone(stack, source))
        if compare_poll:
            started, finished, _ = pagelane_run(
                stack, source, root / f"poll-{name}-{attempt}", concurrency, "--poll"
            )
            polled.append(finished - started)
        log_at = stack.log_path.stat().st_size
        started, finished, summary = pagelane_run(
            stack, source, root / f"out-{name}-{attempt}", concurrency
        )
        time.sleep(0.5)  # the access log line of a stream is written when it closes
        runs.append((started, finished, summary, requests_of(stack, summary["batch_ids"], log_at)))
    started, finished, summary, (streams, polls) = min(runs, key=lambda run: run[1] - run[0])
    with Client(stack.key, stack.url) as client:
        batches = [client.batches.get(i, limit=1) for i in summary["batch_ids"]]
    assert all(b.created_at and b.completed_at and b.started_at for b in batches)
    return {
        "server": min(alone),
        "started": started,
        "finished": finished,
        "summary": summary,
        "batches": batches,
        "streams": streams,
        "polls": polls,
        "polled": min(polled, default=None),
    }


def report(title: str, figures: dict[str, Any], goal: float) -> None:
    started, finished = figures["started"], figures["finished"]
    summary, batches, server = figures["summary"], figures["batches"], figures["server"]
    end_to_end = finished - started
    first_created = min(instant(b.created_at) for b in batches)
    last_completed = max(instant(b.completed_at) for b in batches)
    first_started = min(instant(b.started_at) for b in batches)
    phases = summary["phase_seconds"]
    upload = phases["upload"]
    tail = finished - last_completed
    print(title)
    print(f"  succeeded {summary['succeeded']}/{summary['files']}, pages {summary['pages']}")
    print(f"  server alone        {server:7.2f} s   (one batch of the uploaded files)")
    print(f"  register + upload   {upload:7.2f} s   ({summary['files'] / upload:.0f} files/s)")
    print(f"  submit             {phases['submit']:7.2f} s")
    print(
        f"  processing (run)    {last_completed - first_created:7.2f} s   ({len(batches)} "
        f"batches; first submitted {first_created - started:.2f} s after start, first item "
        f"started {first_started - first_created:.2f} s later)"
    )
    print(
        f"  followed by         {figures['streams']} event-stream request(s), "
        f"{figures['polls']} poll(s) of the batch"
    )
    print(f"  download tail       {tail:7.2f} s   (last completed_at → client exit)")
    outside = end_to_end - phases["upload"] - phases["submit"] - phases["process_and_download"]
    print(f"  client start + exit {outside:7.2f} s   (interpreter, imports; summary, exit)")
    print(
        f"  client CPU          {summary['client_cpu_seconds']:7.2f} s   (the `pagelane run` "
        f"process: {summary['client_cpu_seconds'] / end_to_end * 100:.0f} % of a core)"
    )
    print(f"  end to end          {end_to_end:7.2f} s")
    print(f"  ratio end-to-end / server alone = {end_to_end / server:.3f}  (goal ≤ {goal:.2f})")
    driven = last_completed - first_created
    print(f"  ratio end-to-end / processing (run) = {end_to_end / driven:.3f}")
    if figures["polled"] is not None:
        print(
            f"  `pagelane run --poll` end to end {figures['polled']:.2f} s: ratio following the "
            f"stream / polling = {end_to_end / figures['polled']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["text", "mixed", "both"], default="both")
    parser.add_argument("--files", type=int, default=500, help="PDFs of the text workload")
    parser.add_argument("--copies", type=int, default=2, help="copies of the mixed set")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, kept best")
    parser.add_argument(
        "--compare-poll", action="store_true", help="also time `pagelane run --poll` (polling)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="client uploads at once")
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="pagelane-bench-") as tmp:
        root = Path(tmp)
        workloads: dict[str, Path] = {}
        if args.workload in ("text", "both"):
            workloads["text"] = root / "text"
            generate(workloads["text"], args.files)
        if args.workload in ("mixed", "both"):
            workloads["mixed"] = root / "mixed"
            generate_mixed(workloads["mixed"], args.copies)
        warmup = root / "warmup"
        generate(warmup, 8)
        (root / "data").mkdir()
        stack = EmbeddedStack(root / "data", args.workers)
        try:
            pagelane_run(stack, warmup, root / "warmup-out", args.concurrency)
            results = {
                name: measure(
                    stack, root, name, source, args.concurrency, args.rounds, args.compare_poll
                )
                for name, source in workloads.items()
            }
        finally:
            stack.stop()

    setup = (
        f"embedded stack, {args.workers} worker processes, client concurrency {args.concurrency}"
    )
    if "text" in results:
        report(f"pagelane run on {args.files} one-page text PDFs, {setup}", results["text"], 1.15)
    if "mixed" in results:
        report(
            f"pagelane run on a mixed folder ({args.copies} copies: scans, images, born-digital;"
            f" {len(MIXED_PER_COPY) + len(GENERATED_SCAN_PAGES)} files a copy and a 117-page"
            f" book), {setup}",
            results["mixed"],
            1.10,
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
