"""Page slices, side by side in one run on a real stack (Postgres, Redis db 12, moto S3, one
`pagelane worker` with 2 pool processes, beat):

1. one N-page scanned PDF alone: wall time unsliced (``slice_pages=0``) vs sliced;
2. a long text PDF and a long scan, sliced: peak RSS of every process of the worker (main,
   pool children, their sandbox children and tesseract), sampled from /proc;
3. kill -9 of the whole worker at a random moment while an N-page scan runs, K times (a fresh
   worker is started after each kill): lost items, slices redone and their pages (counted from
   the slice rows), and billing (one row, exactly the page count).

    PYTHONPATH=. python -m bench.slices [--pages 200] [--long-pages 1000] [--kills 5]
        [--slice-pages 25] [--dpi 100]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

import bench.stack as bench_stack_module
from service.models import BillingEntry, Item, Slice
from service.settings import Settings, load_settings
from tests.fixtures.hostile.make_hostile import scan_pdf, text_pdf
from tests.support.live import Stack
from tests.support.stack import start_worker, wait_for


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
    """Peak RSS (MB) of every process descending from ``root``, sampled every 0.2 s."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        found, frontier = [self.root], [self.root]
        while frontier:
            frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
            found += frontier
        return found

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            for pid in self._descendants():
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page / 2**20
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                except (OSError, ValueError):
                    continue
                if rss > self.peak.get(pid, ("", 0.0))[1]:
                    self.peak[pid] = (name, rss)
            time.sleep(0.2)


def with_slices(settings: Settings, slice_pages: int) -> Settings:
    return load_settings(**{**settings.model_dump(), "slice_pages": slice_pages})


def run_one(stack: Stack, settings: Settings, document: bytes, name: str) -> dict[str, Any]:
    """Submit ``document`` alone to a fresh 2-process worker; wall time to terminal."""
    worker = start_worker(settings, stack.tmp, concurrency=2)
    stack.procs.append(worker)
    tenant = stack.tenant(f"{name}-{os.urandom(3).hex()}", concurrency=8, quota=10**9)
    file_ids = stack.upload_many(tenant, [document])
    time.sleep(3)  # the pool and its sandboxes are up
    with RssSampler(worker.pid) as rss:
        started = time.monotonic()
        batch = tenant.submit(file_ids).get_json()
        stack.wait_terminal(tenant, batch["id"], timeout=7200)
        elapsed = time.monotonic() - started
    worker.stop()
    items = stack.items(batch["id"])
    return {
        "status": items[0].status,
        "pages": items[0].page_count,
        "seconds": elapsed,
        "peak_rss_mb": max((mb for _, mb in rss.peak.values()), default=0.0),
        "rss": sorted(rss.peak.values(), key=lambda x: -x[1])[:8],
    }


def kill_runs(
    stack: Stack, settings: Settings, document: bytes, kills: int, pages: int
) -> list[dict[str, Any]]:
    rng = random.Random(15)
    out = []
    for n in range(kills):
        doomed = start_worker(settings, stack.tmp, concurrency=2)
        stack.procs.append(doomed)
        tenant = stack.tenant(f"kill-{n}-{os.urandom(3).hex()}", concurrency=8, quota=10**9)
        batch = tenant.submit(stack.upload_many(tenant, [document])).get_json()
        item_id = batch["items"][0]["id"]

        def slices_running(item_id: str = item_id) -> bool:
            with stack.ctx.session_factory() as session:
                return bool(
                    session.scalar(
                        select(Slice.id).where(Slice.item_id == item_id, Slice.status == "running")
                    )
                )

        wait_for(slices_running, 300, 0.2, "slices to run")
        time.sleep(rng.uniform(0, 0.6 * pages * 0.65 / 2))
        with stack.ctx.session_factory() as session:
            before = {
                s.id: (s.status, s.pages_done)
                for s in session.scalars(select(Slice).where(Slice.item_id == item_id))
            }
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.process.wait(timeout=10)
        survivor = start_worker(settings, stack.tmp, concurrency=2)
        stack.procs.append(survivor)
        stack.wait_terminal(tenant, batch["id"], timeout=7200)
        survivor.stop()
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
                "lost": int(item.status in ("pending", "running")),
                "running_at_kill": sum(st == "running" for st, _ in before.values()),
                "slices_redone": len(redone),
                "pages_redone_reported": sum(before[s.id][1] for s in redone),
                "pages_redone_at_most": sum(s.last_page - s.first_page + 1 for s in redone),
                "billed": billed,
                "exact": billed == [pages],
            }
        )
        print("  kill", n + 1, out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--long-pages", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--slice-pages", type=int, default=25)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--skip", default="", help="comma list of: speed,rss,kill")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    with bench_stack_module.bench_stack("postgres", "s3", lease_seconds=10) as stack:
        stack.beat()
        sliced = with_slices(stack.settings, args.slice_pages)
        scan = scanned_pdf(args.pages, dpi=args.dpi)
        print(f"scan: {args.pages} pages at {args.dpi} dpi, {len(scan) / 2**20:.1f} MB", flush=True)
        if "speed" not in skip:
            plain = run_one(stack, with_slices(stack.settings, 0), scan, "unsliced")
            print("unsliced:", plain, flush=True)
            cut = run_one(stack, sliced, scan, "sliced")
            print("sliced:  ", cut, flush=True)
            print(
                f"{args.pages}-page scan, 2 worker processes: unsliced {plain['seconds']:.1f} s,"
                f" sliced ({args.slice_pages}-page slices) {cut['seconds']:.1f} s:"
                f" {plain['seconds'] / cut['seconds']:.2f}x",
                flush=True,
            )
        if "rss" not in skip:
            long_text = text_pdf(args.long_pages, lines_per_page=40)
            long_scan = scanned_pdf(args.long_pages, dpi=args.dpi)
            for name, document in (("text", long_text), ("scan", long_scan)):
                got = run_one(stack, sliced, document, f"long-{name}")
                print(
                    f"{args.long_pages}-page {name} ({len(document) / 2**20:.1f} MB), sliced:"
                    f" {got['seconds']:.1f} s, peak RSS of any worker process"
                    f" {got['peak_rss_mb']:.0f} MB; top: {got['rss']}",
                    flush=True,
                )
        if "kill" not in skip:
            runs = kill_runs(stack, sliced, scan, args.kills, args.pages)
            print(
                f"kill -9 x{len(runs)}: lost {sum(r['lost'] for r in runs)}, slices redone"
                f" {[r['slices_redone'] for r in runs]} (running at the kill:"
                f" {[r['running_at_kill'] for r in runs]}), pages redone at most"
                f" {[r['pages_redone_at_most'] for r in runs]}, billing exact"
                f" {all(r['exact'] for r in runs)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
