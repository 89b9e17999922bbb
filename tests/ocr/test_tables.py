"""Ruled tables: pdfium ruling lines + pdfplumber's lattice finder + pdfium cell text."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ocr_testkit import CorpusCache

import ocr

ROWS = [["Region", "Q1", "Q2"], ["North", "1,204", "1,337"], ["South", "982", "1,015"]]


def _tables(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["chunks"] if c["chunk_type"] == "table"]


def test_ruled_table_becomes_a_table_chunk(hostile: ModuleType) -> None:
    result = ocr.extract(hostile.table_pdf(ROWS))
    (table,) = _tables(result)
    assert (table["n_rows"], table["n_cols"]) == (3, 3)
    assert [[c["text"] for c in table["cells"] if c["row"] == r] for r in range(3)] == ROWS
    assert all(c["row_span"] == 1 and c["col_span"] == 1 for c in table["cells"])
    assert table["page_content"] == (
        "| Region | Q1 | Q2 |\n|---|---|---|\n| North | 1,204 | 1,337 |\n| South | 982 | 1,015 |"
    )
    assert table["source"] == "text_layer"
    # 72 pt from the left, 92 pt from the top (700 pt from the bottom of 792)
    x0, top, x1, bottom = table["bbox"]
    assert abs(x0 - 72) < 1 and abs(top - 92) < 1 and abs(x1 - 402) < 1 and abs(bottom - 158) < 1
    # the table comes after the title in reading order, and its text stays in the text layer too
    kinds = [c["chunk_type"] for c in result["chunks"]]
    assert kinds.index("table") > 0 and "North 1,204" in " ".join(
        c["page_content"] for c in result["chunks"] if c["chunk_type"] == "text"
    ).replace("\n", " ")


def test_merged_header_cell_spans_columns(hostile: ModuleType) -> None:
    x0, top, w, h = 72.0, 700.0, 100.0, 20.0
    lines = [
        b"%.1f %.1f m %.1f %.1f l S" % (x0, top - r * h, x0 + 3 * w, top - r * h) for r in range(4)
    ]
    lines += [
        b"%.1f %.1f m %.1f %.1f l S" % (x0 + c * w, top, x0 + c * w, top - 3 * h) for c in (0, 3)
    ]
    lines += [
        b"%.1f %.1f m %.1f %.1f l S" % (x0 + c * w, top - h, x0 + c * w, top - 3 * h)
        for c in (1, 2)
    ]
    text = hostile.text_ops(
        [(x0 + 110, top - 14, 10, "Merged header")]
        + [(x0 + c * w + 5, top - r * h - 14, 10, f"r{r}c{c}") for r in (1, 2) for c in range(3)]
    )
    data = hostile.simple_pdf([b"\n".join(lines) + b"\n" + text])
    (table,) = _tables(ocr.extract(data))
    assert (table["n_rows"], table["n_cols"]) == (3, 3)
    header = table["cells"][0]
    assert header["text"] == "Merged header"
    assert (header["row"], header["col"], header["row_span"], header["col_span"]) == (0, 0, 1, 3)
    assert table["page_content"].splitlines()[0] == "| Merged header |  |  |"
    assert len(table["cells"]) == 7


def test_table_on_a_rotated_page(hostile: ModuleType) -> None:
    data = hostile.table_pdf(ROWS)
    box = b"/MediaBox [0 0 612.00 792.00]"
    rotated = data.replace(box, box + b" /Rotate 90")
    assert rotated != data
    (table,) = _tables(ocr.extract(rotated))
    # the grid is turned: three columns of the drawing are now three rows on the screen
    grid = {(r, c) for r in range(3) for c in range(3)}
    assert {(c["row"], c["col"]) for c in table["cells"]} == grid
    assert sorted(c["text"] for c in table["cells"]) == sorted(t for row in ROWS for t in row)
    # drawn at user x 72..402, y 634..700: on screen x = y, top = x
    x0, top, x1, bottom = table["bbox"]
    assert (round(x0), round(top), round(x1), round(bottom)) == (634, 72, 700, 402)


def test_pages_without_rulings_pay_nothing_for_tables(hostile: ModuleType) -> None:
    result = ocr.extract(hostile.text_pdf(3, 30))
    assert _tables(result) == []
    assert _tables(ocr.extract(hostile.table_pdf(ROWS), {"extract_tables": False})) == []


def test_corpus_table_with_spanning_header(corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get("digital-table-nics-background-checks-1p.pdf")
    assert not isinstance(result, ocr.ExtractionError)
    (table,) = _tables(result)
    assert table["n_cols"] == 25 and table["n_rows"] == 17
    title = table["cells"][0]
    assert title["text"] == "NICS Firearm Background Checks\nNovember - 2015"
    assert title["col_span"] == 25
    assert any("71,137" in c["text"] for c in table["cells"])


def test_multipage_table_is_found_on_every_page(corpus_cache: CorpusCache) -> None:
    result = corpus_cache.get("digital-table-multipage-warn-report-16p.pdf")
    assert not isinstance(result, ocr.ExtractionError)
    pages = {c["page_no"] for c in _tables(result)}
    assert pages == set(range(1, 17))
    first = _tables(result)[0]
    assert first["n_cols"] == 7
    assert first["page_content"].splitlines()[2] == (
        "| 06/22/2015 | 03/25/2016 | 07/01/2015 | Maxim Integrated Product | San Jose | 150 |"
        " Closure Permanent |"
    )
