"""Page slices, side by side in one run on a real stack (Postgres, the bench's Redis db, moto S3,
`pagelane worker` processes with 2 pool processes each, beat):

1. speed: one N-page scanned PDF alone, unsliced (``slice_pages=0``, the baseline) and sliced
   at each of ``--sizes``: wall time from submit to terminal, as a ratio to the baseline; and
   from the worker's log, what bounds it: the coordinator's task (download, probe, slicing),
   the sum of the slice tasks against the unsliced item's task (the overhead slicing adds per
   slice), the assembly, and the busiest pool process (the slices' tail);
2. memory: a long text PDF and a long scan, sliced at ``--slice-pages``: the peak RSS of every
   process of the worker (main, pool processes, their sandbox children and anything below
   them), read as ``VmHWM`` (the kernel's high-water mark of resident memory) from
   ``/proc/<pid>/status`` of the worker's process tree every 0.2 s, so a peak between two
   samples is still seen while its process lives;
3. kills: kill -9 of one pool process (a worker process, with its slice) at a random moment
   (a random fraction of the document's pages done) while an N-page scan runs, K times; the
   worker's main process starts a replacement. Counted from the slice rows: lost items,
   slices redone and their pages, and billing (one row, exactly the page count).

Every figure is printed with the load average (other processes on the machine share its cores).

    PYTHONPATH=. python -m bench.slices [--pages 200] [--long-pages 1000] [--kills 5]
        [--slice-pages 32] [--sizes 32,16,64] [--dpi 100] [--skip speed,rss,kill]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

import bench.stack as bench_stack_module
from bench.sandbox import tree_cpu_s
from service.models import BillingEntry, Item, Slice
from service.settings import Settings, load_settings
from tests.fixtures.hostile.make_hostile import scan_pdf, text_pdf
from tests.support.live import Stack
from tests.support.stack import Proc, start_worker, wait_for

ROLES = ("worker main", "pool process", "sandbox child", "below a sandbox child")


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def scanned_pdf(pages: int, *, dpi: int) -> bytes:
    """Each page an 8-bit gray image of a dozen text lines: every page needs OCR."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(12, dpi // 4))
    images = []
    for p in range(1, pages + 1):
        im = Image.new("L", (int(8.5 * dpi), 11 * dpi), 255)
        draw = ImageDraw.Draw(im)
        for line in range(12):
            draw.text(
                (dpi // 2, dpi + line * dpi // 2),
                f"Page {p} line {line + 1}: the quick brown fox jumps over the lazy dog",
                fill=0,
                font=font,
            )
        images.append(im)
    return scan_pdf(images)


class RssSampler:
    """Peak resident memory (MB) of every process descending from ``root``, by depth (role)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak: dict[int, tuple[int, str, float]] = {}  # pid -> (depth, name, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> dict[int, int]:
        """pid -> depth below root, for the processes alive now."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        depth = {self.root: 0}
        frontier = [self.root]
        level = 0
        while frontier:
            level += 1
            frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
            depth.update(dict.fromkeys(frontier, level))
        return depth

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, depth in self._tree().items():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
                if found is None:
                    continue  # a zombie
                mb = int(found.group(1)) / 1024
                if mb > self.peak.get(pid, (0, "", 0.0))[2]:
                    self.peak[pid] = (depth, name, mb)
            time.sleep(0.2)

    def by_role(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for depth, _, mb in self.peak.values():
            role = ROLES[min(depth, len(ROLES) - 1)]
            peaks[role] = max(peaks.get(role, 0.0), mb)
        return peaks


def task_times(worker: Proc) -> dict[str, Any]:
    """From the worker's log: the item tasks', the slice tasks' and the assembly's times (ms);
    the last slice's task includes the assembly."""
    out: dict[str, Any] = {"item_ms": [], "slices_ms": []}
    for line in worker.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = str(record.get("message", ""))
        took = re.search(r" in ([\d.]+) ms$", message)
        if took is None:
            continue
        ms = float(took.group(1))
        if message.startswith("slice "):
            out["slices_ms"].append(ms)
        elif "assembled from" in message:
            out["assembly_ms"] = ms
        elif message.startswith("item "):
            out["item_ms"].append(ms)
    return out


def with_slices(settings: Settings, slice_pages: int) -> Settings:
    return load_settings(**{**settings.model_dump(), "slice_pages": slice_pages})


def run_one(stack: Stack, settings: Settings, document: bytes, name: str) -> dict[str, Any]:
    """Submit ``document`` alone to a fresh 2-process worker; wall time to terminal."""
    worker = start_worker(settings, stack.tmp, concurrency=2)
    stack.procs.append(worker)
    tenant = stack.tenant(f"{name}-{os.urandom(3).hex()}", concurrency=8, quota=10**9)
    file_ids = stack.upload_many(tenant, [document])
    time.sleep(3)  # the pool processes are up
    with RssSampler(worker.pid) as rss:
        cpu_before = tree_cpu_s(worker.pid)
        started = time.monotonic()
        batch = tenant.submit(file_ids).get_json()
        stack.wait_terminal(tenant, batch["id"], timeout=7200)
        elapsed = time.monotonic() - started
        # CPU of the worker's tree (sandbox children included; a child retired meanwhile takes
        # its share with it): CPU per page up with slices = the OCR itself got slower
        # (contention for caches or memory); flat = the slices waited on something else.
        cpu_s = sum(t - cpu_before.get(pid, 0.0) for pid, t in tree_cpu_s(worker.pid).items())
    worker.stop()
    items = stack.items(batch["id"])
    return {
        "status": items[0].status,
        "pages": items[0].page_count,
        "seconds": elapsed,
        "cpu_s": cpu_s,
        "load": load(),
        "peak_rss_mb": max((mb for _, _, mb in rss.peak.values()), default=0.0),
        "rss_by_role": rss.by_role(),
        "processes": len(rss.peak),
        "times": task_times(worker),
    }


def explain(plain: dict[str, Any], cut: dict[str, Any], slice_pages: int) -> str:
    """What bounds a sliced run's speed-up, from the two runs' task times: the coordinator
    runs alone before any slice, the slices share the 2 processes (their sum includes what
    slicing adds per slice), the rest is the tail (one process idle while the other ends the
    last slice), dispatch and the poll that sees the end."""
    unsliced_ms = sum(plain["times"]["item_ms"])
    times = cut["times"]
    slices_ms = times["slices_ms"]
    coordinator_ms = times["item_ms"][0] if times["item_ms"] else float("nan")
    assembly_ms = float(times.get("assembly_ms", float("nan")))
    overhead_ms = (sum(slices_ms) - unsliced_ms) / max(1, len(slices_ms))
    shared_s = sum(slices_ms) / 1000 / 2
    rest_s = cut["seconds"] - coordinator_ms / 1000 - shared_s
    return (
        f"    {len(slices_ms)} slices of {slice_pages}: coordinator {coordinator_ms / 1000:.1f} s,"
        f" slice tasks {sum(slices_ms) / 1000:.1f} s in all (the unsliced task:"
        f" {unsliced_ms / 1000:.1f} s; {overhead_ms:+.0f} ms a slice), so"
        f" {shared_s:.1f} s each on 2 processes; assembly {assembly_ms:.0f} ms (in the last"
        f" slice); tail, dispatch and polling {rest_s:.1f} s. Bound: 2 processes ="
        f" {plain['seconds'] / (plain['seconds'] / 2 + coordinator_ms / 1000):.2f}x at most"
        f" with this coordinator and no other overhead"
    )


def _subtree_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its children (a pool process and its sandbox child)."""
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for each in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def busy_pool_processes(worker: Proc) -> list[int]:
    """The pool processes whose sandbox child is extracting (it uses CPU): a kill of an idle
    one would cost nothing and prove nothing."""
    pool = worker.children()
    before = {pid: _subtree_cpu_ticks(pid) for pid in pool}
    time.sleep(0.5)
    return [pid for pid in pool if _subtree_cpu_ticks(pid) - before[pid] >= 3]


def kill_runs(
    stack: Stack, settings: Settings, document: bytes, kills: int, pages: int
) -> list[dict[str, Any]]:
    rng = random.Random(15)
    out = []
    worker = start_worker(settings, stack.tmp, concurrency=2)
    stack.procs.append(worker)
    for n in range(kills):
        tenant = stack.tenant(f"kill-{n}-{os.urandom(3).hex()}", concurrency=8, quota=10**9)
        batch = tenant.submit(stack.upload_many(tenant, [document])).get_json()
        item_id = batch["items"][0]["id"]
        # A random moment: when a random share of the document's pages is done.
        target = int(rng.uniform(0.05, 0.9) * pages)

        def progressed(item_id: str = item_id, target: int = target) -> bool:
            with stack.ctx.session_factory() as session:
                done = session.scalar(select(Item.pages_done).where(Item.id == item_id))
            return (done or 0) >= target

        wait_for(progressed, 1800, 0.1, f"{target} pages done")
        with stack.ctx.session_factory() as session:
            before = {
                s.id: (s.status, s.pages_done)
                for s in session.scalars(select(Slice).where(Slice.item_id == item_id))
            }
        busy_pool = busy_pool_processes(worker)
        busy = bool(busy_pool)
        victim = rng.choice(busy_pool or worker.children())
        os.kill(victim, signal.SIGKILL)
        stack.wait_terminal(tenant, batch["id"], timeout=7200)
        with stack.ctx.session_factory() as session:
            item = session.get(Item, item_id)
            assert item is not None
            slices = list(session.scalars(select(Slice).where(Slice.item_id == item_id)))
            billed = list(
                session.scalars(select(BillingEntry.pages).where(BillingEntry.id == item_id))
            )
        redone = [s for s in slices if s.attempts > 1]
        out.append(
            {
                "status": item.status,
                "lost": int(item.status != "succeeded"),
                "killed_at_pages_done": target,
                "running_at_kill": sum(st == "running" for st, _ in before.values()),
                "killed_a_busy_process": busy,
                "slices_redone": len(redone),
                "pages_redone_reported": sum(before[s.id][1] for s in redone),
                "pages_redone_at_most": sum(s.last_page - s.first_page + 1 for s in redone),
                "billed": billed,
                "exact": billed == [pages],
                "load": load(),
            }
        )
        print("  kill", n + 1, out[-1], flush=True)
    worker.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--long-pages", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    default_slice = Settings.model_fields["slice_pages"].default
    parser.add_argument("--slice-pages", type=int, default=default_slice)
    parser.add_argument("--sizes", default="32,16,64", help="slice sizes the speed run compares")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--skip", default="", help="comma list of: speed,rss,kill")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    print(f"start: {load()} on {os.cpu_count()} cores", flush=True)
    with bench_stack_module.bench_stack("postgres", "s3", lease_seconds=10) as stack:
        stack.beat()
        sliced = with_slices(stack.settings, args.slice_pages)
        scan = scanned_pdf(args.pages, dpi=args.dpi)
        print(f"scan: {args.pages} pages at {args.dpi} dpi, {len(scan) / 2**20:.1f} MB", flush=True)
        if "speed" not in skip:
            plain = run_one(stack, with_slices(stack.settings, 0), scan, "unsliced")
            print(
                f"unsliced (baseline): {plain['seconds']:.1f} s, {plain['load']}, item task"
                f" {sum(plain['times']['item_ms']) / 1000:.1f} s, worker CPU"
                f" {plain['cpu_s'] / args.pages:.3f} s a page",
                flush=True,
            )
            for size in [int(s) for s in args.sizes.split(",") if s]:
                cut = run_one(stack, with_slices(stack.settings, size), scan, f"sliced-{size}")
                print(
                    f"sliced, {size}-page slices: {cut['seconds']:.1f} s,"
                    f" {plain['seconds'] / cut['seconds']:.2f}x the unsliced baseline"
                    f" ({cut['status']}, {cut['pages']} pages), {cut['load']}, worker CPU"
                    f" {cut['cpu_s'] / args.pages:.3f} s a page"
                    f" ({cut['cpu_s'] / plain['cpu_s']:.2f}x the unsliced run's)",
                    flush=True,
                )
                print(explain(plain, cut, size), flush=True)
        if "rss" not in skip:
            long_text = text_pdf(args.long_pages, lines_per_page=40)
            long_scan = scanned_pdf(args.long_pages, dpi=args.dpi)
            for name, document in (("text", long_text), ("scan", long_scan)):
                got = run_one(stack, sliced, document, f"long-{name}")
                roles = ", ".join(f"{role} {mb:.0f} MB" for role, mb in got["rss_by_role"].items())
                print(
                    f"{args.long_pages}-page {name} ({len(document) / 2**20:.1f} MB),"
                    f" {args.slice_pages}-page slices: {got['status']} in {got['seconds']:.1f} s;"
                    f" peak RSS of any of its {got['processes']} worker processes"
                    f" {got['peak_rss_mb']:.0f} MB ({roles}), {got['load']}",
                    flush=True,
                )
        if "kill" not in skip:
            runs = kill_runs(stack, sliced, scan, args.kills, args.pages)
            print(
                f"kill -9 of a pool process x{len(runs)} ({args.slice_pages}-page slices):"
                f" lost {sum(r['lost'] for r in runs)}, slices redone"
                f" {[r['slices_redone'] for r in runs]}, pages redone (reported before the kill)"
                f" {[r['pages_redone_reported'] for r in runs]}, at most"
                f" {[r['pages_redone_at_most'] for r in runs]}, billing exact"
                f" {all(r['exact'] for r in runs)}, {load()}",
                flush=True,
            )
    print(f"end: {load()}", flush=True)


if __name__ == "__main__":
    main()
