"""Embedded figures become image chunks: size filter, page-sized scans skipped, per-doc cap."""

from __future__ import annotations

import base64
import io
from types import ModuleType
from typing import Any

from PIL import Image

import ocr


def _images(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["chunks"] if c["chunk_type"] == "image"]


def test_figures_become_image_chunks(hostile: ModuleType) -> None:
    result = ocr.extract(hostile.image_pdf(3))
    images = _images(result)
    assert len(images) == 3
    for chunk in images:
        assert chunk["image_mime"] == "image/png" and chunk["source"] == "text_layer"
        assert (chunk["image_width"], chunk["image_height"]) == (200, 200)
        im = Image.open(io.BytesIO(base64.b64decode(chunk["image_b64"])))
        assert im.size == (200, 200)
        x0, top, x1, bottom = chunk["bbox"]
        assert abs((x1 - x0) - 135) < 0.5 and abs((bottom - top) - 135) < 0.5
    assert images[0]["bbox"][0] == 72.0


def test_image_cap_per_document(hostile: ModuleType) -> None:
    config = ocr.EngineConfig(max_images_per_document=4)
    result = ocr.extract(hostile.image_pdf(30, pt=60), config=config)
    assert len(_images(result)) == 4
    assert any("image limit" in w for w in result["warnings"])


def test_small_images_are_decoration(hostile: ModuleType) -> None:
    assert _images(ocr.extract(hostile.image_pdf(2, px=40))) == []


def test_page_sized_scans_are_not_image_chunks(corpus_dir) -> None:  # type: ignore[no-untyped-def]
    data = (corpus_dir / "scan-generated-multipage-3p.pdf").read_bytes()
    assert _images(ocr.extract(data, {"ocr": "never"})) == []


def test_image_options(hostile: ModuleType) -> None:
    data = hostile.image_pdf(1)
    assert _images(ocr.extract(data, {"extract_images": False})) == []
    config = ocr.EngineConfig(image_format="webp", max_image_side_px=100)
    (chunk,) = _images(ocr.extract(data, config=config))
    assert chunk["image_mime"] == "image/webp"
    assert (chunk["image_width"], chunk["image_height"]) == (100, 100)


def test_figure_inside_a_form_xobject_is_placed_on_the_page(hostile: ModuleType) -> None:
    def xobjects(b: Any) -> bytes:
        img = hostile.gray_image_xobject(b, hostile.checkerboard(100, 100), 100, 100)
        form = b.stream(
            b"/Type /XObject /Subtype /Form /BBox [0 0 500 500] /Matrix [1 0 0 1 50 0]"
            b" /Resources << /XObject << /Im1 %d 0 R >> >>" % img,
            b"q 100 0 0 100 10 10 cm /Im1 Do Q",
        )
        return b"<< /Fm %d 0 R >>" % form

    data = hostile.simple_pdf([b"q 1 0 0 1 200 300 cm /Fm Do Q"], xobjects=xobjects)
    (chunk,) = _images(ocr.extract(data))
    # user space (260, 310)-(360, 410) on a 792 pt high page
    assert chunk["bbox"] == [260.0, 382.0, 360.0, 482.0]
