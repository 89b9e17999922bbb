"""The OCR path with real Tesseract: scanned PDFs, image inputs, modes, providers, budgets."""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any

import pytest
from ocr_testkit import encode, text_image, text_of
from PIL import Image

import ocr

LINES = ["INVOICE 4471 for Harbor Supplies", "Total due within thirty days"]


@pytest.fixture(scope="module")
def scan(hostile: ModuleType) -> bytes:
    """One US Letter page scanned at 200 dpi, text starting at pixel (200, 300)."""
    return bytes(hostile.scan_pdf([text_image(LINES)]))


def _ocr_chunks(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["chunks"] if c["source"] == "ocr"]


def test_scanned_pdf_is_ocrd_with_bbox_in_points(scan: bytes) -> None:
    result = ocr.extract(scan)
    chunks = _ocr_chunks(result)
    assert chunks and text_of(result) == " ".join(LINES)
    first = chunks[0]
    assert first["chunk_type"] == "text" and 80 <= first["confidence"] <= 100
    # pixel (200, 300) at 200 dpi is (72, 108) pt; the glyphs start a little inside that
    x0, top, x1, bottom = first["bbox"]
    assert 70 <= x0 <= 80 and 105 <= top <= 120
    assert bottom - top > 20 and x1 < 612 and bottom < 792


def test_ocr_never_leaves_scans_without_text(scan: bytes) -> None:
    result = ocr.extract(scan, {"ocr": "never"})
    assert [c for c in result["chunks"] if c["chunk_type"] == "text"] == []


def test_ocr_force_replaces_the_text_layer(hostile: ModuleType) -> None:
    data = hostile.text_pdf(1, 6)
    result = ocr.extract(data, {"ocr": "force", "extract_images": False})
    assert result["chunks"] and {c["source"] for c in result["chunks"]} == {"ocr"}
    assert "Page 1 line 1 lorem ipsum dolor sit amet" in text_of(result)


def test_sparse_text_layer_over_a_scan_is_ocrd(hostile: ModuleType) -> None:
    """A scanner's page-number stamp is a text layer, but not one that holds the page."""
    data = hostile.scan_pdf([text_image(LINES)], stamp="p. 1")
    result = ocr.extract(data)
    assert {c["source"] for c in result["chunks"] if c["chunk_type"] == "text"} == {"ocr"}
    assert "INVOICE 4471" in text_of(result)


def test_null_provider_returns_no_text_and_says_why(scan: bytes) -> None:
    result = ocr.extract(scan, config=ocr.EngineConfig(provider="null"))
    assert result["chunks"] == []
    assert any("provider: null" in w for w in result["warnings"])


def test_page_timeout_becomes_a_warning(scan: bytes) -> None:
    result = ocr.extract(scan, config=ocr.EngineConfig(tesseract_timeout_s=0.05))
    assert result["chunks"] == []
    assert any("ran out of time" in w for w in result["warnings"])


def test_document_timeout_fails_the_document(hostile: ModuleType) -> None:
    data = hostile.scan_pdf([text_image(LINES)] * 3)
    with pytest.raises(ocr.ExtractionTimeoutError) as info:
        ocr.extract(data, config=ocr.EngineConfig(document_timeout_s=0.3))
    assert info.value.code == "extraction_failed" and not info.value.transient


def test_on_page_reports_progress_and_can_abort(hostile: ModuleType) -> None:
    data = hostile.text_pdf(5, 3)
    calls: list[tuple[int, int]] = []
    ocr.extract(data, on_page=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]

    class Cancelled(Exception):
        pass

    seen: list[int] = []

    def cancel_at_two(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        ocr.extract(data, on_page=cancel_at_two)
    assert seen == [1, 2]


@pytest.mark.parametrize(
    ("fmt", "params", "content_type"),
    [
        ("PNG", {"dpi": (144, 144)}, "image/png"),
        ("JPEG", {"quality": 92}, "image/jpeg"),
        ("BMP", {}, "image/bmp"),
        ("WEBP", {"lossless": True}, "image/webp"),
        ("GIF", {}, "image/gif"),
    ],
)
def test_image_inputs_are_ocrd(fmt: str, params: dict[str, Any], content_type: str) -> None:
    im = text_image(
        LINES,
        size=(1400, 400),
        origin=(60, 80),
        mode="RGB",
        ink=(20, 20, 20),
        paper=(250, 250, 250),
    )
    data = encode(im, fmt, **params)
    result = ocr.extract(data)
    assert result["file"]["content_type"] == content_type
    assert result["page_count"] == 1
    assert "INVOICE 4471 for Harbor Supplies" in text_of(result)
    dpi = float(Image.open(io.BytesIO(data)).info.get("dpi", (72, 72))[0])  # BMP: 96 by default
    x0, _top, x1, bottom = result["chunks"][0]["bbox"]
    # pixels scaled to 72 dpi with the image's own dpi (72 when it has none)
    assert abs(x0 - 60 * 72 / dpi) < 8 and x1 <= 1400 * 72 / dpi and bottom <= 400 * 72 / dpi


def test_multi_page_tiff_is_one_page_per_frame() -> None:
    frames = [
        text_image([f"Frame number {n} of the stack"], size=(1200, 300), origin=(40, 100))
        for n in (1, 2, 3)
    ]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:], dpi=(200, 200))
    assert ocr.probe(data).page_count == 3
    result = ocr.extract(data)
    assert result["page_count"] == 3
    for n in (1, 2, 3):
        assert f"Frame number {n} of the stack" in text_of(result, n)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [
        text_image([word], size=(900, 200), origin=(40, 60)).convert("P")
        for word in ("FIRST FRAME WINS", "SECOND FRAME")
    ]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    result = ocr.extract(data)
    assert result["page_count"] == 1
    assert "FIRST FRAME WINS" in text_of(result) and "SECOND" not in text_of(result)


