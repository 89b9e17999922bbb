"""The fast text-layer path (pdfium): blocks, coordinates on rotated/cropped pages, order."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pypdfium2 as pdfium
from ocr_testkit import text_of

import ocr
from ocr.geometry import PageGeometry
from ocr.pdf import open_document
from ocr.textlayer import TextCounts, count_text, read_page_text, read_text_counts


def _text_chunks(data: bytes) -> list[dict]:
    result = ocr.extract(data, {"extract_images": False, "extract_tables": False})
    return [c for c in result["chunks"] if c["chunk_type"] == "text"]


def test_heading_and_paragraph_are_separate_blocks(hostile: ModuleType) -> None:
    ops = hostile.text_ops(
        [
            (72, 720, 20, "Annual Report"),
            (72, 690, 11, "First line of the body text goes here,"),
            (72, 676, 11, "and the paragraph continues on this line."),
            (72, 662, 11, "It ends on the third line."),
        ]
    )
    chunks = _text_chunks(hostile.simple_pdf([ops]))
    assert [c["page_content"] for c in chunks] == [
        "Annual Report",
        "First line of the body text goes here,\nand the paragraph continues on this line.\n"
        "It ends on the third line.",
    ]
    assert all(c["source"] == "text_layer" and "confidence" not in c for c in chunks)
    heading, body = (c["bbox"] for c in chunks)
    # baseline 720 pt from the bottom of a 792 pt page is 72 pt from the top; 'p' descends
    assert 72 <= heading[0] < 74 and 55 < heading[1] < 72 and 72 < heading[3] <= 78
    assert body[1] > heading[3] and body[3] < 792 - 662 + 3


def test_bbox_follows_page_rotation(hostile: ModuleType) -> None:
    """/Rotate 90: the displayed page is 792 x 612 and user (x, y) shows at (792 - ... )."""
    ops = hostile.text_ops([(72, 700, 12, "Rotated page text")])
    data = hostile.simple_pdf([ops], rotate=90)
    chunk = _text_chunks(data)[0]
    assert chunk["page_content"] == "Rotated page text"
    x0, top, x1, bottom = chunk["bbox"]
    # baseline origin user (72, 700) -> displayed (700, 72); the text runs downwards and the
    # glyphs rise towards +x (from just left of the baseline to about the cap height)
    assert 696 <= x0 <= 700 and 706 <= x1 <= 712 and 70 <= top <= 74
    assert bottom - top > 80 and bottom <= 612


def test_bbox_is_relative_to_the_crop_box(hostile: ModuleType) -> None:
    ops = hostile.text_ops([(150, 650, 12, "Inside the crop box")])
    data = hostile.simple_pdf([ops], cropbox=(100, 100, 500, 700))
    result = ocr.extract(data)
    x0, top, x1, bottom = result["chunks"][0]["bbox"]
    # user (150, 650) in a crop box starting at (100, 700-top): displayed (50, 50) baseline
    assert 49 <= x0 <= 52 and 38 <= top <= 50 and 49 <= bottom <= 54 and x1 <= 400


def test_reading_order_is_the_content_order_across_columns(hostile: ModuleType) -> None:
    left = [(72, 700 - 14 * i, 10, f"left column line {i}") for i in range(5)]
    right = [(320, 700 - 14 * i, 10, f"right column line {i}") for i in range(5)]
    chunks = _text_chunks(hostile.simple_pdf([hostile.text_ops(left + right)]))
    text = "\n".join(c["page_content"] for c in chunks)
    assert text.index("left column line 4") < text.index("right column line 0")
    assert len(chunks) == 2  # one block per column


def test_extract_text_false_returns_no_text(hostile: ModuleType) -> None:
    result = ocr.extract(hostile.text_pdf(2, 5), {"extract_text": False})
    assert result["chunks"] == [] and result["page_count"] == 2


def test_non_latin_text_layer(corpus_dir) -> None:  # type: ignore[no-untyped-def]
    data = (corpus_dir / "digital-multilang-hello-world-1p.pdf").read_bytes()
    text = text_of(ocr.extract(data))
    for hello in ("Привет, мир", "你好世界", "こんにちは世界"):
        assert hello in text


def test_thousand_page_document_is_processed_page_by_page(hostile: ModuleType) -> None:
    """1,000 pages is the limit and must work (and report progress per page); 1,001 is over it
    and fails before any page is read."""
    data = hostile.text_pdf(1000, 3)
    progress: list[int] = []
    result = ocr.extract(data, on_page=lambda done, total: progress.append(done))
    assert result["page_count"] == 1000 and progress[-1] == 1000 and len(progress) == 1000
    assert "Page 1000 line 3" in text_of(result)
    over = hostile.text_pdf(1001, 1)
    seen: list[int] = []
    try:
        ocr.extract(over, on_page=lambda done, total: seen.append(done))
    except ocr.PageLimitExceededError as exc:
        assert exc.code == "page_limit_exceeded" and seen == []
    else:
        raise AssertionError("1,001 pages must be over the limit")


def _text_pages(data: bytes) -> Iterator[tuple[object, PageGeometry]]:
    """Each page's loaded text page, of the documents extraction reads pages of."""
    try:
        doc = open_document(data, ocr.EngineConfig())
    except ocr.ExtractionError:
        return  # refused before any page is read (bombs, page limit, password, damage)
    try:
        for index in range(len(doc)):
            try:
                page = doc[index]
            except pdfium.PdfiumError:
                continue
            box = page.get_bbox()
            textpage = page.get_textpage()
            yield textpage.raw, PageGeometry((box[0], box[1], box[2], box[3]), page.get_rotation())
            textpage.close()
            page.close()
    finally:
        doc.close()


