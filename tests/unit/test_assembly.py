"""The assembly of a sliced item's result (tasks.slices.write_assembled): written partial by
partial to a file, it must be the very JSON an unsliced extraction of the document gives."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

import ocr
from ocr.result import MAX_WARNINGS
from tasks.slices import page_ranges, write_assembled
from tests.fixtures.hostile.make_hostile import text_pdf


def assembled(page_count: int, partials: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    write_assembled(out, page_count, partials)
    return out.getvalue()


def test_partials_of_real_slices_assemble_into_the_unsliced_result_byte_for_byte() -> None:
    document = text_pdf(12, lines_per_page=6)
    whole = ocr.extract(document, file_id="file_1", filename="long.pdf")
    partials = [
        ocr.extract(document, file_id="file_1", filename="long.pdf", pages=pages)
        for pages in page_ranges(12, 5)
    ]
    # Each partial is only its slice's pages: the assembly is what joins them.
    assert [p["page_count"] for p in partials] == [5, 5, 2]

    text = assembled(12, partials)

    assert json.loads(text) == whole
    assert text == json.dumps(whole, separators=(",", ":"))
    pages = [chunk["page_no"] for chunk in json.loads(text)["chunks"]]
    assert pages == sorted(pages) and set(pages) == set(range(1, 13))


def partial(pages: range, warnings: list[str]) -> dict[str, Any]:
    return {
        "object": "extraction",
        "page_count": len(pages),
        "pages_billed": len(pages),
        "file": {
            "id": "file_2",
            "filename": "x.pdf",
            "content_type": "application/pdf",
            "sha256": "0" * 64,
            "size_bytes": 10,
        },
        "chunks": [
            {"chunk_type": "text", "page_no": p, "page_content": f'p{p}\n"quoted" \u00e9'}
            for p in pages
        ],
        "warnings": warnings,
    }


def test_chunks_keep_page_order_and_warnings_merge_under_one_cap() -> None:
    many = [f"warning {n}" for n in range(MAX_WARNINGS)]
    parts = [
        partial(range(1, 4), ["shared", *many[:10]]),
        partial(range(4, 6), ["shared", *many]),
        partial(range(6, 7), []),
    ]

    result = json.loads(assembled(6, parts))

    assert list(result) == ["object", "page_count", "pages_billed", "file", "chunks", "warnings"]
    assert (result["page_count"], result["pages_billed"]) == (6, 6)
    assert [c["page_no"] for c in result["chunks"]] == [1, 2, 3, 4, 5, 6]
    assert result["chunks"][0]["page_content"] == 'p1\n"quoted" \u00e9'
    assert result["warnings"][:2] == ["shared", "warning 0"]
    assert len(result["warnings"]) == MAX_WARNINGS + 1  # the cap, then "N more omitted"
    assert result["warnings"][-1].endswith("more warning(s) omitted")


def test_partials_are_read_one_at_a_time_as_they_are_written() -> None:
    """The assembly pulls the next partial only once the previous one is written out, so a
    generator that loads partials from the store holds one of them at a time."""
    out = io.StringIO()
    written_before_each_pull: list[int] = []

    def partials() -> Iterator[dict[str, Any]]:
        for first in (1, 3, 5):
            written_before_each_pull.append(len(out.getvalue()))
            yield partial(range(first, first + 2), [])

    write_assembled(out, 6, partials())

    assert written_before_each_pull[0] == 0
    assert written_before_each_pull[1] < written_before_each_pull[2] < len(out.getvalue())
    assert json.loads(out.getvalue())["page_count"] == 6


def test_an_empty_document_has_nothing_to_assemble() -> None:
    with pytest.raises(ValueError):
        assembled(0, [])
