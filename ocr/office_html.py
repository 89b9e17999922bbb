"""HTML and EPUB before conversion: nothing remote survives, EPUB becomes one HTML page.

LibreOffice runs without network anyway (``ocr/office.py``), but the HTML handed to it is also
stripped of everything that could make it fetch: ``<script>``, ``<link>``, ``<iframe>``,
``<object>``, ``<embed>``, ``<base>``, ``<meta http-equiv=refresh>``, form controls, images
whose source is not an inline ``data:`` URI, ``url(...)``/``@import`` in CSS. Text, headings,
lists and tables stay. LibreOffice has no EPUB import, so an EPUB's spine documents (read with
size caps, like every ZIP member here) are joined into one such page.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from urllib.parse import unquote

from ocr.errors import CorruptDocumentError, ResourceLimitError
from ocr.office_sniff import read_member

_DROP_BLOCKS = re.compile(
    rb"<(script|iframe|object|embed|noscript|template|svg|math|select|textarea|button)\b.*?"
    rb"</\1\s*>",
    re.I | re.S,
)
_DROP_TAGS = re.compile(
    rb"<(link|base|input|iframe|object|embed|source|track|audio|video|frame|frameset|param|"
    rb"script|meta\s[^>]*http-equiv)\b[^>]*>",
    re.I,
)
_IMG = re.compile(rb"<img\b[^>]*>", re.I)
_CSS_URL = re.compile(rb"(@import[^;]*;?)|(url\s*\([^)]*\))", re.I)
_STYLE_BLOCK = re.compile(rb"(<style\b[^>]*>)(.*?)(</style\s*>)", re.I | re.S)
_STYLE_ATTR = re.compile(rb"""(\sstyle\s*=\s*)("[^"]*"|'[^']*')""", re.I)
_SRC_ATTRS = re.compile(
    rb"""\s(src|srcset|background|poster|lowsrc|dynsrc|longdesc|data|codebase|action|"""
    rb"""formaction|xlink:href)\s*=\s*("(?!data:)[^"]*"|'(?!data:)[^']*'|(?!["']|data:)[^\s>]+)""",
    re.I,
)

#: an EPUB's text: at most this many bytes of XHTML in total, and per spine document
MAX_EPUB_HTML_BYTES = 64 * 1024 * 1024
MAX_EPUB_DOC_BYTES = 16 * 1024 * 1024
MAX_EPUB_SPINE = 5_000


def sanitize_html(data: bytes) -> bytes:
    """The page without anything that refers to another resource (see the module doc)."""
    out = _DROP_BLOCKS.sub(b"", data)
    out = _DROP_TAGS.sub(b"", out)
    out = _IMG.sub(_keep_inline_image, out)
    out = _STYLE_BLOCK.sub(lambda m: m.group(1) + _CSS_URL.sub(b"", m.group(2)) + m.group(3), out)
    out = _STYLE_ATTR.sub(lambda m: m.group(1) + _CSS_URL.sub(b"", m.group(2)), out)
    return out


def _keep_inline_image(m: re.Match[bytes]) -> bytes:
    tag = m.group(0)
    src = re.search(rb"""\ssrc\s*=\s*("data:[^"]*"|'data:[^']*')""", tag, re.I)
    if src is None:
        alt = re.search(rb"""\salt\s*=\s*("[^"]*"|'[^']*')""", tag, re.I)
        return b"" if alt is None else b"<span>" + alt.group(1)[1:-1] + b"</span>"
    return b"<img src=" + src.group(1) + b">"


def _strip_attrs_refs(body: bytes) -> bytes:
    return _SRC_ATTRS.sub(b"", body)


def epub_to_html(data: bytes) -> bytes:
    """The spine's documents, in order, as one sanitized HTML page."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptDocumentError("The EPUB is damaged and could not be read.") from exc
    with zf:
        container = read_member(zf, "META-INF/container.xml")
        if container is None:
            raise CorruptDocumentError("The EPUB has no readable container.")
        m = re.search(rb"""full-path\s*=\s*["']([^"']+)["']""", container)
        if m is None:
            raise CorruptDocumentError("The EPUB names no package document.")
        opf_path = m.group(1).decode("utf-8", "replace")
        opf = read_member(zf, opf_path, 4 * 1024 * 1024)
        if opf is None:
            raise CorruptDocumentError("The EPUB's package document is missing or too large.")
        base = posixpath.dirname(opf_path)
        items: dict[bytes, bytes] = {}
        for tag in re.findall(rb"<(?:\w+:)?item\b[^>]*>", opf):
            i = re.search(rb"""\sid\s*=\s*["']([^"']+)["']""", tag)
            h = re.search(rb"""\shref\s*=\s*["']([^"']+)["']""", tag)
            if i and h:
                items[i.group(1)] = h.group(1)
        spine = re.findall(rb"""<(?:\w+:)?itemref\b[^>]*\sidref\s*=\s*["']([^"']+)["']""", opf)
        parts: list[bytes] = []
        total = 0
        for idref in spine[:MAX_EPUB_SPINE]:
            href = items.get(idref)
            if href is None:
                continue
            name = posixpath.normpath(
                posixpath.join(base, unquote(href.decode("utf-8", "replace")).split("#")[0])
            )
            doc = read_member(zf, name, MAX_EPUB_DOC_BYTES)
            if doc is None:
                continue
            body = re.search(rb"<body\b[^>]*>(.*)</body\s*>", doc, re.I | re.S)
            chunk = body.group(1) if body else doc
            total += len(chunk)
            if total > MAX_EPUB_HTML_BYTES:
                raise ResourceLimitError("The EPUB's text is larger than the engine allows.")
            parts.append(chunk)
    if not parts:
        raise CorruptDocumentError("The EPUB has no readable chapters.")
    joined = b'\n<p style="page-break-before: always"></p>\n'.join(parts)
    page = (
        b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        + _strip_attrs_refs(sanitize_html(joined))
        + b"</body></html>"
    )
    return page


def prepare_html(data: bytes) -> bytes:
    """A web page ready for conversion: sanitized, other references dropped."""
    return _strip_attrs_refs(sanitize_html(data))