def test_the_text_layer_counts_are_those_of_the_text_extraction_reads(
    corpus_dir: Path, hostile_files: dict[str, Path]
) -> None:
    """The OCR decision's counts come from the page's whole text in one read (that is all a
    quote reads): on every page of the corpus and the hostile files they equal the letters,
    digits and garbage glyphs of the lines extraction keeps (counted here per character)."""
    paths = [*sorted(corpus_dir.glob("*.pdf")), *sorted(hostile_files.values())]
    pages = garbage_pages = 0
    for path in paths:
        for textpage, geometry in _text_pages(path.read_bytes()):
            kept = [ch for block in read_page_text(textpage, geometry).blocks for ch in block.text]
            meaningful = sum(1 for ch in kept if ch.isalnum())
            garbage = sum(1 for ch in kept if ch == "\ufffd" or unicodedata.category(ch) == "Co")
            counts = read_text_counts(textpage)
            assert (counts.n_meaningful, counts.n_garbage) == (meaningful, garbage), path
            pages += 1
            garbage_pages += garbage > 0
    assert pages > 150 and garbage_pages > 0


def test_garbage_is_replacement_and_private_use_characters() -> None:
    """The garbage pattern is U+FFFD and Unicode's category "Co", over every code point."""
    every = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    garbage = [ch for ch in every if ch == "\ufffd" or unicodedata.category(ch) == "Co"]
    others = set(every) - set(garbage)
    assert count_text("".join(garbage)).n_garbage == len(garbage) > 6000
    assert count_text("".join(others)).n_garbage == 0


def test_ascii_text_is_counted_as_the_general_path_counts_it() -> None:
    """count_text's ASCII shortcut (bytes.translate) agrees with str.isalnum on every ASCII
    code point, alone and mixed, and the general path still runs for anything else."""
    every_ascii = "".join(chr(c) for c in range(128))
    for text in (every_ascii, every_ascii * 3 + "\r\n", "Crazy ones 1984!", "", " \r\n\t"):
        assert text.isascii()
        assert count_text(text) == TextCounts(len(text), sum(map(str.isalnum, text)), 0)
    assert count_text(every_ascii + "é\ufffd") == TextCounts(130, 63, 1)
