"""`pagelane run` end to end: how much does the client add on top of the server's own work?

Generates N small one-page text-layer PDFs, brings up the embedded stack (`pagelane up`: SQLite,
embedded Redis, local blobs served by the API, a worker with W processes) on a free port, and
times the real CLI, `pagelane run DIR --out OUT`, as a subprocess. Printed, from one run:

  * register + upload (scan, hash, bulk registration, parallel PUTs): seconds and files/s
  * processing: the server's own time, batch ``created_at`` → ``completed_at``
  * download tail: from the batch's completion to the client's exit (results are downloaded
    while the batch runs, so only the last ones are left by then)
  * end-to-end / server processing time (goal ≤ 1.15)

A small warm-up run first makes both sides pay their one-off start-up costs (worker imports,
first connections) outside the measured run.

    .venv/bin/python bench/client_e2e.py [--files 500] [--workers 2] [--concurrency 16]

Not a test; needs nothing but the repository's .venv (no Postgres, no Redis server).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from client import Client  # noqa: E402

CLI = [sys.executable, "-m", "service.cli"]  # what the `pagelane` script runs

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
        self.log = open(data_dir.parent / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*CLI, "up", "--port", str(self.port), "--workers", str(workers)],
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


def pagelane_run(stack: EmbeddedStack, source: Path, out: Path, concurrency: int) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELANE_")}
    env.update(PAGELANE_API_URL=stack.url, PAGELANE_API_KEY=stack.key)
    started = time.time()
    done = subprocess.run(
        [*CLI, "run", str(source), "--out", str(out), "--concurrency", str(concurrency), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    finished = time.time()
    if done.returncode != 0:
        raise SystemExit(f"pagelane run exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return started, finished, json.loads(done.stdout)


def instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="client uploads at once")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pagelane-bench-") as tmp:
        root = Path(tmp)
        source, warmup = root / "in", root / "warmup"
        generate(source, args.files)
        generate(warmup, 8)
        (root / "data").mkdir()
        stack = EmbeddedStack(root / "data", args.workers)
        try:
            pagelane_run(stack, warmup, root / "warmup-out", args.concurrency)
            started, finished, summary = pagelane_run(stack, source, root / "out", args.concurrency)
            with Client(stack.key, stack.url) as client:
                batch = client.batches.get(summary["batch_ids"][0], limit=1)
        finally:
            stack.stop()

    assert batch.created_at and batch.completed_at and batch.started_at
    end_to_end = finished - started
    server = instant(batch.completed_at) - instant(batch.created_at)
    phases = summary["phase_seconds"]
    upload = phases["upload"]
    tail = finished - instant(batch.completed_at)
    print(
        f"pagelane run on {args.files} one-page text PDFs, embedded stack, "
        f"{args.workers} worker processes, client concurrency {args.concurrency}"
    )
    print(f"  succeeded {summary['succeeded']}/{summary['files']}, pages {summary['pages']}")
    print(f"  register + upload   {upload:7.2f} s   ({args.files / upload:.0f} files/s)")
    print(f"  submit              {phases['submit']:7.2f} s")
    print(
        f"  processing (server) {server:7.2f} s   (created_at → completed_at; "
        f"queue → first start {instant(batch.started_at) - instant(batch.created_at):.2f} s)"
    )
    print(f"  download tail       {tail:7.2f} s   (completed_at → client exit)")
    outside = end_to_end - phases["upload"] - phases["submit"] - phases["process_and_download"]
    print(f"  client start + exit {outside:7.2f} s   (interpreter, imports; summary, exit)")
    print(f"  end to end          {end_to_end:7.2f} s")
    print(f"  ratio end-to-end / server processing = {end_to_end / server:.3f}  (goal ≤ 1.15)")


if __name__ == "__main__":
    main()
