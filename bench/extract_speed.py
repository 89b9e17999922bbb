"""Extraction speed, measured side by side in one run (not a test).

1. Text layer, on the corpus's born-digital PDFs: pages/s of the engine's text path
   (``ocr.extract`` with images and tables off) against pdfplumber's ``extract_words`` on the same
   pages (goal: >= 10x) and against a bare pypdfium2 read, page -> textpage -> get_text_range
   (goal: our chunking costs at most 3x the bare read). The engine with default options (tables
   and images on) is shown too.
2. OCR pages/s on one core at the default dpi, on the corpus's scanned pages.
3. Peak RSS of a subprocess extracting a generated 1,000-page PDF with default options
   (goal: <= 500 MB), next to the RSS of a process that only imported the engine.

    .venv/bin/python bench/extract_speed.py [--corpus tests/corpus] [--repeat 3] [--skip-ocr]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pdfplumber  # noqa: E402
import pypdfium2 as pdfium  # noqa: E402

import ocr  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402

TEXT_ONLY = {"extract_images": False, "extract_tables": False, "ocr": "auto"}
OCR_DOCUMENTS = [
    "scan-generated-multipage-3p.pdf",
    "scan-skewed-1p.pdf",
    "scan-french-lowres-1p.pdf",
]


def best_of(repeat: int, *fns: Callable[[], object]) -> list[float]:
    """Fastest of ``repeat`` runs of each function, the functions interleaved round by round,
    so load from other processes on the machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bare_pdfium(data: bytes) -> None:
    pdf = pdfium.PdfDocument(data)
    for i in range(len(pdf)):
        page = pdf[i]
        textpage = page.get_textpage()
        textpage.get_text_range()
        textpage.close()
        page.close()
    pdf.close()


def plumber_words(data: bytes) -> None:
    with pdfplumber.open(io.BytesIO(data)) as pdf:
        for page in pdf.pages:
            page.extract_words()
            page.close()


def text_layer_section(corpus: Path, repeat: int) -> None:
    manifest = json.loads((corpus / "MANIFEST.json").read_text())["files"]
    docs = [f for f in manifest if f["expected_outcome"] == "text" and not f.get("password")]
    print(f"== text layer: pages/s (best of {repeat}, interleaved; pdfplumber once) ==")
    header = (
        f"{'document':<44}{'pages':>6}{'ours':>9}{'ours+tbl':>9}{'bare':>9}"
        f"{'plumber':>9}{'vs plumber':>11}{'vs bare':>9}"
    )
    print(header)
    totals = {"pages": 0, "ours": 0.0, "full": 0.0, "bare": 0.0, "plumber": 0.0}
    for entry in docs:
        data = (corpus / entry["name"]).read_bytes()
        pages = entry["page_count"]
        ours, full, bare = best_of(
            repeat,
            functools.partial(ocr.extract, data, TEXT_ONLY),
            functools.partial(ocr.extract, data),
            functools.partial(bare_pdfium, data),
        )
        (plumber,) = best_of(1, functools.partial(plumber_words, data))
        totals["pages"] += pages
        totals["ours"] += ours
        totals["full"] += full
        totals["bare"] += bare
        totals["plumber"] += plumber
        print(
            f"{entry['name'][:43]:<44}{pages:>6}{pages / ours:>9.0f}{pages / full:>9.0f}"
            f"{pages / bare:>9.0f}{pages / plumber:>9.1f}{plumber / ours:>10.1f}x"
            f"{ours / bare:>8.2f}x",
            flush=True,
        )
    n = totals["pages"]
    print(
        f"{'ALL':<44}{n:>6}{n / totals['ours']:>9.0f}{n / totals['full']:>9.0f}"
        f"{n / totals['bare']:>9.0f}{n / totals['plumber']:>9.1f}"
        f"{totals['plumber'] / totals['ours']:>10.1f}x{totals['ours'] / totals['bare']:>8.2f}x"
    )
    print(
        f"ours = ocr.extract text path (tables/images off); ours+tbl = default options;"
        f" ms/page: ours {1000 * totals['ours'] / n:.2f}, bare {1000 * totals['bare'] / n:.2f},"
        f" pdfplumber {1000 * totals['plumber'] / n:.1f}"
    )
    print(
        f"goals: ours vs pdfplumber >= 10x -> {totals['plumber'] / totals['ours']:.1f}x;"
        f" ours vs bare <= 3x -> {totals['ours'] / totals['bare']:.2f}x"
    )


