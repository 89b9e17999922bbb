"""Pagelane's extraction engine: bytes in, SPEC's Extract result out.

A pure library (no Flask, Celery or SQLAlchemy; nothing from service/, tasks/ or client/).
Workers, the sync endpoint and the benchmarks all go through :func:`extract`; workers call
:func:`probe` first to reserve page quota. docs/engine.md describes the pipeline and its limits.
"""

from __future__ import annotations

from collections.abc import Iterable

from ocr.config import EngineConfig
from ocr.errors import (
    CorruptDocumentError,
    DocumentTooLargeError,
    EncryptedDocumentError,
    ExtractionError,
    ExtractionTimeoutError,
    InvalidOptionsError,
    MalformedOCRResponseError,
    OCRProviderError,
    PageLimitExceededError,
    ResourceLimitError,
    UnsupportedInputError,
    UnsupportedLanguageError,
)
from ocr.pipeline import Probe, extract, probe
from ocr.quote import quote_probe  # batch control: quotes
from ocr.result import DEFAULT_OPTIONS, normalize_options
from ocr.tesseract import available_languages as _available_languages
from ocr.tesseract import validate_languages as _validate_languages


def available_languages() -> set[str]:
    """Installed Tesseract language packs (``osd`` excluded), cached for the process."""
    return _available_languages()


def validate_languages(langs: Iterable[str]) -> list[str]:
    """Raise :class:`UnsupportedLanguageError` (code ``validation_error``) unless every code is
    an installed Tesseract pack; returns the codes de-duplicated, order kept."""
    return _validate_languages(langs)


__all__ = [
    "DEFAULT_OPTIONS",
    "CorruptDocumentError",
    "DocumentTooLargeError",
    "EncryptedDocumentError",
    "EngineConfig",
    "ExtractionError",
    "ExtractionTimeoutError",
    "InvalidOptionsError",
    "MalformedOCRResponseError",
    "OCRProviderError",
    "PageLimitExceededError",
    "Probe",
    "ResourceLimitError",
    "UnsupportedInputError",
    "UnsupportedLanguageError",
    "available_languages",
    "extract",
    "normalize_options",
    "probe",
    "quote_probe",
    "validate_languages",
]
