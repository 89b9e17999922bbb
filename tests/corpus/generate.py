"""Write the corpus documents this repository makes itself (they replace GPL-3.0 files).

Usage: ``python tests/corpus/generate.py [OUT_DIR]`` (default: this folder). The committed
copies are the ones tests read; MANIFEST.json records their sha256 (tests/corpus/test_copies.py
checks it). Regenerating with another Pillow or zlib may give other bytes: then update
``sha256``/``size_bytes`` in MANIFEST.json and check that tests/ocr/test_corpus.py still passes.

Each stands in for a paperless-ngx sample (GPL-3.0) of the same kind, with the same text, so
the tests' assertions did not change: a 3-page scan, a 6-page PDF whose first three pages are
image-only and last three have a text layer, a one-line JPEG, a 3-frame TIFF and an RGBA PNG
drawing without text. Only Pillow (its bundled font) and the hand-written PDF writer of
tests/fixtures/hostile/make_hostile.py are used.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
MAKE_HOSTILE = HERE.parent / "fixtures" / "hostile" / "make_hostile.py"

MULTI_PAGE = "This is a multi page document. Page {}."
# US Letter scanned at 200 dpi
PAGE_PT = (612.0, 792.0)
PAGE_PX = (1700, 2200)


def _hostile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_hostile", MAKE_HOSTILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_image(lines: list[str], *, size: tuple[int, int] = PAGE_PX, font_px: int = 44) -> Any:
    """A clean grayscale 'scan' of ``lines`` in Pillow's bundled font."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("L", size, 255)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_px)
    y = 260
    for line in lines:
        draw.text((200, y), line, fill=0, font=font)
        y += int(font_px * 1.7)
    return im


def _scan_lines(page: int) -> list[str]:
    return [MULTI_PAGE.format(page), "", "Generated for the Pagelane test suite."]


def scan_multipage_pdf() -> bytes:
    """Three image-only pages (no text layer), one line of text each."""
    h = _hostile()
    return bytes(h.scan_pdf([_page_image(_scan_lines(p)) for p in (1, 2, 3)], size=PAGE_PT))


def mixed_pdf() -> bytes:
    """Pages 1-3: a page-filling grayscale image and nothing else; pages 4-6: Helvetica text."""
    h = _hostile()
    images = [_page_image(_scan_lines(p)) for p in (1, 2, 3)]

    def xobjects(b: Any) -> bytes:
        refs = []
        for i, im in enumerate(images):
            ref = h.gray_image_xobject(b, im.tobytes(), im.width, im.height)
            refs.append(b"/Im%d %d 0 R" % (i, ref))
        return b"<< " + b" ".join(refs) + b" >>"

    contents = [b"q %.2f 0 0 %.2f 0 0 cm /Im%d Do Q" % (*PAGE_PT, i) for i in range(3)]
    for page in (4, 5, 6):
        contents.append(
            h.text_ops(
                [
                    (72.0, 700.0, 16.0, MULTI_PAGE.format(page)),
                    (72.0, 670.0, 16.0, "Generated for the Pagelane test suite."),
                ]
            )
        )
    return bytes(h.simple_pdf(contents, size=PAGE_PT, xobjects=xobjects))


def simple_text_jpeg() -> bytes:
    """A small RGB photo of one line of text, 72 dpi (JFIF density)."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (520, 150), (250, 248, 240))
    font = ImageFont.load_default(size=34)
    ImageDraw.Draw(im).text((40, 55), "This is a test document.", fill=(20, 20, 30), font=font)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, dpi=(72, 72))
    return buf.getvalue()


def multipage_tiff() -> bytes:
    """Three grayscale frames at 200 dpi, Deflate-compressed."""
    frames = [_page_image(_scan_lines(p)) for p in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(
        buf,
        format="TIFF",
        save_all=True,
        append_images=frames[1:],
        compression="tiff_adobe_deflate",
        dpi=(200, 200),
    )
    return buf.getvalue()


def no_text_png() -> bytes:
    """An RGBA drawing (shapes on a transparent background) with no text in it."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (300, 225), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse((30, 30, 150, 150), fill=(230, 120, 40, 255), outline=(90, 40, 10, 255), width=4)
    draw.rectangle((170, 60, 270, 190), fill=(40, 110, 200, 200))
    draw.polygon([(60, 200), (140, 170), (220, 215)], fill=(60, 170, 80, 160))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


GENERATED: dict[str, Callable[[], bytes]] = {
    "scan-generated-multipage-3p.pdf": scan_multipage_pdf,
    "mixed-generated-scan-and-digital-pages-6p.pdf": mixed_pdf,
    "image-generated-simple-text.jpg": simple_text_jpeg,
    "image-generated-multipage-3p.tiff": multipage_tiff,
    "image-generated-no-text-alpha.png": no_text_png,
}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, make in GENERATED.items():
        data = make()
        (out / name).write_bytes(data)
        print(f"{len(data):>9}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
