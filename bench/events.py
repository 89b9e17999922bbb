"""Events (issue 16): how fast a committed change reaches its listeners, and what holding 500
open event streams costs one API process.

One real stack (bench/stack.py: SQLite and local blobs as in the embedded mode, or Postgres;
Redis db from PAGELANE_BENCH_REDIS_URL), with the API as `pagelane api --workers 1` (gunicorn,
gthread: one process, each open stream holds one of its threads), an items worker with 2
processes, the webhooks worker (its own queue), beat, and a webhook receiver on loopback
(``webhook_allow_private``: loopback targets are refused otherwise). The caps are raised for the
bench: ``sse_streams_per_process`` 520 (so `pagelane api` runs 528 threads) and
``sse_streams_per_key`` 1000 (default 8: all 500 streams use one key). Everything else is the
default: keep-alive every 10 s, the watcher polls every 0.2 s, the webhook tick is 1 s.

In order:

1. idle, no stream: the API worker process's RSS and CPU over ``--window`` seconds;
2. 500 streams open on a batch that does not move yet (no items worker): RSS, CPU and
   keep-alives per stream over the same window;
3. the items worker starts and the batch runs: every event must reach all 500 streams; latency
   per (stream, event), p50/p95, and the webhook receiver's;
4. the same workload again with one stream: the baseline latency (and the API's CPU).

Latency = receive time - the event's ``created_at``. ``created_at`` is the clock reading the
change was made with (the ``now`` of the transaction that commits it; for item events the
item's ``updated_at``), taken just before that transaction's statements run: so the figure is
commit → receive plus the transaction's own few milliseconds, an upper bound. It is in every
event's body (SSE data and webhook payload alike) and exists for every event type, which the
item's ``completed_at`` does not (started, progress). Millisecond resolution, same host clock.
Events already committed when a stream connected (its backlog) are not counted.

    PYTHONPATH=. python -m bench.events [--streams 500] [--window 25] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.stack import CORPUS, bench_stack
from service.models import Event, WebhookDelivery
from tests.api.conftest import Tenant
from tests.support.live import Stack
from tests.support.stack import Proc, free_port, settings_env, wait_for

HOST = "127.0.0.1"
STREAMS_PER_PROCESS = 520
# Born-digital documents (fast: item.started, item.succeeded) and scans that take seconds of OCR
# (item.progress every quarter lease in between).
DIGITAL = [
    "digital-crazyones-1p.pdf",
    "digital-lorem-pdflatex-4p.pdf",
    "digital-two-column-latex-3p.pdf",
    "digital-french-minutes-2p.pdf",
    "digital-multilang-hello-world-1p.pdf",
]
SCANS = ["scan-four-orientations-4p.pdf", "scan-skewed-1p.pdf"]


# --- the SSE client: every stream one asyncio connection, all on one loop ---------------------


@dataclass
class StreamRecord:
    """What one stream received: ``(received, seq, type, created_at)`` per event."""

    connected_at: float = 0.0  # response headers of the first connection
    events: list[tuple[float, int, str, float]] = field(default_factory=list)
    keepalives: list[float] = field(default_factory=list)
    connections: int = 0
    completed: bool = False
    error: str | None = None


def instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class StreamFleet:
    """Many SSE streams from one event loop in a thread of its own (its client is a few lines
    of asyncio, HTTP/1.0 so the body is the bare stream: no chunked framing to undo)."""

    def __init__(self, port: int, key: str) -> None:
        self._port = port
        self._key = key
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._futures: list[Any] = []

    def follow(self, batch_id: str, count: int) -> list[StreamRecord]:
        records = [StreamRecord() for _ in range(count)]

        async def start_all() -> None:
            # 50 connecting at a time: a burst of 500 SYNs would measure the listen backlog
            connecting = asyncio.Semaphore(50)
            for record in records:
                self._futures.append(
                    asyncio.ensure_future(self._follow(batch_id, record, connecting))
                )

        asyncio.run_coroutine_threadsafe(start_all(), self._loop).result()
        return records

    async def _follow(
        self, batch_id: str, record: StreamRecord, connecting: asyncio.Semaphore
    ) -> None:
        last: int | None = None
        try:
            while not record.completed:
                async with connecting:
                    reader, writer = await asyncio.open_connection(HOST, self._port, limit=2**20)
                    resume = f"Last-Event-ID: {last}\r\n" if last is not None else ""
                    request = (
                        f"GET /v1/batches/{batch_id}/events HTTP/1.0\r\nHost: {HOST}\r\n"
                        f"X-API-KEY: {self._key}\r\nAccept: text/event-stream\r\n{resume}\r\n"
                    )
                    writer.write(request.encode())
                    status = await reader.readline()
                    if b" 200 " not in status:
                        record.error = status.decode(errors="replace").strip()
                        writer.close()
                        return
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                record.connections += 1
                record.connected_at = record.connected_at or time.time()
                frame: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if not line:
                        break  # the server ended the stream (max seconds): resume
                    received = time.time()
                    text = line.decode().rstrip("\r\n")
                    if text.startswith(":"):
                        record.keepalives.append(received)
                    elif text:
                        name, _, value = text.partition(": ")
                        frame[name] = value
                    elif "id" in frame:
                        last = int(frame["id"])
                        created = instant(json.loads(frame["data"])["created_at"])
                        record.events.append((received, last, frame["event"], created))
                        if frame["event"] == "batch.completed":
                            record.completed = True
                            break
                        frame = {}
                writer.close()
        except Exception as exc:  # recorded: the report counts streams that broke
            record.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        for future in self._futures:
            self._loop.call_soon_threadsafe(future.cancel)
        time.sleep(0.2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- the webhook receiver ------------------------------------------------------------------------


class Receiver:
    """Records ``(received, batch_id, seq, type, created_at)`` of every delivery it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.deliveries: list[tuple[float, str, int, str, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received = time.time()
                event = json.loads(body)
                receiver.deliveries.append(
                    (received, event["batch_id"], event["seq"], event["type"],
                     instant(event["created_at"]))
                )  # fmt: skip
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the API process -----------------------------------------------------------------------------


class ApiProcess:
    """`pagelane api --workers 1`: a gunicorn master and the one worker process measured."""

    def __init__(self, stack: Stack) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        argv = ["-m", "service.cli", "api", "--port", str(self.port), "--workers", "1"]
        self.proc = Proc(
            [sys.executable, *argv], settings_env(stack.settings), stack.tmp / "api.log"
        )
        stack.procs.append(self.proc)
        wait_for(self._ready, 60, 0.2, "the API to answer /readyz")
        (self.worker_pid,) = self.proc.children()

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def rss_kib(self) -> int:
        return _status_field(self.worker_pid, "VmRSS")

    def threads(self) -> int:
        return _status_field(self.worker_pid, "Threads")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.worker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise KeyError(name)


@contextmanager
def cpu_meter(api: ApiProcess) -> Iterator[dict[str, float]]:
    """CPU seconds the API worker process used in the block, and per wall second."""
    out: dict[str, float] = {}
    cpu, wall, client = api.cpu_seconds(), time.monotonic(), time.process_time()
    yield out
    out["cpu_s"] = api.cpu_seconds() - cpu
    out["wall_s"] = time.monotonic() - wall
    out["cores"] = out["cpu_s"] / out["wall_s"]
    # this process: the streams' client and the webhook receiver (they share the 2 cores)
    out["client_cpu_s"] = time.process_time() - client


# --- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stream_latencies(records: list[StreamRecord]) -> list[float]:
    """Receive - created_at of every live event (created after its stream connected)."""
    return [
        received - created
        for record in records
        for received, _, _, created in record.events
        if created >= record.connected_at
    ]


def print_webhooks(figures: WebhookFigures) -> None:
    print(f"    commit → webhook  {fmt_ms(figures.total)}")
    print(f"      commit → fanned out  {fmt_ms(figures.fan_out)}")
    print(f"      fanned out → sent    {fmt_ms(figures.send)}")


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "no events"
    return (
        f"p50 {percentile(values, 0.5) * 1000:6.0f} ms  p95 {percentile(values, 0.95) * 1000:6.0f}"
        f" ms  max {max(values) * 1000:6.0f} ms  ({len(values)} events)"
    )


def submit(stack: Stack, tenant: Tenant, documents: list[bytes]) -> str:
    response = tenant.submit(stack.upload_many(tenant, documents))
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--window", type=float, default=25.0, help="seconds of each idle phase")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--copies", type=int, default=4, help="copies of the document set")
    args = parser.parse_args()
    documents = [
        (CORPUS / name).read_bytes()
        for name in (DIGITAL * args.copies + SCANS * (args.copies // 2))
    ]
    overrides = {
        "webhook_allow_private": True,
        "sse_streams_per_process": STREAMS_PER_PROCESS,
        "sse_streams_per_key": 1000,
        # metrics endpoints off: their fixed ports belong to whoever else runs on the machine
        "api_metrics_port": 0,
        "worker_metrics_port": 0,
    }
    print(f"load average before: {os.getloadavg()}")
    with bench_stack(args.database, "local", **overrides) as stack:
        tenant = stack.tenant("bench")
        receiver = Receiver()
        endpoint = tenant.post("/v1/webhook_endpoints", {"url": receiver.url})
        assert endpoint.status_code == 201, endpoint.get_json()
        api = ApiProcess(stack)
        stack.worker(concurrency=2, queues="webhooks")
        stack.beat()
        fleet = StreamFleet(api.port, tenant.key)
        try:
            run(args, stack, tenant, api, fleet, receiver, documents)
        finally:
            fleet.close()
            receiver.close()
    print(f"load average after: {os.getloadavg()}")


def run(
    args: argparse.Namespace,
    stack: Stack,
    tenant: Tenant,
    api: ApiProcess,
    fleet: StreamFleet,
    receiver: Receiver,
    documents: list[bytes],
) -> None:
    # 1. idle, no stream
    time.sleep(2)  # let the process settle after start-up
    with cpu_meter(api) as idle_none:
        time.sleep(args.window)
    rss_none, threads_none = api.rss_kib(), api.threads()

    # 2. N streams on a batch that does not move yet (no items worker runs)
    many_batch = submit(stack, tenant, documents)
    opened = time.monotonic()
    many = fleet.follow(many_batch, args.streams)
    wait_for(lambda: all(r.events or r.error for r in many), 120, 0.1, "every stream to connect")
    open_seconds = time.monotonic() - opened
    errors = [r.error for r in many if r.error]
    if errors:
        raise SystemExit(f"{len(errors)} streams failed to open, e.g. {errors[0]}")
    time.sleep(2)
    keepalives_before = [len(r.keepalives) for r in many]
    with cpu_meter(api) as idle_many:
        time.sleep(args.window)
    rss_many, threads_many = api.rss_kib(), api.threads()
    keepalives = sorted(len(r.keepalives) - b for r, b in zip(many, keepalives_before, strict=True))

    # 3. the batch runs under N streams
    stack.worker(concurrency=2)
    with cpu_meter(api) as running_many:
        wait_for(lambda: all(r.completed or r.error for r in many), 600, 0.2, "the batch")
    broken = [r.error for r in many if r.error]
    counts = sorted({len(r.events) for r in many})
    hooks_many = wait_webhooks(stack, receiver, many_batch)

    # 4. one stream, the same workload: the baseline
    one_batch = submit(stack, tenant, documents)
    (one,) = fleet.follow(one_batch, 1)
    with cpu_meter(api) as running_one:
        wait_for(lambda: one.completed or one.error, 600, 0.2, "the baseline batch")
    hooks_one = wait_webhooks(stack, receiver, one_batch)

    lat_many, lat_one = stream_latencies(many), stream_latencies([one])
    n = args.streams
    print(
        f"\nevents bench: {args.database}, `pagelane api --workers 1` (gthread, "
        f"{STREAMS_PER_PROCESS + 8} threads), items worker 2 processes, webhooks worker, beat; "
        f"{len(documents)} documents a batch"
    )
    print(f"  API worker process, idle {args.window:.0f} s:")
    print(
        f"    0 streams    RSS {rss_none / 1024:7.1f} MiB  threads {threads_none:4d}  "
        f"CPU {idle_none['cores'] * 100:5.2f} % of a core"
    )
    print(
        f"    {n} streams  RSS {rss_many / 1024:7.1f} MiB  threads {threads_many:4d}  "
        f"CPU {idle_many['cores'] * 100:5.2f} % of a core  (opened in {open_seconds:.1f} s)"
    )
    print(
        f"    RSS per stream {(rss_many - rss_none) / n:6.1f} KiB;  RSS {n} / 0 streams = "
        f"{rss_many / rss_none:.2f};  idle CPU per stream "
        f"{(idle_many['cores'] - idle_none['cores']) * 1000 / n:.3f} ms a second"
    )
    print(
        f"    keep-alives per stream in {args.window:.0f} s: min {keepalives[0]}, median "
        f"{keepalives[len(keepalives) // 2]}, max {keepalives[-1]} (one every 10 s expected)"
    )
    print(f"  the batch running, {n} streams:")
    print(
        f"    streams completed {sum(r.completed for r in many)}/{n}, broken {len(broken)}, "
        f"events per stream {counts}, connections per stream "
        f"max {max(r.connections for r in many)}"
    )
    print(f"    commit → SSE      {fmt_ms(lat_many)}")
    print_webhooks(hooks_many)
    print(
        f"    API CPU {running_many['cpu_s']:.1f} s in {running_many['wall_s']:.1f} s "
        f"({running_many['cores'] * 100:.0f} % of a core); the client's (this process) "
        f"{running_many['client_cpu_s']:.1f} s"
    )
    print("  the same workload, 1 stream (baseline):")
    print(f"    commit → SSE      {fmt_ms(lat_one)}")
    print_webhooks(hooks_one)
    print(
        f"    API CPU {running_one['cpu_s']:.1f} s in {running_one['wall_s']:.1f} s "
        f"({running_one['cores'] * 100:.0f} % of a core); the client's (this process) "
        f"{running_one['client_cpu_s']:.1f} s"
    )
    if lat_many and lat_one:
        print(
            f"  ratio SSE latency {n} streams / 1 stream: p50 "
            f"{percentile(lat_many, 0.5) / percentile(lat_one, 0.5):.2f}, p95 "
            f"{percentile(lat_many, 0.95) / percentile(lat_one, 0.95):.2f}"
        )
    if hooks_many.total and hooks_one.total:
        print(
            f"  ratio webhook latency (with {n} streams / with 1): p50 "
            f"{percentile(hooks_many.total, 0.5) / percentile(hooks_one.total, 0.5):.2f}"
        )
    print(
        f"  ratio API CPU running {n} streams / 1 stream = "
        f"{running_many['cpu_s'] / max(running_one['cpu_s'], 0.01):.1f}"
    )


@dataclass
class WebhookFigures:
    """Commit → receive of each event's first delivery, and its two legs: commit → fanned out
    (the delivery row is created by the beat tick's fan-out) and fanned out → received."""

    total: list[float]
    fan_out: list[float]
    send: list[float]


def wait_webhooks(stack: Stack, receiver: Receiver, batch_id: str) -> WebhookFigures:
    """Wait until every event of the batch was delivered; its latencies, split in two."""
    with stack.ctx.session_factory() as session:
        expected = (
            session.scalar(
                select(func.count()).select_from(Event).where(Event.batch_id == batch_id)
            )
            or 0
        )
    wait_for(
        lambda: len({s for _, b, s, _, _ in receiver.deliveries if b == batch_id}) >= expected,
        120,
        0.2,
        "every webhook delivered",
    )
    first: dict[int, tuple[float, float]] = {}  # seq -> (received, created)
    for received, batch, seq, _, created in receiver.deliveries:
        if batch == batch_id and seq not in first:
            first[seq] = (received, created)
    with stack.ctx.session_factory() as session:
        fanned = {
            seq: at.replace(tzinfo=UTC).timestamp()
            for seq, at in session.execute(
                select(WebhookDelivery.seq, func.min(WebhookDelivery.created_at))
                .where(WebhookDelivery.batch_id == batch_id)
                .group_by(WebhookDelivery.seq)
            )
        }
    return WebhookFigures(
        total=[r - c for r, c in first.values()],
        fan_out=[fanned[seq] - c for seq, (_, c) in first.items()],
        send=[r - fanned[seq] for seq, (r, _) in first.items()],
    )


if __name__ == "__main__":
    main()
