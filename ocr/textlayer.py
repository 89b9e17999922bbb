"""Fast text-layer extraction with pdfium: lines -> blocks of one font and size.

Why not per character: a Python loop with several ctypes calls per char costs 3-7x the bare
``FPDFText_GetText`` read, while pdfium already knows where lines break (it inserts generated
``\\r\\n``) and can union the boxes of a char range in C (``FPDFText_CountRects``). So per page we
do one text read, then a handful of calls per *line*: its rectangles, its font and its size.
Blocks are consecutive lines (in pdfium's order, which follows the content stream and is the
reading order for the documents we see) sharing font and size and stacked closely, so a paragraph
is one chunk and a heading another.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

import pypdfium2.raw as pdfium_c

from ocr.geometry import BBox, PageGeometry

# C0 controls pdfium passes through from symbol fonts; \t and \n stay.
_CONTROL_TABLE: dict[int, int | None] = {c: None for c in range(0x20) if c not in (0x09, 0x0A)}
_CONTROL_TABLE[0x7F] = None
_CONTROL_TABLE[0xFFFF] = None
_CONTROL_TABLE[0xFFFE] = ord("-")  # pdfium marks a hyphen at a line break as U+FFFE
_FONT_NAME_BUF = 256
# Undecodable glyphs: U+FFFD and the private-use planes (Unicode category "Co"), which is what
# fonts without a usable ToUnicode map give. tests/ocr/test_textlayer.py checks it against
# unicodedata over every code point.
_ASCII_NOT_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())
_GARBAGE = re.compile("[\ufffd\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")


@dataclass
class TextLine:
    text: str
    bbox: BBox  # displayed coordinates
    font: bytes
    size: float


@dataclass
class TextBlock:
    lines: list[TextLine]
    bbox: BBox

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class TextCounts:
    """What the OCR decision reads of a text layer (``pdf._needs_ocr``), counted over the
    page's whole text: so a quote (``ocr/quote.py``), which reads only this, decides exactly
    as extraction does."""

    n_chars: int  # characters pdfium found (generated spaces included)
    n_meaningful: int  # letters and digits
    n_garbage: int  # U+FFFD and private-use code points (fonts without a usable ToUnicode)

    @property
    def usable(self) -> bool:
        """A text layer worth trusting: some letters/digits, and not mostly undecodable glyphs."""
        return self.n_meaningful >= 1 and self.n_garbage <= self.n_meaningful


@dataclass(frozen=True)
class PageText(TextCounts):
    blocks: list[TextBlock]


class _Scratch:
    """Reusable ctypes out-parameters (allocating them per call would dominate the cost)."""

    def __init__(self) -> None:
        self.left, self.top = ctypes.c_double(), ctypes.c_double()
        self.right, self.bottom = ctypes.c_double(), ctypes.c_double()
        self.p = (
            ctypes.byref(self.left),
            ctypes.byref(self.top),
            ctypes.byref(self.right),
            ctypes.byref(self.bottom),
        )
        self.font = ctypes.create_string_buffer(_FONT_NAME_BUF)
        self.flags = ctypes.c_int()


def read_text_counts(textpage_raw: object) -> TextCounts:
    """The counts alone: one text read, no lines (a tenth of :func:`read_page_text`'s cost)."""
    n = pdfium_c.FPDFText_CountChars(textpage_raw)
    return count_text(_read_all(textpage_raw, n) if n > 0 else "")


def count_text(text: str) -> TextCounts:
    """Letters and digits, and garbage glyphs, of a page's text as pdfium gives it."""
    # The whole text, line breaks and blank lines included: neither holds a letter, a digit or
    # a garbage glyph, so this equals counting the lines' text (controls removed, stripped).
    if text.isascii():  # O(1) in CPython (a flag of the string); most text layers are ASCII
        # No garbage glyph is ASCII, and the ASCII code points str.isalnum accepts are exactly
        # [0-9A-Za-z]: deleting every other byte in C counts them ~15x faster than the loop.
        meaningful = len(text.encode("ascii").translate(None, _ASCII_NOT_ALNUM))
        return TextCounts(len(text), meaningful, 0)
    meaningful = sum(map(str.isalnum, text))
    return TextCounts(len(text), meaningful, len(_GARBAGE.findall(text)))


def read_page_text(textpage_raw: object, geometry: PageGeometry) -> PageText:
    """Lines and blocks of one page. ``textpage_raw`` is a loaded ``FPDF_TEXTPAGE``."""
    n = pdfium_c.FPDFText_CountChars(textpage_raw)
    if n <= 0:
        return PageText(0, 0, 0, blocks=[])
    text = _read_all(textpage_raw, n)
    counts = count_text(text)
    scratch = _Scratch()
    lines: list[TextLine] = []
    start = 0
    while start < n:
        end = text.find("\r\n", start)
        if end < 0:
            end = n
        raw_line = text[start:end]
        if raw_line.strip():
            line = _make_line(textpage_raw, start, end, raw_line, geometry, scratch)
            if line is not None:
                lines.append(line)
        start = end + 2
    return PageText(
        counts.n_chars, counts.n_meaningful, counts.n_garbage, blocks=_group_blocks(lines)
    )


def _read_all(textpage_raw: object, n: int) -> str:
    """The page text with exactly one Python char per pdfium char index.

    ``FPDFText_GetText`` (UTF-16) almost always gives that; when it does not (excluded chars,
    astral code points), fall back to ``FPDFText_GetUnicode`` per char, which always aligns.
    """
    buf = (ctypes.c_ushort * (n + 1))()
    got = pdfium_c.FPDFText_GetText(textpage_raw, 0, n, buf)
    if got > 0:
        text = bytes(memoryview(buf).cast("B")[: (got - 1) * 2]).decode("utf-16-le", "replace")
        if len(text) == n:
            return text
    get_unicode = pdfium_c.FPDFText_GetUnicode
    chars = []
    for i in range(n):
        cp = get_unicode(textpage_raw, i)
        chars.append(chr(cp) if 0 < cp < 0x110000 and not 0xD800 <= cp < 0xE000 else "\ufffd")
    return "".join(chars)


def _make_line(
    tp: object, start: int, end: int, raw: str, geometry: PageGeometry, s: _Scratch
) -> TextLine | None:
    text = raw.translate(_CONTROL_TABLE).strip()
    if not text:
        return None
    count = end - start
    n_rects = pdfium_c.FPDFText_CountRects(tp, start, count)
    x0 = y0 = float("inf")
    x1 = y1 = float("-inf")
    get_rect = pdfium_c.FPDFText_GetRect
    p_left, p_top, p_right, p_bottom = s.p
    left, top, right, bottom = s.left, s.top, s.right, s.bottom
    # CJK and letter-spaced text can have one rect per glyph: keep this loop lean
    for j in range(max(n_rects, 0)):
        if get_rect(tp, j, p_left, p_top, p_right, p_bottom):
            v = left.value
            if v < x0:
                x0 = v
            v = right.value
            if v > x1:
                x1 = v
            v = bottom.value
            if v < y0:
                y0 = v
            v = top.value
            if v > y1:
                y1 = v
    if x0 == float("inf"):
        # only zero-size glyphs (some invisible OCR layers): use the char origins instead
        for i in (start, end - 1):
            if pdfium_c.FPDFText_GetCharBox(tp, i, s.p[0], s.p[2], s.p[3], s.p[1]):
                x0 = min(x0, s.left.value)
                x1 = max(x1, s.right.value)
                y0 = min(y0, s.bottom.value)
                y1 = max(y1, s.top.value)
        if x0 == float("inf"):
            return None
    first = start + (len(raw) - len(raw.lstrip()))
    size = round(float(pdfium_c.FPDFText_GetFontSize(tp, first)), 1)
    name_len = pdfium_c.FPDFText_GetFontInfo(tp, first, s.font, _FONT_NAME_BUF, None)
    # no font, or a name longer than the buffer (which pdfium then leaves untouched): use length
    font = s.font.raw[: name_len - 1] if 0 < name_len <= _FONT_NAME_BUF else b"#%d" % name_len
    return TextLine(text, geometry.rect_to_display(x0, y0, x1, y1), font, size)


def _group_blocks(lines: list[TextLine]) -> list[TextBlock]:
    blocks: list[TextBlock] = []
    current: TextBlock | None = None
    for line in lines:
        if current is not None and _continues(current, line):
            current.lines.append(line)
            b = current.bbox
            lb = line.bbox
            current.bbox = (min(b[0], lb[0]), min(b[1], lb[1]), max(b[2], lb[2]), max(b[3], lb[3]))
        else:
            current = TextBlock([line], line.bbox)
            blocks.append(current)
    return blocks


def _continues(block: TextBlock, line: TextLine) -> bool:
    """Does ``line`` continue ``block``: same font and size, just below, overlapping columns."""
    prev = block.lines[-1]
    if line.font != prev.font or abs(line.size - prev.size) > 0.5 or len(block.lines) >= 200:
        return False
    prev_h = prev.bbox[3] - prev.bbox[1]
    line_h = line.bbox[3] - line.bbox[1]
    height = max(prev_h, line_h, 1.0)
    # a new line starts below the previous one's top, and the gap is at most about one line
    if line.bbox[1] <= prev.bbox[1] + 0.3 * height:
        return False
    if line.bbox[1] - prev.bbox[3] > max(0.9 * height, 0.6 * line.size):
        return False
    # horizontal overlap with the block (same column)
    return line.bbox[0] < block.bbox[2] and line.bbox[2] > block.bbox[0]
