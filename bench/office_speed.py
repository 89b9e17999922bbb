"""Office and web documents: the warm converter against a cold ``soffice`` loop (not a test).

Side by side in one run, on the office corpus:

1. first-document latency of a just-started converter (start + first conversion + extraction,
   what a freshly started worker pays);
2. pages/s through the engine (``ocr.extract`` with the warm converter: conversion + the PDF
   path), best of ``--repeat`` passes;
3. pages/s of a bare ``soffice --headless --convert-to pdf`` loop, one process per file
   (conversion only, nothing extracted), same files. Goal: warm >= 3x the cold loop.

    .venv/bin/python bench/office_speed.py [--corpus tests/corpus/office] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ocr  # noqa: E402
from ocr.office import OfficeConverter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "corpus" / "office")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    files = [
        args.corpus / f["name"]
        for f in json.loads((args.corpus / "MANIFEST.json").read_text())["files"]
    ]
    docs = [(p.name, p.read_bytes()) for p in files]

    t0 = time.perf_counter()
    conv = OfficeConverter()
    first = ocr.extract(docs[0][1], converter=conv)
    first_latency = time.perf_counter() - t0
    print(
        f"first document ({docs[0][0]}, {first['page_count']} pages) on a just-started"
        f" converter: {first_latency:.2f} s (network isolated: {conv.network_isolated})"
    )

    pages: dict[str, int] = {}
    warm_best = float("inf")
    cold_best = float("inf")
    per_doc_warm: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "profile"
        for _ in range(args.repeat):
            t = time.perf_counter()
            for name, data in docs:
                conv._cache = None  # measure conversions, not the probe->extract cache
                d0 = time.perf_counter()
                result = ocr.extract(data, converter=conv)
                per_doc_warm[name] = min(per_doc_warm.get(name, 1e9), time.perf_counter() - d0)
                pages[name] = result["page_count"]
            warm_best = min(warm_best, time.perf_counter() - t)
            t = time.perf_counter()
            for path in files:
                subprocess.run(
                    [
                        "soffice",
                        "--headless",
                        "--norestore",
                        f"-env:UserInstallation={profile.as_uri()}",
                        "--convert-to",
                        "pdf",
                        "--outdir",
                        tmp,
                        str(path),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
            cold_best = min(cold_best, time.perf_counter() - t)
    conv.close()
    total = sum(pages.values())
    print(f"{'document':<36}{'pages':>6}{'warm s':>9}")
    for name, _ in docs:
        print(f"{name:<36}{pages[name]:>6}{per_doc_warm[name]:>9.2f}")
    warm_pps, cold_pps = total / warm_best, total / cold_best
    print(f"{len(docs)} documents, {total} pages (best of {args.repeat}):")
    print(
        f"  engine, warm converter (convert + extract): {warm_best:6.2f} s  {warm_pps:6.2f} pages/s"
    )
    print(
        f"  cold soffice --convert-to loop (convert only): {cold_best:6.2f} s"
        f"  {cold_pps:6.2f} pages/s"
    )
    print(f"  warm / cold: {warm_pps / cold_pps:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
