"""Every document of tests/corpus/MANIFEST.json: type, page count, snippets, error codes.

Real Tesseract, real pdfium; nothing is mocked. Snippets are matched the manifest's way: every
run of whitespace collapsed to one space on both sides, then an exact substring test.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from ocr_testkit import ERROR_CODES, CorpusCache, collapse, load_manifest, text_of

import ocr

MANIFEST = load_manifest()
DOCUMENTS = [f for f in MANIFEST if not f["expected_outcome"].startswith("error:")]
# four full-page scans at 300 dpi with orientation detection: ~20 s on 2 cores
SLOW = {"scan-four-orientations-4p.pdf"}


def _params(entries: list[dict[str, Any]]) -> list[Any]:
    return [
        pytest.param(f, id=f["name"], marks=[pytest.mark.slow] if f["name"] in SLOW else [])
        for f in entries
    ]


ERRORS = [f for f in MANIFEST if f["expected_outcome"].startswith("error:")]


def test_manifest_is_there() -> None:
    assert len(MANIFEST) == 34, "the corpus manifest should list 34 documents"


@pytest.mark.parametrize("entry", _params(DOCUMENTS))
def test_document_extracts(entry: dict[str, Any], corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get(entry["name"])
    assert not isinstance(result, ocr.ExtractionError), f"failed: {result!r}"
    assert result["object"] == "extraction"
    assert result["file"]["content_type"] == entry["media_type"]
    assert result["page_count"] == entry["page_count"]
    assert result["pages_billed"] == entry["page_count"]
    assert result["file"]["sha256"] == entry["sha256"]
    assert result["file"]["size_bytes"] == entry["size_bytes"]
    assert result["file"]["filename"] == entry["name"]
    assert result["file"]["id"] == "file_test"

    text = text_of(result)
    missing = [s for s in entry["expected_snippets"] if collapse(s) not in text]
    assert not missing, f"snippets not found: {missing}"

    sources = {c["source"] for c in result["chunks"] if c["chunk_type"] == "text"}
    outcome = entry["expected_outcome"]
    if outcome == "text":
        assert sources == {"text_layer"}, "a text-layer document must not need OCR"
    elif outcome == "ocr":
        assert sources == {"ocr"}
    elif outcome == "mixed":
        assert sources == {"ocr", "text_layer"}
    elif outcome == "no_text":
        letters = sum(ch.isalnum() for ch in text)
        assert letters <= 3, f"expected (near) empty text, got {text[:200]!r}"


@pytest.mark.parametrize("entry", ERRORS, ids=[f["name"] for f in ERRORS])
def test_error_document_gives_its_code(entry: dict[str, Any], corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get(entry["name"])
    assert isinstance(result, ocr.ExtractionError), "expected an extraction error"
    assert result.code == ERROR_CODES[entry["expected_outcome"]]
    assert result.transient is False
    assert result.message and "Traceback" not in result.message
    # probe() fails the same way (the worker reserves quota with it before extracting)
    data = (corpus_cache.corpus / entry["name"]).read_bytes()
    with pytest.raises(ocr.ExtractionError) as info:
        ocr.probe(data)
    assert info.value.code == result.code


@pytest.mark.parametrize("entry", DOCUMENTS, ids=[f["name"] for f in DOCUMENTS])
def test_probe_matches_manifest(entry: dict[str, Any], corpus_cache: CorpusCache) -> None:
    data = (corpus_cache.corpus / entry["name"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    info = ocr.probe(data)
    assert info.content_type == entry["media_type"]
    assert info.page_count == entry["page_count"]
    assert info.kind == ("pdf" if entry["media_type"] == "application/pdf" else "image")


def test_mixed_document_ocrs_only_pages_without_text_layer(corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get("mixed-generated-scan-and-digital-pages-6p.pdf")
    assert not isinstance(result, ocr.ExtractionError)
    by_page: dict[int, set[str]] = {}
    for chunk in result["chunks"]:
        by_page.setdefault(chunk["page_no"], set()).add(chunk["source"])
    assert by_page == {
        1: {"ocr"},
        2: {"ocr"},
        3: {"ocr"},
        4: {"text_layer"},
        5: {"text_layer"},
        6: {"text_layer"},
    }
    for page in (1, 2, 3, 6):
        assert f"This is a multi page document. Page {page}." in text_of(result, page)


@pytest.mark.slow
def test_every_orientation_reads_upright(corpus_cache: CorpusCache) -> None:
    """The four pages carry the same flyer at 0/90/180/270 degrees: every page has every snippet."""
    entry = next(f for f in MANIFEST if f["name"] == "scan-four-orientations-4p.pdf")
    result = corpus_cache.get(entry["name"])
    assert not isinstance(result, ocr.ExtractionError)
    for page in range(1, 5):
        page_text = text_of(result, page)
        missing = [s for s in entry["expected_snippets"] if collapse(s) not in page_text]
        assert not missing, f"page {page}: {missing}"


def test_ocr_confidence_is_reported(corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get("scan-generated-multipage-3p.pdf")
    assert not isinstance(result, ocr.ExtractionError)
    confidences = [c["confidence"] for c in result["chunks"] if c["source"] == "ocr"]
    assert confidences and all(0 <= c <= 100 for c in confidences)
    assert min(confidences) > 60, "clean scans should be read with high confidence"


def test_giant_page_is_rendered_at_reduced_resolution(corpus_cache: CorpusCache) -> None:
    """The 35,000 px scan: rendered within the pixel cap (with a warning), still read."""
    result = corpus_cache.get("scan-huge-mono-35000px-1p.pdf")
    assert not isinstance(result, ocr.ExtractionError)
    assert any("dpi" in w for w in result["warnings"])
    assert "This is a very big image with a tiny amount of text." in text_of(result)


def test_languages_option_reaches_tesseract(corpus_cache: CorpusCache) -> None:
    data = (corpus_cache.corpus / "scan-french-lowres-1p.pdf").read_bytes()
    text = text_of(ocr.extract(data, {"languages": ["fra"]}))
    assert "à côté de l'alcôve" in text
    assert "qualité de son" in text
