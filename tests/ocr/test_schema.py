"""The Extract result schema: every chunk has SPEC's fields for its type; bboxes lie on the page."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from ocr_testkit import CorpusCache, check_schema, load_manifest, page_sizes

import ocr

# every successful document except the one slow four-page scan (test_corpus.py covers it)
DOCUMENTS = [
    f
    for f in load_manifest()
    if not f["expected_outcome"].startswith("error:")
    and f["name"] != "scan-four-orientations-4p.pdf"
]


@pytest.mark.parametrize("entry", DOCUMENTS, ids=[f["name"] for f in DOCUMENTS])
def test_corpus_results_follow_the_schema(entry: dict[str, Any], corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get(entry["name"])
    assert not isinstance(result, ocr.ExtractionError)
    data = (corpus_cache.corpus / entry["name"]).read_bytes()
    check_schema(result, page_sizes(data))


def test_all_chunk_types_follow_the_schema(hostile: ModuleType) -> None:
    """A generated document with text, a ruled table and figures: all three chunk types."""
    pdfs = [
        hostile.table_pdf([["Region", "Q1", "Q2"], ["North", "10", "12"], ["South", "7", "9"]]),
        hostile.image_pdf(3),
    ]
    kinds = set()
    for data in pdfs:
        result = ocr.extract(data)
        check_schema(result, page_sizes(data))
        kinds |= {c["chunk_type"] for c in result["chunks"]}
    assert kinds == {"text", "table", "image"}


def test_options_are_echoed_through_defaults() -> None:
    assert ocr.normalize_options(None) == {
        "extract_text": True,
        "extract_images": True,
        "extract_tables": True,
        "ocr": "auto",
        "languages": ["eng"],
    }
    assert ocr.normalize_options({"ocr": "force", "languages": ["fra", "fra", "eng"]})[
        "languages"
    ] == ["fra", "eng"]
    for bad in (
        {"ocr": "sometimes"},
        {"languages": "eng"},
        {"languages": []},
        {"extract_text": "yes"},
        {"languages": [1]},
    ):
        with pytest.raises(ocr.InvalidOptionsError) as info:
            ocr.normalize_options(bad)
        assert info.value.code == "validation_error"
