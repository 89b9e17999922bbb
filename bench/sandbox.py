"""The extraction sandbox's cost (ocr/sandbox.py), measured side by side in one run (not a test).

1. Per item: 500 one-page text PDFs extracted in-process (bench/inprocess.py's
   ``InProcessSandbox``: ``ocr.extract(data)`` in the calling process) against a warm Sandbox
   of one child, as a worker pool child would own it, the input down the pipe or written to a
   temporary file first (the worker holds the bytes from the blob store).
   This is the engine's side alone; bench/throughput.py measures the same cost through the
   whole system (the real worker against one extracting in-process).
   Rounds alternate between the two so load from other processes hits both alike; per-item
   overhead = (sandbox - in-process) / items (goal <= 2 ms) and the throughput ratio.
2. Cold start: a new Sandbox's first job (interpreter start, engine import, warm-up, the job),
   and the time until a started child reports ready.
3. IPC: a one-page result back through the pipe (JSON) against through a file.
4. The Flate pre-check of ocr/streams.py on the corpus PDFs: its time against extraction's, and
   what it saves on a refused bomb.
5. ``--memory``: each corpus document's peak RSS above an interpreter that imported the engine
   (in its own process), the figure the default memory budget is chosen against.

    python -m bench.sandbox [--items 500] [--rounds 5] [--corpus tests/corpus] [--memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ocr  # noqa: E402
from bench.inprocess import InProcessSandbox  # noqa: E402
from ocr.config import EngineConfig  # noqa: E402
from ocr.sandbox import Sandbox, SandboxLimits, input_file  # noqa: E402
from ocr.streams import check_stream_bombs  # noqa: E402

ONE_PAGE = "digital-crazyones-1p.pdf"


def _cpu_s(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of ``pid`` from /proc (10 ms ticks)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU time of ``pid`` and of each of its live descendants (a worker, its pool children and
    their sandbox children), by pid. Unlike wall time, barely moved by other processes' load;
    a process that exits takes its figure with it, so compare the pids of two snapshots."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        found = {pid: _cpu_s(pid)}
    except (FileNotFoundError, ProcessLookupError):
        return {}  # exited meanwhile
    for kid in kids:
        found.update(tree_cpu_s(int(kid)))
    return found


def per_item(
    corpus: Path, items: int, rounds: int, options: dict[str, Any] | None, *, via_file: bool
) -> None:
    data = (corpus / ONE_PAGE).read_bytes()
    per_round = max(1, items // rounds)
    wall: dict[str, list[float]] = {"in-process": [], "sandbox": []}
    cpu: dict[str, list[float]] = {"in-process": [], "sandbox": []}
    pages: list[int] = []
    # The in-process arm is the worker bench/throughput.py measures the sandbox against.
    in_process = InProcessSandbox()
    with Sandbox(1) as box:
        box.extract_bytes(data, options)  # warm, as a pool child's would be after its first item
        (pid,) = box.pids()
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), _cpu_s()
            for _ in range(per_round):
                in_process.extract_bytes(
                    data, options, filename="a.pdf", file_id="file_1", on_page=lambda d, c: None
                )
            wall["in-process"].append((time.perf_counter() - t0) / per_round)
            cpu["in-process"].append((_cpu_s() - c0) / per_round)
            t0, c0, k0 = time.perf_counter(), _cpu_s(), _cpu_s(pid)
            for _ in range(per_round):
                if via_file:
                    with input_file(data) as path:
                        box.extract(
                            path,
                            options,
                            filename="a.pdf",
                            file_id="file_1",
                            on_page=lambda d, c: pages.append(d),
                        )
                else:
                    box.extract_bytes(
                        data,
                        options,
                        filename="a.pdf",
                        file_id="file_1",
                        on_page=lambda d, c: pages.append(d),
                    )
            wall["sandbox"].append((time.perf_counter() - t0) / per_round)
            cpu["sandbox"].append((_cpu_s() - c0 + _cpu_s(pid) - k0) / per_round)
        assert box.pids() == [pid], "the child was replaced during the run"
    assert len(pages) == rounds * per_round
    label = "default options" if options is None else json.dumps(options)
    label += ", input written to a temp file" if via_file else ", input down the pipe"
    print(f"  {per_round * rounds} items, {label}:")
    for name, figures in (("wall", wall), ("CPU (parent + child)", cpu)):
        bare = statistics.median(figures["in-process"])
        boxed = statistics.median(figures["sandbox"])
        print(
            f"    {name:>21}: in-process {bare * 1e3:6.2f} ms/item, sandbox {boxed * 1e3:6.2f}"
            f" ms/item, overhead {(boxed - bare) * 1e3:+.2f} ms/item (goal <= 2),"
            f" ratio {bare / boxed:.3f}"
        )
    spread = {k: [round(v * 1e3, 2) for v in vs] for k, vs in wall.items()}
    print(f"    wall ms/item per round: {spread}")


def cold_start(corpus: Path, repeat: int = 3) -> None:
    path = corpus / ONE_PAGE
    firsts, readies = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with Sandbox(1) as box:
            box.extract(path)
            firsts.append(time.perf_counter() - t0)
        with Sandbox(1) as box:
            t0 = time.perf_counter()
            box.start()
            box.probe(path)  # waits for ready, then a ~0.5 ms job
            readies.append(time.perf_counter() - t0)
    print(
        f"  first job of a new Sandbox: {min(firsts) * 1e3:.0f} ms best,"
        f" {statistics.median(firsts) * 1e3:.0f} ms median of {repeat}"
    )
    print(f"  start() to a ready child + a probe: {min(readies) * 1e3:.0f} ms best")


def _drain(reader: Connection, count: int) -> None:
    for _ in range(count):
        json.loads(reader.recv_bytes())


def ipc(corpus: Path, repeat: int = 300) -> None:
    result = ocr.extract((corpus / ONE_PAGE).read_bytes())
    big = dict(result, chunks=result["chunks"] * 3000)
    for label, payload in (("one-page result", result), ("large result", big)):
        raw = json.dumps(payload, separators=(",", ":")).encode()
        n = repeat if len(raw) < 1 << 20 else 5
        r, w = os.pipe()
        reader, writer = Connection(r, writable=False), Connection(w, readable=False)
        thread = threading.Thread(target=_drain, args=(reader, n))
        t0 = time.perf_counter()
        thread.start()
        for _ in range(n):
            writer.send_bytes(json.dumps(payload, separators=(",", ":")).encode())
        thread.join()
        pipe = (time.perf_counter() - t0) / n
        reader.close()
        writer.close()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(n):
                target = Path(tmp) / f"r{i}.json"
                target.write_bytes(json.dumps(payload, separators=(",", ":")).encode())
                json.loads(target.read_bytes())
                target.unlink()
        file = (time.perf_counter() - t0) / n
        print(
            f"  {label} ({len(raw) / 1024:,.0f} KB JSON): pipe {pipe * 1e3:.3f} ms,"
            f" file {file * 1e3:.3f} ms (write, read, unlink)"
        )


def precheck(corpus: Path) -> None:
    cap = EngineConfig().max_decoded_stream_bytes
    check_total = extract_total = 0.0
    worst = ("", 0.0)
    for path in sorted(corpus.glob("*.pdf")):
        data = path.read_bytes()
        t0 = time.perf_counter()
        for _ in range(3):
            check_stream_bombs(data, cap)
        took = (time.perf_counter() - t0) / 3
        check_total += took
        worst = max(worst, (path.name, took), key=lambda x: x[1])
        if path.stat().st_size and not path.name.startswith(("scan-", "hybrid", "mixed")):
            t0 = time.perf_counter()
            with contextlib.suppress(ocr.ExtractionError):
                ocr.extract(data, {"ocr": "never"})
            extract_total += time.perf_counter() - t0
    n_pdfs = len(list(corpus.glob("*.pdf")))
    print(
        f"  pre-check on {n_pdfs} corpus PDFs: {check_total * 1e3:.2f} ms"
        f" in all (worst {worst[0]} {worst[1] * 1e3:.2f} ms); extracting the born-digital ones"
        f" (ocr never) {extract_total * 1e3:.0f} ms: {check_total / extract_total:.2%}"
    )
    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "hostile"))
    import make_hostile

    plain = make_hostile.flate_bomb_bypass_pdf("plain", 320)
    t0 = time.perf_counter()
    try:
        check_stream_bombs(plain, cap)
        refused = False
    except ocr.ResourceLimitError:
        refused = True
    took = time.perf_counter() - t0
    with Sandbox(1) as box:
        box.probe(corpus / ONE_PAGE)
        escaped = make_hostile.flate_bomb_bypass_pdf("escaped-name", 320)
        with input_file(escaped) as bomb:
            t0 = time.perf_counter()
            outcome = "extracted"
            try:
                box.extract(bomb)
            except ocr.ExtractionError as exc:
                outcome = exc.message
            boxed = time.perf_counter() - t0
    print(
        f"  a 320 MB content-stream bomb: the pre-check refuses it in {took * 1e3:.0f} ms"
        f" (refused={refused}, no memory); past it (escaped name), the default 2048 MB"
        f" sandbox takes {boxed * 1e3:.0f} ms: {outcome!r}"
    )


_PEAK = r"""
import json, sys, time
import ocr
base = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
t0 = time.perf_counter()
try:
    ocr.extract(open(sys.argv[1], "rb").read())
    ok = True
