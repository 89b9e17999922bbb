"""The OCR provider interface and the null provider (``ocr.pipeline`` picks the implementation).

A provider turns one page image into text blocks with pixel bboxes. The engine renders pages,
maps the pixel boxes back to points and builds chunks; providers know nothing about PDFs.

Contract for :meth:`OCRProvider.recognize`:

* ``image`` is an 8-bit ``L`` or ``RGB`` PIL image, already bounded by ``max_render_pixels``;
* it returns blocks in reading order, each with a bbox in *that image's* pixels (origin top-left)
  and a confidence 0-100 (or None when the provider has none);
* it raises :class:`PageOCRTimeout` when ``timeout_s`` runs out (the engine keeps going without
  that page's text), :class:`~ocr.errors.OCRProviderError` when the provider is unavailable
  (transient), :class:`~ocr.errors.MalformedOCRResponseError` for an answer it cannot parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class OCRBlock:
    """A recognised block (a paragraph: lines joined by newlines) in image pixels."""

    text: str
    bbox: tuple[float, float, float, float]
    confidence: float | None


class PageOCRTimeout(Exception):
    """One page's OCR ran over its time budget (not an error code of its own)."""


class OCRProvider(Protocol):
    name: str

    def recognize(
        self, image: Image.Image, *, languages: Sequence[str], timeout_s: float
    ) -> list[OCRBlock]: ...

    def close(self) -> None: ...


class NullProvider:
    """Recognises nothing: for deployments that want text layers only. Pages that would need OCR
    come back without text, and the result carries a warning saying so."""

    name = "null"

    def recognize(
        self, image: Image.Image, *, languages: Sequence[str], timeout_s: float
    ) -> list[OCRBlock]:
        return []

    def close(self) -> None:
        pass
