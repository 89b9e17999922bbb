"""The Extract result schema (SPEC "Extract result"): options, chunk builders and the envelope.

Chunk fields, by type:

* every chunk: ``chunk_type`` (text|table|image), ``page_no`` (1-based), ``bbox``
  ``[x0, top, x1, bottom]`` in points on the displayed page (origin top-left; image inputs:
  pixels scaled to 72 dpi), ``page_content`` (str), ``source`` (text_layer|ocr);
* OCR content adds ``confidence`` (0-100, or null when the provider reports none);
* ``table`` adds ``n_rows``, ``n_cols``, ``cells`` [{text, row, col, row_span, col_span, bbox}]
  and renders ``page_content`` as Markdown;
* ``image`` adds ``image_width``, ``image_height``, ``image_mime``, ``image_b64`` and has an empty
  ``page_content``; its ``source`` is ``text_layer`` (taken from the document, not recognised).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocr.errors import InvalidOptionsError
from ocr.geometry import BBox, round_bbox

OCR_MODES = ("auto", "force", "never")
DEFAULT_OPTIONS: Mapping[str, Any] = {
    "extract_text": True,
    "extract_images": True,
    "extract_tables": True,
    "ocr": "auto",
    "languages": ("eng",),
}
MAX_LANGUAGES = 8
#: keep a pathological document from producing megabytes of warnings
MAX_WARNINGS = 50


def normalize_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """SPEC batch ``options`` with defaults filled in. Unknown keys are dropped (the API is the
    strict validator; the engine only refuses values it cannot work with)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidOptionsError("options must be an object")
    out: dict[str, Any] = {}
    for key in ("extract_text", "extract_images", "extract_tables"):
        value = options.get(key, DEFAULT_OPTIONS[key])
        if value is None:
            value = DEFAULT_OPTIONS[key]
        if not isinstance(value, bool):
            raise InvalidOptionsError(f"options.{key} must be true or false")
        out[key] = value
    mode = options.get("ocr") or DEFAULT_OPTIONS["ocr"]
    if mode not in OCR_MODES:
        raise InvalidOptionsError("options.ocr must be one of auto, force, never")
    out["ocr"] = mode
    langs = options.get("languages")
    if langs is None:
        langs = list(DEFAULT_OPTIONS["languages"])
    if isinstance(langs, str) or not isinstance(langs, Sequence):
        raise InvalidOptionsError("options.languages must be a list of language codes")
    if not langs or len(langs) > MAX_LANGUAGES:
        raise InvalidOptionsError(f"options.languages must hold 1 to {MAX_LANGUAGES} codes")
    if not all(isinstance(x, str) for x in langs):
        raise InvalidOptionsError("options.languages must be a list of language codes")
    out["languages"] = list(dict.fromkeys(langs))  # de-duplicated, order kept
    return out


class Warnings:
    """Collects human-readable warnings, capped so a hostile document cannot flood the result."""

    def __init__(self, limit: int = MAX_WARNINGS) -> None:
        self._items: list[str] = []
        self._limit = limit
        self._dropped = 0

    def add(self, message: str) -> None:
        if message in self._items:
            return
        if len(self._items) < self._limit:
            self._items.append(message)
        else:
            self._dropped += 1

    def as_list(self) -> list[str]:
        if self._dropped:
            return [*self._items, f"{self._dropped} more warning(s) omitted"]
        return list(self._items)


def text_chunk(
    page_no: int, bbox: BBox, text: str, *, source: str, confidence: float | None = None
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "chunk_type": "text",
        "page_no": page_no,
        "bbox": round_bbox(bbox),
        "page_content": text,
        "source": source,
    }
    if source == "ocr":
        chunk["confidence"] = None if confidence is None else round(float(confidence), 1)
    return chunk


@dataclass
class Cell:
    text: str
    row: int
    col: int
    row_span: int
    col_span: int
    bbox: BBox


@dataclass
class Table:
    bbox: BBox
    n_rows: int
    n_cols: int
    cells: list[Cell] = field(default_factory=list)


def table_chunk(page_no: int, table: Table) -> dict[str, Any]:
    return {
        "chunk_type": "table",
        "page_no": page_no,
        "bbox": round_bbox(table.bbox),
        "page_content": table_markdown(table),
        "source": "text_layer",
        "n_rows": table.n_rows,
        "n_cols": table.n_cols,
        "cells": [
            {
                "text": c.text,
                "row": c.row,
                "col": c.col,
                "row_span": c.row_span,
                "col_span": c.col_span,
                "bbox": round_bbox(c.bbox),
            }
            for c in table.cells
        ],
    }


def table_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown; a merged cell's text sits in its top-left slot."""
    if table.n_rows == 0 or table.n_cols == 0:
        return ""
    grid = [[""] * table.n_cols for _ in range(table.n_rows)]
    for c in table.cells:
        if 0 <= c.row < table.n_rows and 0 <= c.col < table.n_cols:
            grid[c.row][c.col] = _md_cell(c.text)
    lines = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * table.n_cols]
    lines.extend("| " + " | ".join(row) + " |" for row in grid[1:])
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def image_chunk(
    page_no: int, bbox: BBox, *, width: int, height: int, mime: str, b64: str
) -> dict[str, Any]:
    return {
        "chunk_type": "image",
        "page_no": page_no,
        "bbox": round_bbox(bbox),
        "page_content": "",
        "source": "text_layer",
        "image_width": width,
        "image_height": height,
        "image_mime": mime,
        "image_b64": b64,
    }


def envelope(
    data: bytes,
    *,
    file_id: str | None,
    filename: str | None,
    content_type: str,
    page_count: int,
    chunks: list[dict[str, Any]],
    warnings: Warnings,
) -> dict[str, Any]:
    return {
        "object": "extraction",
        "page_count": page_count,
        "pages_billed": page_count,
        "file": {
            "id": file_id,
            "filename": filename,
            "content_type": content_type,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
        },
        "chunks": chunks,
        "warnings": warnings.as_list(),
    }


def place_in_reading_order(
    text_chunks: list[dict[str, Any]], others: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Merge tables/images into a page's text chunks: each goes before the first text chunk that
    starts below its top edge (text order itself is kept; it comes from the document)."""
    if not others:
        return text_chunks
    out = list(text_chunks)
    for item in sorted(others, key=lambda c: (c["bbox"][1], c["bbox"][0])):
        top = item["bbox"][1]
        pos = len(out)
        for i, chunk in enumerate(out):
            if chunk["chunk_type"] == "text" and chunk["bbox"][1] >= top - 1.0:
                pos = i
                break
        out.insert(pos, item)
    return out
