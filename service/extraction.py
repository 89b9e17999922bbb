"""The bridge from our settings to the extraction engine's own config."""

from __future__ import annotations

import ocr
from service.settings import Settings


def ocr_config(settings: Settings) -> ocr.EngineConfig:
    """The engine's knobs from our settings (the ocr package never reads settings itself)."""
    return ocr.EngineConfig(
        max_pages=settings.max_pages,
        provider=settings.ocr_provider,
        tesseract_backend=settings.tesseract_backend,
        http_url=settings.ocr_http_url or None,
        http_model=settings.ocr_http_model or None,
        http_timeout_s=settings.ocr_http_timeout_seconds,
    )