def ocr_section(corpus: Path) -> None:
    config = ocr.EngineConfig()
    print(f"\n== OCR: one core, {config.ocr_dpi} dpi, Tesseract psm {config.tesseract_psm} ==")
    pages = 0
    seconds = 0.0
    for name in OCR_DOCUMENTS:
        data = (corpus / name).read_bytes()
        t0 = time.perf_counter()
        result = ocr.extract(data, {"extract_images": False, "extract_tables": False})
        dt = time.perf_counter() - t0
        pages += result["page_count"]
        seconds += dt
        print(
            f"{name:<44}{result['page_count']:>6} pages {dt:>7.2f} s"
            f" {result['page_count'] / dt:>6.2f} pages/s"
        )
    print(
        f"{'ALL':<44}{pages:>6} pages {seconds:>7.2f} s {pages / seconds:>6.2f} pages/s per core"
        f" ({seconds / pages:.2f} s/page)"
    )


RSS_CHILD = r"""
import json, resource, sys, time
import ocr
data = open(sys.argv[1], "rb").read()
mode = sys.argv[2]
t0 = time.perf_counter()
n_chunks = pages = 0
if mode == "extract":
    result = ocr.extract(data)
    n_chunks, pages = len(result["chunks"]), result["page_count"]
    size = len(json.dumps(result))
else:
    size = 0
# VmHWM is this process's own peak; ru_maxrss also counts the parent's RSS at fork time,
# because Linux carries the old peak across exec()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "pages": pages, "chunks": n_chunks,
                  "result_bytes": size, "vm_hwm_mb": hwm / 1024,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def thousand_page_pdf() -> bytes:
    spec = importlib.util.spec_from_file_location(
        "make_hostile", ROOT / "tests" / "fixtures" / "hostile" / "make_hostile.py"
    )
    assert spec is not None and spec.loader is not None
    hostile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hostile)

    def xobjects(b: object) -> bytes:
        img = hostile.gray_image_xobject(b, hostile.checkerboard(256, 256), 256, 256)
        return b"<< /Im1 %d 0 R >>" % img

    pages = []
    for p in range(1, 1001):
        lines = [
            (
                72.0,
                760.0 - 14 * i,
                10.0,
                f"Page {p} line {i + 1}: the quick brown fox jumps"
                " over the lazy dog, again and again, to fill the line",
            )
            for i in range(45)
        ]
        ops = hostile.text_ops(lines)
        if p % 10 == 0:  # a ruled table and a figure on every tenth page
            grid = [b"%d 100 m %d 160 l S" % (x, x) for x in (72, 172, 272, 372)]
            grid += [b"72 %d m 372 %d l S" % (y, y) for y in (100, 130, 160)]
            cells = [
                (80 + 100 * c, 108 + 30 * r, 9.0, f"r{r}c{c}") for r in (0, 1) for c in (0, 1, 2)
            ]
            ops += b"\n" + b"\n".join(grid) + b"\n" + hostile.text_ops(cells)
            ops += b"\nq 120 0 0 120 420 80 cm /Im1 Do Q"
        pages.append(ops)
    return bytes(hostile.simple_pdf(pages, xobjects=xobjects))


def rss_section() -> None:
    print("\n== peak RSS, 1,000-page PDF, default options, in a subprocess ==")
    data = thousand_page_pdf()
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(data)
        f.flush()
        out = {}
        for mode in ("import", "extract"):
            proc = subprocess.run(
                [sys.executable, "-c", RSS_CHILD, f.name, mode],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    e = out["extract"]
    print(
        f"input {len(data) / 1e6:.1f} MB, {e['pages']} pages, {e['chunks']} chunks,"
        f" result JSON {e['result_bytes'] / 1e6:.1f} MB, {e['seconds']:.1f} s"
        f" ({e['pages'] / e['seconds']:.0f} pages/s)"
    )
    print(
        f"peak RSS (VmHWM): {e['vm_hwm_mb']:.0f} MB extracting (goal <= 500 MB);"
        f" {out['import']['vm_hwm_mb']:.0f} MB after imports only"
    )
    print(
        f"(ru_maxrss says {e['max_rss_mb']:.0f} MB, but on Linux it includes the bench"
        f" process's own RSS at fork time, carried across exec)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-ocr", action="store_true")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    text_layer_section(corpus, args.repeat)
    if not args.skip_ocr:
        ocr_section(corpus)
    rss_section()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