def test_transparent_and_16_bit_images_are_read() -> None:
    rgba = text_image(
        LINES,
        size=(1400, 400),
        origin=(60, 80),
        mode="RGBA",
        ink=(0, 0, 0, 255),
        paper=(0, 0, 0, 0),
    )
    assert "Total due within thirty days" in text_of(ocr.extract(encode(rgba, "PNG")))
    gray16 = text_image(LINES, size=(1400, 400), origin=(60, 80), mode="I;16", ink=0, paper=65535)
    assert "Total due within thirty days" in text_of(ocr.extract(encode(gray16, "PNG")))


def test_huge_image_input_is_downscaled_for_ocr() -> None:
    im = text_image(["Large poster headline"], size=(8000, 6000), origin=(400, 400), font_px=200)
    result = ocr.extract(encode(im, "PNG"), config=ocr.EngineConfig(max_render_pixels=12_000_000))
    assert "Large poster headline" in text_of(result)
    assert any("downscaled" in w for w in result["warnings"])
    assert result["chunks"][0]["bbox"][2] <= 8000  # still in 72-dpi units of the original


def test_ocr_languages_must_be_installed(scan: bytes) -> None:
    with pytest.raises(ocr.UnsupportedLanguageError) as info:
        ocr.extract(scan, {"languages": ["klingon"]})
    assert info.value.code == "validation_error"
    # OCR disabled: languages do not matter
    ocr.extract(scan, {"languages": ["klingon"], "ocr": "never"})


def test_tesseract_backend_is_configurable(scan: bytes) -> None:
    """auto = the library (tesserocr) when importable; the pytesseract path keeps working."""
    from ocr.tesseract import TesseractProvider, _tesserocr

    auto = TesseractProvider(ocr.EngineConfig())
    assert auto.backend_name == ("library" if _tesserocr() is not None else "subprocess")
    auto.close()
    for backend in ("subprocess", "library")[: 1 + (_tesserocr() is not None)]:
        result = ocr.extract(scan, config=ocr.EngineConfig(tesseract_backend=backend))
        assert text_of(result) == " ".join(LINES), backend
    with pytest.raises(ValueError, match="tesseract_backend"):
        ocr.EngineConfig(tesseract_backend="gpu")


@pytest.mark.parametrize("backend", ["subprocess", "library"])
def test_page_timeout_on_each_backend(scan: bytes, backend: str) -> None:
    from ocr.tesseract import _tesserocr

    if backend == "library" and _tesserocr() is None:
        pytest.skip("tesserocr is not installed")
    config = ocr.EngineConfig(tesseract_timeout_s=0.01, tesseract_backend=backend)
    result = ocr.extract(scan, config=config)
    assert result["chunks"] == []
    assert any("ran out of time" in w for w in result["warnings"])


def test_the_page_resolution_reaches_the_ocr_provider(scan: bytes) -> None:
    """Tesseract assumes 70 dpi without it (and then misreads tightly set pages as columns)."""
    seen: list[Any] = []

    from ocr.provider import NullProvider

    class Spy(NullProvider):
        name = "spy"

        def recognize(self, image: Any, **kwargs: Any) -> list[Any]:
            seen.append(image.info.get("dpi"))
            return []

    from ocr import pipeline

    original = pipeline.make_provider
    pipeline.make_provider = lambda config: Spy()  # type: ignore[assignment]
    try:
        ocr.extract(scan, config=ocr.EngineConfig(ocr_dpi=250))
        png = encode(text_image(LINES, size=(1400, 400)), "PNG", dpi=(144, 144))
        ocr.extract(png)
        ocr.extract(encode(text_image(LINES, size=(1400, 400)), "GIF"))
    finally:
        pipeline.make_provider = original
    assert seen[0] == pytest.approx((250, 250), abs=0.5)
    assert seen[1] == pytest.approx((144, 144), abs=0.5)
    assert seen[2] is None  # no dpi metadata: Tesseract keeps its own default
