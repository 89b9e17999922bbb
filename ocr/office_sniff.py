"""Content sniffing of Office and web documents (called from ``ocr/sniff.py``).

* ZIP containers (OOXML, ODF, EPUB): only the central directory and at most two small named
  members are read (``mimetype``, ``[Content_Types].xml``), each inflated with a size cap, so a
  zip bomb elsewhere in the archive costs nothing here.
* OLE2 / CFB (DOC, XLS, PPT, and encrypted OOXML): the directory stream is walked with bounded,
  cycle-safe reads of the in-memory bytes; only stream names are looked at.
* RTF by its ``{\\rtf`` signature; HTML by WHATWG-style markup sniffing (after an optional BOM,
  whitespace and comments, a tag such as ``<!doctype html``, ``<html``, ``<head``, ``<body``).

Every function takes the whole input (``bytes``) and never raises on hostile structure: it
returns None ("not this format") instead.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSM = "application/vnd.ms-excel.sheet.macroEnabled.12"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
DOC = "application/msword"
XLS = "application/vnd.ms-excel"
PPT = "application/vnd.ms-powerpoint"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
ODP = "application/vnd.oasis.opendocument.presentation"
EPUB = "application/epub+zip"
RTF = "application/rtf"
HTML = "text/html"

#: the human list, for UnsupportedInputError messages
FORMATS = "DOCX, DOC, PPTX, PPT, XLSX, XLSM, XLS, ODT, ODP, ODS, RTF, HTML, EPUB"

#: main-part content types in [Content_Types].xml -> sniffed MIME (templates and macro-enabled
#: variants convert the same way; the sniffed type names the family)
_OOXML_MAIN = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml": DOCX,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml": DOCX,
    "application/vnd.ms-word.document.macroEnabled.main+xml": DOCX,
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml": DOCX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml": XLSX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml": XLSX,
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml": XLSM,
    "application/vnd.ms-excel.template.macroEnabled.main+xml": XLSM,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml": PPTX,
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml": PPTX,
    "application/vnd.openxmlformats-officedocument.presentationml.template.main+xml": PPTX,
    "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml": PPTX,
    "application/vnd.ms-powerpoint.slideshow.macroEnabled.main+xml": PPTX,
}
_OOXML_MAIN_LOWER = {k.lower(): v for k, v in _OOXML_MAIN.items()}
_ODF = {
    "application/vnd.oasis.opendocument.text": ODT,
    "application/vnd.oasis.opendocument.text-template": ODT,
    "application/vnd.oasis.opendocument.spreadsheet": ODS,
    "application/vnd.oasis.opendocument.spreadsheet-template": ODS,
    "application/vnd.oasis.opendocument.presentation": ODP,
    "application/vnd.oasis.opendocument.presentation-template": ODP,
    "application/epub+zip": EPUB,
}

#: members we inflate are small by nature; anything larger is not a manifest
MAX_MANIFEST_BYTES = 256 * 1024
#: a zip with more entries than this is not an office document we take
MAX_ZIP_ENTRIES = 20_000


@dataclass(frozen=True)
class OfficeSniff:
    content_type: str
    #: set when the document is password-protected (detected before any conversion)
    encrypted: bool = False


def read_member(zf: zipfile.ZipFile, name: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
    """A member's bytes, or None when missing or larger than ``cap`` once inflated (read in
    pieces, so the declared size is not trusted)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > cap:
        return None
    out = bytearray()
    try:
        with zf.open(info) as fh:
            while True:
                piece = fh.read(65536)
                if not piece:
                    break
                out += piece
                if len(out) > cap:
                    return None
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        NotImplementedError,
        RuntimeError,
        EOFError,
        ValueError,
    ):
        return None
    return bytes(out)


def sniff_zip(data: bytes) -> OfficeSniff | None:
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return None
    with zf:
        try:
            names = zf.namelist()
        except Exception:
            return None
        if len(names) > MAX_ZIP_ENTRIES:
            return None
        mimetype = read_member(zf, "mimetype", 256)
        if mimetype is not None:
            found = _ODF.get(mimetype.decode("ascii", "replace").strip())
            if found is not None:
                encrypted = False
                if found != EPUB:
                    manifest = read_member(zf, "META-INF/manifest.xml") or b""
                    encrypted = b"encryption-data" in manifest
                return OfficeSniff(found, encrypted)
        types = read_member(zf, "[Content_Types].xml")
        if types is None:
            return None
        for ctype in re.findall(rb'ContentType\s*=\s*"([^"]{1,200})"', types):
            found = _OOXML_MAIN_LOWER.get(ctype.decode("ascii", "replace").strip().lower())
            if found is not None:
                return OfficeSniff(found)
    return None


# -- OLE2 / Compound File Binary ------------------------------------------------------------

_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENDOFCHAIN = 0xFFFFFFFE
_MAX_DIR_ENTRIES = 50_000


