"""OCR speed against the bare ``tesseract`` command, side by side in one run (not a test).

The same page images (corpus scans rendered once, at the engine's dpi, the way the engine renders
them: pdfium, 8-bit gray; image inputs decoded the way the engine decodes them) go through:

* ``bare``: ``tesseract page.pgm stdout --psm 1 --dpi N -l LANGS tsv`` in a loop, with
  ``OMP_THREAD_LIMIT=1`` (a process start and a model load per page, as any CLI loop pays);
* ``provider/subprocess``: our :class:`ocr.tesseract.TesseractProvider` on the pytesseract path;
* ``tesserocr``: Tesseract's library API with nothing of ours around it: one ``PyTessBaseAPI``
  per process (model loaded once), ``--psm 1``, ``SetImageBytes`` + ``GetTSVText``, the TSV
  turned into blocks by ``blocks_from_tsv``: the engine's limit on this path;
* ``provider/library``: our provider on the tesserocr path (orientation rule included).

Figures are pages per CPU-second (= pages/s per core; the subprocess paths count their
children's CPU time) and pages per wall-second, best of ``--rounds`` with the paths interleaved
round by round (the machine is shared: load hits all paths alike), and each as a ratio of
``bare``. Each path's text is compared with ``bare``'s (CER) to show they read the same words.

    .venv/bin/python bench/ocr_speed.py [--rounds 3] [--corpus tests/corpus]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytesseract  # noqa: E402
from PIL import Image  # noqa: E402

import ocr  # noqa: E402
from bench.ocr_quality import levenshtein, normalise  # noqa: E402
from ocr import images as image_input  # noqa: E402
from ocr import pdf as pdf_input  # noqa: E402
from ocr.geometry import PageGeometry  # noqa: E402
from ocr.provider import OCRBlock  # noqa: E402
from ocr.tesseract import TesseractProvider, blocks_from_tsv, tsv_to_dict  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402

# (file, OCR languages)
DOCUMENTS = [
    ("scan-generated-multipage-3p.pdf", ["eng"]),
    ("scan-skewed-1p.pdf", ["eng"]),
    ("scan-rotated-and-skewed-1p.pdf", ["eng"]),
    ("scan-four-orientations-4p.pdf", ["eng"]),
    ("scan-french-lowres-1p.pdf", ["fra"]),
    ("image-phototest-1bit.tif", ["eng"]),
    ("image-phototest-rotated-180.png", ["eng"]),
]
OMP = {**os.environ, "OMP_THREAD_LIMIT": "1"}


@dataclass
class Page:
    name: str
    image: Image.Image
    pgm: str
    dpi: int
    langs: list[str]


def render_pages(corpus: Path, dpi: int, tmp: str) -> list[Page]:
    config = ocr.EngineConfig(ocr_dpi=dpi)
    pages: list[Page] = []
    for name, langs in DOCUMENTS:
        data = (corpus / name).read_bytes()
        images: list[tuple[Image.Image, int]] = []
        if name.endswith(".pdf"):
            doc = pdf_input.open_document(data, config)
            for i in range(len(doc)):
                page = doc[i]
                box = page.get_bbox()
                geometry = PageGeometry((box[0], box[1], box[2], box[3]), page.get_rotation())
                scale = pdf_input.render_scale(geometry, dpi, config.max_render_pixels)
                im = page.render(scale=scale, grayscale=True).to_pil().convert("L")
                images.append((im, round(scale * 72)))
                page.close()
            doc.close()
        else:
            im, count = image_input.open_image(data, config)
            for frame in image_input.iter_frames(im, count, config):
                images.append((frame.image, round(72 / frame.px_to_pt)))
        for i, (im, page_dpi) in enumerate(images):
            im.info["dpi"] = (page_dpi, page_dpi)
            path = os.path.join(tmp, f"{len(pages):03d}.pgm")
            im.save(path)
            pages.append(Page(f"{name}#{i + 1}", im, path, page_dpi, langs))
    return pages


def text_of_blocks(blocks: list[OCRBlock]) -> str:
    return normalise(" ".join(b.text for b in blocks))


def run_bare(page: Page) -> str:
    proc = subprocess.run(
        [
            "tesseract",
            page.pgm,
            "stdout",
            "--psm",
            "1",
            "--dpi",
            str(page.dpi),
            "-l",
            "+".join(page.langs),
            "tsv",
        ],
        capture_output=True,
        env=OMP,
        check=True,
    )
    return text_of_blocks(blocks_from_tsv(tsv_to_dict(proc.stdout.decode("utf-8"))))


class RawLibrary:
    """tesserocr with nothing of ours: one API per language set, psm 1, TSV out."""

    def __init__(self, datapath: str) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        self._datapath = datapath
        self._apis: dict[str, object] = {}

    def __call__(self, page: Page) -> str:
        tesserocr = self._tesserocr
        lang = "+".join(page.langs)
        api = self._apis.get(lang)
        if api is None:
            api = self._apis[lang] = tesserocr.PyTessBaseAPI(
                path=self._datapath, lang=lang, psm=tesserocr.PSM.AUTO_OSD
            )
        im = page.image
        api.SetImageBytes(im.tobytes(), im.width, im.height, 1, im.width)  # type: ignore[attr-defined]
        api.SetSourceResolution(page.dpi)  # type: ignore[attr-defined]
        api.Recognize()  # type: ignore[attr-defined]
        tsv = api.GetTSVText(0)  # type: ignore[attr-defined]
        return text_of_blocks(blocks_from_tsv(tsv_to_dict(tsv)))


def provider_path(backend: str) -> Callable[[Page], str]:
    provider = TesseractProvider(ocr.EngineConfig(tesseract_backend=backend))

    def run(page: Page) -> str:
        return text_of_blocks(provider.recognize(page.image, languages=page.langs, timeout_s=120))

    return run


def cpu_now() -> float:
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--dpi", type=int, default=ocr.EngineConfig().ocr_dpi)
    args = parser.parse_args()

    from ocr.tesseract import library_status, tessdata_dir

    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True)
    print(f"bare: {version.stdout.splitlines()[0]} (Debian);  library: {library_status()}")
    print(f"pytesseract {pytesseract.get_tesseract_version()}; tessdata {tessdata_dir()}")
    with tempfile.TemporaryDirectory(prefix="ocr-speed-") as tmp:
        pages = render_pages(Path(args.corpus), args.dpi, tmp)
        print(f"{len(pages)} pages at {args.dpi} dpi: " + ", ".join(p.name for p in pages))
        paths: dict[str, Callable[[Page], str]] = {
            "bare": run_bare,
            "provider/subprocess": provider_path("subprocess"),
        }
        if library_status().startswith("tesseract"):
            paths["tesserocr"] = RawLibrary(tessdata_dir() or "/usr/share/tesseract-ocr/5/tessdata")
            paths["provider/library"] = provider_path("library")
        # warm-up (model load of the library paths, page cache of the PGMs), and the texts
        texts = {name: [fn(p) for p in pages] for name, fn in paths.items()}
        best_cpu = dict.fromkeys(paths, float("inf"))
        best_wall = dict.fromkeys(paths, float("inf"))
        for r in range(args.rounds):
            for name, fn in paths.items():
                c0, w0 = cpu_now(), time.perf_counter()
                for p in pages:
                    fn(p)
                cpu, wall = cpu_now() - c0, time.perf_counter() - w0
                best_cpu[name] = min(best_cpu[name], cpu)
                best_wall[name] = min(best_wall[name], wall)
                print(f"  round {r + 1} {name:<20} cpu {cpu:7.2f}s wall {wall:7.2f}s", flush=True)
    n = len(pages)
    print(
        f"\n{'path':<22}{'pages/cpu-s':>12}{'vs bare':>9}{'pages/s':>10}{'vs bare':>9}"
        f"{'CER vs bare':>13}"
    )
    ref = texts["bare"]
    for name in paths:
        errors = sum(levenshtein(h, r) for h, r in zip(texts[name], ref, strict=True))
        chars = sum(len(r) for r in ref)
        print(
            f"{name:<22}{n / best_cpu[name]:>12.3f}{best_cpu['bare'] / best_cpu[name]:>8.2f}x"
            f"{n / best_wall[name]:>10.3f}{best_wall['bare'] / best_wall[name]:>8.2f}x"
            f"{100 * errors / max(1, chars):>12.2f}%"
        )
    print(f"(best of {args.rounds} interleaved rounds; {n} pages; CPU includes child processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
