"""Input type detection by content only (filenames and declared content types are advisory)."""

from __future__ import annotations

from dataclasses import dataclass

from ocr.errors import UnsupportedInputError
from ocr.office_sniff import FORMATS as OFFICE_FORMATS  # office/web formats (issue 14)
from ocr.office_sniff import sniff_office

#: PDF readers accept a header anywhere in the first 1024 bytes (junk before it is common).
_PDF_HEADER_WINDOW = 1024
# BITMAPINFOHEADER sizes of the BMP variants Pillow reads.
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class Sniffed:
    """What the bytes are: ``kind`` is "pdf", "image" or "office" (Office and web documents,
    converted to PDF first); ``content_type`` the sniffed MIME of the original."""

    kind: str
    content_type: str
    #: office documents only: password-protected, known before any conversion
    encrypted: bool = False


def sniff(data: bytes) -> Sniffed:
    """Detect the input type or raise :class:`UnsupportedInputError`. Pass the whole input:
    ZIP and OLE2 containers are recognised by their own directory/manifest."""
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
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in (_BMP_DIB_SIZES)
    ):
        return Sniffed("image", "image/bmp")
    if head.startswith(b"%PDF-"):
        return Sniffed("pdf", "application/pdf")
    # --- begin office/web formats (issue 14) ---
    office = sniff_office(bytes(data))
    if office is not None:
        return Sniffed("office", office.content_type, office.encrypted)
    # --- end office/web formats ---
    if b"%PDF-" in head:
        return Sniffed("pdf", "application/pdf")
    raise UnsupportedInputError(_describe_unsupported(head))


def _describe_unsupported(head: bytes) -> str:
    """A helpful, safe message naming what the bytes look like."""
    supported = f"Supported: PDF, PNG, JPEG, TIFF, WebP, BMP, GIF, {OFFICE_FORMATS}."
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        what = "a ZIP archive that is not an Office, OpenDocument or EPUB document"
    elif head.startswith(b"\xd0\xcf\x11\xe0"):
        what = "an OLE2 container that is not a Word, Excel or PowerPoint document"
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
