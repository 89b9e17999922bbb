"""OCR quality against the text layer, per DPI: picks the engine's default ``ocr_dpi`` from data.

Born-digital corpus pages are run through the production OCR path (``ocr="force"``, which
renders each page with pdfium at the configured dpi and OCRs it with Tesseract) and compared with
the same pages' text layer (``ocr="never"``). The figure is the character error rate: Levenshtein
distance / reference length, after NFKC and whitespace collapsing on both sides.

    .venv/bin/python bench/ocr_quality.py [--dpi 150,200,300] [--corpus tests/corpus]

Not a test: it prints a table (per document and overall, per dpi) and the time OCR took.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pypdfium2 as pdfium  # noqa: E402

import ocr  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402

# (file, pages (1-based) or None for all, OCR languages, "clean English" for the 3 % goal)
DOCUMENTS: list[tuple[str, list[int] | None, list[str], bool]] = [
    ("digital-crazyones-1p.pdf", None, ["eng"], True),
    ("digital-lorem-pdflatex-4p.pdf", None, ["eng"], True),
    ("digital-two-column-latex-3p.pdf", None, ["eng"], True),
    ("digital-french-minutes-2p.pdf", None, ["fra"], False),
    ("digital-german-math-book-117p.pdf", [1, 5, 91], ["deu"], False),
]


def levenshtein(a: str, b: str) -> int:
    """Edit distance, Myers/Hyyro bit-parallel (Python ints as bit vectors): O(len(a) * len(b)
    / wordsize), fast enough for whole pages."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    full = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def page_texts(result: dict, source: str) -> dict[int, str]:
    pages: dict[int, list[str]] = {}
    for chunk in result["chunks"]:
        if chunk["chunk_type"] == "text" and chunk["source"] == source:
            pages.setdefault(chunk["page_no"], []).append(chunk["page_content"])
    return {n: normalise(" ".join(parts)) for n, parts in pages.items()}


def subset(data: bytes, pages: list[int] | None) -> bytes:
    if pages is None:
        return data
    src = pdfium.PdfDocument(data)
    dst = pdfium.PdfDocument.new()
    dst.import_pages(src, [p - 1 for p in pages])
    buf = io.BytesIO()
    dst.save(buf)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dpi", default="150,200,300")
    parser.add_argument("--corpus", default=str(CORPUS))
    args = parser.parse_args()
    corpus = Path(args.corpus)
    dpis = [int(x) for x in args.dpi.split(",")]

    docs = []
    for name, pages, langs, clean in DOCUMENTS:
        data = subset((corpus / name).read_bytes(), pages)
        reference = page_texts(
            ocr.extract(data, {"ocr": "never", "extract_images": False, "extract_tables": False}),
            "text_layer",
        )
        docs.append((name, data, langs, clean, reference))

    print(f"{'document':<40} {'pages':>5} " + " ".join(f"{f'CER@{d}':>9}" for d in dpis))
    totals = {d: [0, 0] for d in dpis}  # errors, reference chars
    clean_totals = {d: [0, 0] for d in dpis}
    seconds = dict.fromkeys(dpis, 0.0)
    pages_done = dict.fromkeys(dpis, 0)
    rows = []
    for name, data, langs, clean, reference in docs:
        cells = []
        for dpi in dpis:
            config = ocr.EngineConfig(ocr_dpi=dpi)
            opts = {
                "ocr": "force",
                "languages": langs,
                "extract_images": False,
                "extract_tables": False,
            }
            t0 = time.perf_counter()
            result = ocr.extract(data, opts, config=config)
            seconds[dpi] += time.perf_counter() - t0
            pages_done[dpi] += result["page_count"]
            hyp = page_texts(result, "ocr")
            errors = sum(levenshtein(hyp.get(n, ""), ref) for n, ref in reference.items())
            chars = sum(len(ref) for ref in reference.values())
            totals[dpi][0] += errors
            totals[dpi][1] += chars
            if clean:
                clean_totals[dpi][0] += errors
                clean_totals[dpi][1] += chars
            cells.append(f"{100 * errors / max(1, chars):8.2f}%")
        rows.append(f"{name:<40} {len(reference):>5} " + " ".join(cells))
        print(rows[-1], flush=True)

    def line(label: str, acc: dict[int, list[int]]) -> str:
        return f"{label:<46} " + " ".join(
            f"{100 * acc[d][0] / max(1, acc[d][1]):8.2f}%" for d in dpis
        )

    print(line("overall", totals))
    print(line("clean English pages (goal <= 3 %)", clean_totals))
    print(
        f"{'OCR seconds per page (1 core)':<46} "
        + " ".join(f"{seconds[d] / max(1, pages_done[d]):8.2f}s" for d in dpis)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