def ole_stream_names(data: bytes) -> set[str] | None:
    """Names of the entries of a CFB file's directory, or None when it is not one (or is
    malformed). Reads only the FAT sectors needed to follow the directory chain."""
    if not data.startswith(_CFB_MAGIC) or len(data) < 512:
        return None
    try:
        sector_shift = struct.unpack_from("<H", data, 30)[0]
        if sector_shift not in (9, 12):
            return None
        ssize = 1 << sector_shift
        n_fat = struct.unpack_from("<I", data, 44)[0]
        dir_start = struct.unpack_from("<I", data, 48)[0]
        difat = list(struct.unpack_from("<109I", data, 76))
        n_sectors = (len(data) - ssize) // ssize + 1
        fat_sectors = [s for s in difat[: min(n_fat, 109)] if s < n_sectors]
        # more FAT sectors via the DIFAT chain
        difat_next = struct.unpack_from("<I", data, 68)[0]
        n_difat = struct.unpack_from("<I", data, 72)[0]
        seen: set[int] = set()
        while difat_next < n_sectors and len(seen) < min(n_difat, 1000) and difat_next not in seen:
            seen.add(difat_next)
            off = (difat_next + 1) * ssize
            ids = struct.unpack_from(f"<{ssize // 4}I", data, off)
            fat_sectors.extend(s for s in ids[:-1] if s < n_sectors)
            difat_next = ids[-1]

        def fat_next(sector: int) -> int:
            per = ssize // 4
            idx, pos = divmod(sector, per)
            if idx >= len(fat_sectors):
                return _ENDOFCHAIN
            return int(struct.unpack_from("<I", data, (fat_sectors[idx] + 1) * ssize + 4 * pos)[0])

        names: set[str] = set()
        sector, visited = dir_start, set()
        while sector < n_sectors and sector not in visited and len(names) < _MAX_DIR_ENTRIES:
            visited.add(sector)
            off = (sector + 1) * ssize
            for e in range(ssize // 128):
                entry = data[off + e * 128 : off + (e + 1) * 128]
                if len(entry) < 128:
                    break
                name_len = struct.unpack_from("<H", entry, 64)[0]
                if entry[66] == 0 or not 2 <= name_len <= 64:
                    continue
                names.add(entry[: name_len - 2].decode("utf-16-le", "replace"))
            sector = fat_next(sector)
        return names
    except (struct.error, IndexError, ValueError):
        return None


def sniff_ole(data: bytes) -> OfficeSniff | None:
    names = ole_stream_names(data)
    if names is None:
        return None
    if "EncryptionInfo" in names and "EncryptedPackage" in names:
        # an encrypted OOXML file (Office's "Encrypt with password")
        return OfficeSniff(DOCX, encrypted=True)
    if "WordDocument" in names:
        return OfficeSniff(DOC)
    if "Workbook" in names or "Book" in names:
        return OfficeSniff(XLS)
    if "PowerPoint Document" in names:
        return OfficeSniff(PPT)
    return None


# -- text formats ---------------------------------------------------------------------------

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<br",
    b"<p",
    b"<?xml",
)


def _decode_head(head: bytes) -> bytes:
    """UTF-16 heads are narrowed to ASCII-compatible bytes for tag matching."""
    if head.startswith(b"\xff\xfe"):
        return head[2:].decode("utf-16-le", "replace").encode("utf-8", "replace")
    if head.startswith(b"\xfe\xff"):
        return head[2:].decode("utf-16-be", "replace").encode("utf-8", "replace")
    if head.startswith(b"\xef\xbb\xbf"):
        return head[3:]
    return head


def sniff_rtf(head: bytes) -> OfficeSniff | None:
    return OfficeSniff(RTF) if _decode_head(head).lstrip().startswith(b"{\\rtf") else None


def sniff_html(head: bytes) -> OfficeSniff | None:
    """WHATWG's "text/html" sniffing: skip whitespace and comments, then a known tag name
    followed by a space or ``>``. ``<?xml`` counts only when an XHTML root follows."""
    text = _decode_head(head)
    pos = 0
    n = len(text)
    for _ in range(64):  # bounded number of leading comments
        while pos < n and text[pos] in b" \t\r\n\x0c":
            pos += 1
        if text.startswith(b"<!--", pos):
            end = text.find(b"-->", pos + 4)
            if end < 0:
                return None
            pos = end + 3
            continue
        break
    low = text[pos : pos + 64].lower()
    if low.startswith(b"<?xml"):
        return (
            OfficeSniff(HTML)
            if re.search(
                rb"<html[^>]*xmlns\s*=\s*[\"']http://www\.w3\.org/1999/xhtml", text[:4096], re.I
            )
            else None
        )
    for tag in _HTML_TAGS:
        if tag == b"<?xml":
            continue
        if low.startswith(tag) and len(low) > len(tag) and low[len(tag)] in b" \t\r\n\x0c>":
            return OfficeSniff(HTML)
    return None


def sniff_office(data: bytes) -> OfficeSniff | None:
    """The office/web format of ``data`` (the whole input), or None."""
    if data.startswith(b"PK\x03\x04"):
        return sniff_zip(data)
    if data.startswith(_CFB_MAGIC):
        return sniff_ole(data)
    head = data[:4096]
    return sniff_rtf(head) or sniff_html(head)


def zip_expanded_bytes(data: bytes) -> int | None:
    """The total size a ZIP-based document declares its members inflate to (None: not a ZIP).
    LibreOffice's package reader stops at the declared sizes (a member that inflates past its
    declared size fails its CRC check), so this bounds what it would inflate."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return sum(max(i.file_size, 0) for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return None
