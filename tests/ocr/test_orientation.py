"""Pages with little text, turned 0/90/180/270 degrees, read the right way up.

Orientation detection (OSD) is unsure on a page with one or two lines: Tesseract's own psm 1
leaves such a page as it is unless OSD's margin reaches 7, and a two-line page upside down came
out as gibberish ("sAep AUIy} UIYIM np }e}0 | ..."). The provider reads an unsure page in OSD's
guess, then in the other orientations until a reading is made of confident, well-formed words.
Pages are drawn here with DejaVu/Liberation fonts (the system's, not Pillow's bitmap font).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from ocr_testkit import text_of
from PIL import Image, ImageDraw, ImageFont

import ocr
from bench.ocr_quality import levenshtein, normalise
from ocr.tesseract import TesseractProvider, _boxes_back, _tesserocr, reading_score

FONTS = {
    "dejavu-sans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "liberation-serif": "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
}
PAGES = {
    "two-lines": ["INVOICE 4471 for Harbor Supplies", "Total due within thirty days"],
    "short": ["Meeting notes", "Room 12 at noon"],
}
BACKENDS = ["subprocess"] + (["library"] if _tesserocr() is not None else [])


def _font(name: str, size: int) -> Any:
    path = Path(FONTS[name])
    if not path.is_file():
        pytest.skip(f"font {path} is not installed")
    return ImageFont.truetype(str(path), size)


def _page(lines: list[str], font: str, dpi: int = 200) -> Image.Image:
    """A US Letter page at ``dpi`` with ``lines`` in 12 pt near the top left."""
    im = Image.new("L", (int(8.5 * dpi), 11 * dpi), 255)
    draw = ImageDraw.Draw(im)
    face = _font(font, round(12 * dpi / 72))
    y = dpi
    for line in lines:
        draw.text((dpi, y), line, fill=0, font=face)
        y += round(18 * dpi / 72)
    return im


def _png(im: Image.Image, dpi: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", dpi=(dpi, dpi))
    return buf.getvalue()


def _cer(got: str, want: str) -> float:
    return levenshtein(normalise(got), normalise(want)) / len(normalise(want))


#: every font, page and rotation on the default backend; the other backend on the hard cases
CASES = [
    (BACKENDS[-1], font, page, angle)
    for font in FONTS
    for page in PAGES
    for angle in (0, 90, 180, 270)
] + [("subprocess", "liberation-serif", "short", angle) for angle in (90, 180)] * (
    len(BACKENDS) > 1
)


@pytest.mark.parametrize(("backend", "font", "page", "angle"), CASES)
def test_little_text_reads_upright_at_any_rotation(
    backend: str, font: str, page: str, angle: int
) -> None:
    lines = PAGES[page]
    im = _page(lines, font).rotate(angle, expand=True)
    config = ocr.EngineConfig(tesseract_backend=backend)
    result = ocr.extract(_png(im, 200), config=config)
    got = text_of(result)
    want = " ".join(lines)
    assert _cer(got, want) <= 0.05, (got, want)
    for word in ("INVOICE", "Harbor", "thirty") if page == "two-lines" else ("Meeting", "noon"):
        assert word in got
    # boxes stay on the page as given (the rotated image), in points at 200 dpi
    width_pt, height_pt = im.width * 72 / 200, im.height * 72 / 200
    for chunk in result["chunks"]:
        x0, top, x1, bottom = chunk["bbox"]
        assert 0 <= x0 < x1 <= width_pt + 0.01 and 0 <= top < bottom <= height_pt + 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_upside_down_box_lands_where_the_text_is(backend: str) -> None:
    """The text sits near the top left of the upright page, so near the bottom right of the
    page turned 180 degrees: its box must say so (mapped back from the upright reading)."""
    im = _page(PAGES["two-lines"], "dejavu-sans").rotate(180)
    result = ocr.extract(_png(im, 200), config=ocr.EngineConfig(tesseract_backend=backend))
    x0, top, x1, bottom = result["chunks"][0]["bbox"]
    page_w, page_h = 8.5 * 72, 11 * 72
    assert x1 > page_w - 80 and bottom > page_h - 80
    assert x0 > page_w / 3 and top > page_h - 200


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_boxes_back_inverts_the_turn(angle: int) -> None:
    width, height = 300, 200
    im = Image.new("L", (width, height), 255)
    box = (40, 30, 70, 50)  # x0, y0, x1, y1 in the original
    im.paste(0, box)
    upright = im.transpose(
        {
            90: Image.Transpose.ROTATE_90,
            180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_270,
        }[angle]
    )
    bbox = Image.eval(upright, lambda v: 255 - v).getbbox()
    assert bbox is not None
    data: dict[str, list[Any]] = {
        "left": [bbox[0]],
        "top": [bbox[1]],
        "width": [bbox[2] - bbox[0]],
        "height": [bbox[3] - bbox[1]],
    }
    _boxes_back(data, angle, width, height)
    got = (
        data["left"][0],
        data["top"][0],
        data["left"][0] + data["width"][0],
        data["top"][0] + data["height"][0],
    )
    assert got == box


def test_reading_score_tells_upright_from_upside_down() -> None:
    def tsv(words: list[tuple[str, float]]) -> dict[str, list[Any]]:
        return {"text": [w for w, _ in words], "conf": [c for _, c in words]}

    upright = tsv([("Meeting", 96), ("notes", 95), ("Room", 96), ("12", 93), ("at", 96)])
    upside_down = tsv([("UuoOU", 70), ("ye", 30), ("ZT", 91), ("WOOY", 69), ("$9]0U", 40)])
    w_up, q_up = reading_score(upright)
    w_down, q_down = reading_score(upside_down)
    assert w_up > w_down and q_up > 0.9 and q_down < 0.6
    assert reading_score(tsv([])) == (0.0, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blank_page_costs_one_reading(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing legible in the first orientation tried: the others are not tried."""
    provider = TesseractProvider(ocr.EngineConfig(tesseract_backend=backend))
    calls: list[int] = []
    read = provider._read

    def counting(*args: Any) -> Any:
        calls.append(args[1])
        return read(*args)

    monkeypatch.setattr(provider, "_read", counting)
    try:
        blank = Image.new("L", (1700, 2200), 255)
        blank.info["dpi"] = (200, 200)
        assert provider.recognize(blank, languages=["eng"], timeout_s=30) == []
    finally:
        provider.close()
    assert calls == [0]
