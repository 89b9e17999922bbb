"""The README's sample documents come out of the engine as the walk-through says."""

from __future__ import annotations

from pathlib import Path

import ocr

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_the_text_sample_is_read_from_its_text_layer() -> None:
    result = ocr.extract((EXAMPLES / "sample-text-1p.pdf").read_bytes())
    assert result["page_count"] == 1
    assert {chunk["source"] for chunk in result["chunks"]} == {"text_layer"}
    text = " ".join(chunk["page_content"] for chunk in result["chunks"])
    assert "Quarterly figures: revenue 1,250 units" in text


def test_the_scan_sample_is_read_by_ocr() -> None:
    result = ocr.extract((EXAMPLES / "sample-scan-1p.png").read_bytes())
    assert {chunk["source"] for chunk in result["chunks"]} == {"ocr"}
    text = " ".join(chunk["page_content"] for chunk in result["chunks"])
    assert "scanned page has no text layer" in text
    assert all(chunk["confidence"] > 60 for chunk in result["chunks"])