except ocr.ExtractionError:
    ok = False
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"ok": ok, "mb": (peak - base) / 1024, "s": time.perf_counter() - t0}))
"""


def memory(corpus: Path) -> None:
    rows = []
    for path in sorted(p for p in corpus.iterdir() if p.is_file() and p.suffix != ".txt"):
        if path.suffix in (".json", ".md"):
            continue
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK, str(path)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((out["mb"], path.name, out["s"], out["ok"]))
    rows.sort(reverse=True)
    for mb, name, secs, ok in rows[:8]:
        print(
            f"    {mb:7.0f} MB above the imported engine  {secs:6.1f} s  {'ok ' if ok else 'err'}"
            f"  {name}"
        )
    print(
        f"  largest corpus need: {rows[0][0]:.0f} MB ({rows[0][1]}); default budget"
        f" {SandboxLimits().memory_mb} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=ROOT / "tests" / "corpus")
    parser.add_argument("--memory", action="store_true", help="also measure corpus peak RSS")
    args = parser.parse_args()
    print("1. per item, warm Sandbox(1) vs in-process")
    text_only = {"extract_images": False, "extract_tables": False}
    for via_file in (False, True):
        per_item(args.corpus, args.items, args.rounds, None, via_file=via_file)
        per_item(args.corpus, args.items, args.rounds, text_only, via_file=via_file)
    print("2. cold start")
    cold_start(args.corpus)
    print("3. result transfer")
    ipc(args.corpus)
    print("4. the Flate pre-check")
    precheck(args.corpus)
    if args.memory:
        print("5. corpus peak memory (each document in its own interpreter)")
        memory(args.corpus)


if __name__ == "__main__":
    main()
