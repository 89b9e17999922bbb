"""Helpers shared by the engine tests (imported by name: tests/ocr is on sys.path under pytest's
default import mode). Fixtures live in conftest.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import ocr
from tests.corpus import CORPUS

REPO = Path(__file__).resolve().parents[2]
HOSTILE_SCRIPT = REPO / "tests" / "fixtures" / "hostile" / "make_hostile.py"

ERROR_CODES = {
    "error:encrypted": "extraction_failed",
    "error:corrupt": "extraction_failed",
    "error:empty": "unsupported_input",
    "error:unsupported": "unsupported_input",
}


def load_manifest() -> list[dict[str, Any]]:
    if not (CORPUS / "MANIFEST.json").is_file():
        return []
    return json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))["files"]


def collapse(text: str) -> str:
    """The manifest's matching rule: every whitespace run becomes one space."""
    return re.sub(r"\s+", " ", text).strip()


def text_of(result: dict[str, Any], page_no: int | None = None) -> str:
    parts = [
        c["page_content"]
        for c in result["chunks"]
        if c["chunk_type"] == "text" and (page_no is None or c["page_no"] == page_no)
    ]
    return collapse(" ".join(parts))


def load_hostile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_hostile", HOSTILE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CorpusCache:
    """Extract each corpus document once per session (OCR is the slow part of this suite)."""

    def __init__(self, corpus: Path) -> None:
        self.corpus = corpus
        self._results: dict[str, dict[str, Any] | ocr.ExtractionError] = {}

    def get(self, name: str) -> dict[str, Any] | ocr.ExtractionError:
        if name not in self._results:
            data = (self.corpus / name).read_bytes()
            try:
                self._results[name] = ocr.extract(data, filename=name, file_id="file_test")
            except ocr.ExtractionError as exc:
                self._results[name] = exc
        return self._results[name]

    def names(self) -> list[str]:
        return list(self._results)


def page_sizes(data: bytes) -> list[tuple[float, float]]:
    """Displayed page sizes in points, computed independently of the engine: pdfium's rotated
    page size for PDFs; for images, pixels * 72 / dpi metadata (72 when absent or absurd)."""
    import io

    import pypdfium2 as pdfium
    from PIL import Image

    if b"%PDF-" in data[:1024]:
        pdf = pdfium.PdfDocument(data)
        try:
            return [tuple(pdf.get_page_size(i)) for i in range(len(pdf))]  # type: ignore[misc]
        finally:
            pdf.close()
    im = Image.open(io.BytesIO(data))
    n = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
    sizes = []
    for i in range(n):
        im.seek(i)
        dpi = im.info.get("dpi", (72, 72))
        d = float(dpi[0]) if isinstance(dpi, tuple) else float(dpi)
        d = float(round(d)) if abs(d - round(d)) < 0.05 else d
        d = d if 20 <= d <= 2400 else 72.0
        w, h = im.size
        if im.format == "JPEG" and (im.getexif().get(0x0112) or 1) in (5, 6, 7, 8):
            w, h = h, w
        sizes.append((w * 72 / d, h * 72 / d))
    return sizes


def check_schema(result: dict[str, Any], sizes: list[tuple[float, float]]) -> None:
    """Assert SPEC's Extract result shape, per chunk type, with every bbox inside its page."""
    import base64
    import io
    import json

    from PIL import Image

    json.dumps(result)  # JSON-ready
    assert result["object"] == "extraction"
    assert isinstance(result["page_count"], int) and result["page_count"] == len(sizes)
    assert result["pages_billed"] == result["page_count"]
    f = result["file"]
    assert set(f) == {"id", "filename", "content_type", "sha256", "size_bytes"}
    assert isinstance(f["sha256"], str) and len(f["sha256"]) == 64
    assert isinstance(result["warnings"], list)
    assert all(isinstance(w, str) for w in result["warnings"])
    last_page = 0
    eps = 0.02
    for chunk in result["chunks"]:
        kind = chunk["chunk_type"]
        assert kind in ("text", "table", "image")
        page = chunk["page_no"]
        assert isinstance(page, int) and 1 <= page <= result["page_count"]
        assert page >= last_page, "chunks are in page order"
        last_page = page
        w, h = sizes[page - 1]
        _check_bbox(chunk["bbox"], (0.0, 0.0, w, h), eps)
        assert isinstance(chunk["page_content"], str)
        assert chunk["source"] in ("text_layer", "ocr")
        if chunk["source"] == "ocr":
            conf = chunk["confidence"]
            assert conf is None or (isinstance(conf, float) and 0 <= conf <= 100)
        else:
            assert "confidence" not in chunk
        base = {"chunk_type", "page_no", "bbox", "page_content", "source"}
        if kind == "text":
            assert chunk["page_content"].strip()
            assert set(chunk) - base <= {"confidence"}
        elif kind == "table":
            assert set(chunk) - base == {"n_rows", "n_cols", "cells"}
            n_rows, n_cols = chunk["n_rows"], chunk["n_cols"]
            assert n_rows >= 1 and n_cols >= 1 and chunk["cells"]
            assert chunk["page_content"].startswith("|")
            for cell in chunk["cells"]:
                assert set(cell) == {"text", "row", "col", "row_span", "col_span", "bbox"}
                assert isinstance(cell["text"], str)
                assert cell["row"] >= 0 and cell["row"] + cell["row_span"] <= n_rows
                assert cell["col"] >= 0 and cell["col"] + cell["col_span"] <= n_cols
                assert cell["row_span"] >= 1 and cell["col_span"] >= 1
                _check_bbox(cell["bbox"], tuple(chunk["bbox"]), 0.6)
        else:
            assert set(chunk) - base == {"image_width", "image_height", "image_mime", "image_b64"}
            assert chunk["image_mime"] in ("image/png", "image/webp")
            assert chunk["page_content"] == ""
            im = Image.open(io.BytesIO(base64.b64decode(chunk["image_b64"], validate=True)))
            assert im.size == (chunk["image_width"], chunk["image_height"])
            assert Image.MIME[im.format] == chunk["image_mime"]


def _check_bbox(bbox: Any, outer: tuple[float, ...], eps: float) -> None:
    assert isinstance(bbox, list) and len(bbox) == 4
    assert all(isinstance(v, (int, float)) for v in bbox)
    x0, y0, x1, y1 = bbox
    assert x0 <= x1 and y0 <= y1, bbox
    assert outer[0] - eps <= x0 and x1 <= outer[2] + eps, (bbox, outer)
    assert outer[1] - eps <= y0 and y1 <= outer[3] + eps, (bbox, outer)


def text_image(
    lines: list[str],
    *,
    size: tuple[int, int] = (1700, 2200),
    origin: tuple[int, int] = (200, 300),
    font_px: int = 48,
    mode: str = "L",
    ink: Any = 0,
    paper: Any = 255,
) -> Any:
    """A clean 'scan': ``lines`` of text at ``origin`` (pixels), Pillow's bundled font."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_px)
    x, y = origin
    for line in lines:
        draw.text((x, y), line, fill=ink, font=font)
        y += int(font_px * 1.6)
    return im


def encode(im: Any, fmt: str, **params: Any) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()
