"""Input type detection by magic bytes only (filenames and declared content types are advisory)."""

from __future__ import annotations

from dataclasses import dataclass

from ocr.errors import UnsupportedInputError

#: PDF readers accept a header anywhere in the first 1024 bytes (junk before it is common).
_PDF_HEADER_WINDOW = 1024
# BITMAPINFOHEADER sizes of the BMP variants Pillow reads.
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class Sniffed:
    """What the bytes are: ``kind`` is "pdf" or "image"; ``content_type`` the sniffed MIME."""

    kind: str
    content_type: str


def sniff(data: bytes) -> Sniffed:
    """Detect the input type or raise :class:`UnsupportedInputError`."""
    if not data:
        raise UnsupportedInputError("The file is empty (zero bytes).")
    head = bytes(data[:_PDF_HEADER_WINDOW])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Sniffed("image", "image/tiff")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "image/webp")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "image/gif")
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (
        _BMP_DIB_SIZES
    ):
        return Sniffed("image", "image/bmp")
    if b"%PDF-" in head:
        return Sniffed("pdf", "application/pdf")
    raise UnsupportedInputError(_describe_unsupported(head))


def _describe_unsupported(head: bytes) -> str:
    """A helpful, safe message naming what the bytes look like."""
    supported = "Supported: PDF, PNG, JPEG, TIFF, WebP, BMP, GIF."
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        what = "a ZIP container (ZIP, DOCX, XLSX, PPTX, ...)"
    elif head.startswith(b"\xd0\xcf\x11\xe0"):
        what = "a legacy Office document"
    elif head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        what = "an HTML page"
    elif head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")):
        what = "a compressed archive"
    elif _looks_like_text(head):
        what = "plain text"
    else:
        what = "not a supported document or image format"
    if what.startswith("not"):
        return f"The file is {what}. {supported}"
    return f"The file looks like {what}, which is not supported. {supported}"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte char cut at the window edge is still text
        try:
            text = head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
