"""Tables: ruling lines from pdfium, pdfplumber's lattice algorithm, cell text from pdfium.

Letting pdfplumber parse a page (pdfminer) to find its ruling lines costs 150-500 ms; pdfium
already has the page's paths loaded. So we read the straight segments of the page's path objects
through pdfium (rectangles are closed paths, so cell boxes count too), hand them to pdfplumber's
``TableFinder`` as explicit edges - its snapping, joining, intersection and cell-grouping logic
(Nurminen's method, as in Tabula) is the part worth keeping - and read each cell's text with
pdfium's ``FPDFText_GetBoundedText`` from the text page the text layer already loaded. That also
keeps letter-spaced dates whole and reads text drawn rotated, where pdfminer yields one char per
line. A page costs a few milliseconds instead of a few hundred.

Only pages whose lines form a grid of at least two cells get here; tables are best effort, and a
failure on one page becomes a warning, not a failed document.
"""

from __future__ import annotations

import ctypes
import logging
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pypdfium2.raw as pdfium_c

from ocr.geometry import BBox, PageGeometry
from ocr.result import Cell, Table, Warnings, table_chunk

log = logging.getLogger(__name__)

#: straight segments shorter than this are glyph strokes or tick marks, not rulings (pdfplumber's
#: own ``edge_min_length`` default is 3)
MIN_EDGE_PT = 3.0
#: a line must be at least this long to count towards "is there a grid" (filters hatching)
_GRID_LINE_PT = 8.0
#: segments examined per page (a plot with 100k segments stops here)
_MAX_SEGMENTS = 20_000
#: lines this close count as crossing (frames are drawn corner to corner, slightly short)
_TOUCH = 2.0
_MAX_GRID_LINES = 400
_EPS = 0.5  # cell edges closer than this are the same grid line

Matrix = tuple[float, ...]


@dataclass
class Rulings:
    """Straight lines in displayed coordinates: ``h`` = (y, x0, x1), ``v`` = (x, y0, y1)."""

    h: list[tuple[float, float, float]] = field(default_factory=list)
    v: list[tuple[float, float, float]] = field(default_factory=list)

    def has_grid(self) -> bool:
        """At least three lines one way each crossing at least two lines the other way (two
        cells). Plot axes, single frames and underlines are not grids."""
        hs = _by_position([x for x in self.h if x[2] - x[1] >= _GRID_LINE_PT])
        vs = _by_position([x for x in self.v if x[2] - x[1] >= _GRID_LINE_PT])
        if len(hs) < 2 or len(vs) < 2:
            return False
        h_items = list(hs.items())[:_MAX_GRID_LINES]
        v_items = list(vs.items())[:_MAX_GRID_LINES]

        def crosses(pos: float, extents: list[tuple[float, float]]) -> bool:
            return any(lo - _TOUCH <= pos <= hi + _TOUCH for lo, hi in extents)

        h_full = 0
        v_hits = [0] * len(v_items)
        for hy, hx in h_items:
            hits = 0
            for j, (vx, vy) in enumerate(v_items):
                if crosses(vx, hx) and crosses(hy, vy):
                    hits += 1
                    v_hits[j] += 1
            if hits >= 2:
                h_full += 1
        v_full = sum(1 for n in v_hits if n >= 2)
        return (h_full >= 3 and v_full >= 2) or (v_full >= 3 and h_full >= 2)

    def edges(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """pdfplumber edge objects (vertical, horizontal)."""
        v = [
            {
                "object_type": "v_edge",
                "orientation": "v",
                "x0": x,
                "x1": x,
                "top": y0,
                "bottom": y1,
                "width": 0.0,
                "height": y1 - y0,
            }
            for x, y0, y1 in self.v
        ]
        h = [
            {
                "object_type": "h_edge",
                "orientation": "h",
                "x0": x0,
                "x1": x1,
                "top": y,
                "bottom": y,
                "width": x1 - x0,
                "height": 0.0,
            }
            for y, x0, x1 in self.h
        ]
        return v, h


def _by_position(lines: list[tuple[float, float, float]]) -> dict[int, list[tuple[float, float]]]:
    out: dict[int, list[tuple[float, float]]] = {}
    for pos, lo, hi in lines:
        out.setdefault(round(pos), []).append((lo, hi))
    return out


def ruling_lines(
    paths: list[tuple[Any, tuple[Matrix, ...]]],
    geometry: PageGeometry,
    matrix_of: Callable[[Any], Matrix],
) -> Rulings:
    """Straight horizontal/vertical segments of ``paths`` (path objects with the matrices of the
    form XObjects around them, innermost first), in displayed coordinates."""
    x, y = ctypes.c_float(), ctypes.c_float()
    px, py = ctypes.byref(x), ctypes.byref(y)
    get_segment = pdfium_c.FPDFPath_GetPathSegment
    get_point = pdfium_c.FPDFPathSegment_GetPoint
    get_type = pdfium_c.FPDFPathSegment_GetType
    get_close = pdfium_c.FPDFPathSegment_GetClose
    lineto, moveto = pdfium_c.FPDF_SEGMENT_LINETO, pdfium_c.FPDF_SEGMENT_MOVETO
    out = Rulings()
    budget = _MAX_SEGMENTS
    for obj, chain in paths:
        n = pdfium_c.FPDFPath_CountSegments(obj)
        if n <= 0:
            continue
        if n > budget:
            break
        budget -= n
        matrices = (matrix_of(obj), *chain)
        start: tuple[float, float] | None = None
        prev: tuple[float, float] | None = None
        for i in range(n):
            seg = get_segment(obj, i)
            if not seg or not get_point(seg, px, py):
                continue
            ux, uy = x.value, y.value
            for m in matrices:
                ux, uy = m[0] * ux + m[2] * uy + m[4], m[1] * ux + m[3] * uy + m[5]
            pt = geometry.to_display(ux, uy)
            kind = get_type(seg)
            if kind == moveto:
                start = prev = pt
                continue
            if kind == lineto and prev is not None:
                _classify(prev, pt, out)
            if get_close(seg) and start is not None:
                _classify(pt, start, out)
            prev = pt
    return out


def _classify(a: tuple[float, float], b: tuple[float, float], out: Rulings) -> None:
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    if dy < 1.0 and dx >= MIN_EDGE_PT:
        out.h.append(((a[1] + b[1]) / 2, min(a[0], b[0]), max(a[0], b[0])))
    elif dx < 1.0 and dy >= MIN_EDGE_PT:
        out.v.append(((a[0] + b[0]) / 2, min(a[1], b[1]), max(a[1], b[1])))


class TableExtractor:
    """Finds ruled tables on pages (pdfplumber is imported on the first page with a grid)."""

    def page_tables(
        self,
        page_no: int,
        geometry: PageGeometry,
        rulings: Rulings,
        textpage: Any,
        warnings: Warnings,
    ) -> list[dict[str, Any]]:
        from pdfplumber.table import TableFinder

        v_edges, h_edges = rulings.edges()
        if len(v_edges) < 2 or len(h_edges) < 2:
            return []
        settings = {
            "vertical_strategy": "explicit",
            "horizontal_strategy": "explicit",
            "explicit_vertical_lines": v_edges,
            "explicit_horizontal_lines": h_edges,
        }
        try:
            # the page argument is only stored on the Table objects, whose text we do not use
            finder = TableFinder(None, settings)  # type: ignore[arg-type]
            chunks = []
            for table in finder.tables:
                built = _build_table(table.cells, geometry, textpage)
                if built is not None:
                    chunks.append(table_chunk(page_no, built))
            return chunks
        except (Exception, RecursionError):
            log.info("table detection failed on page %d", page_no, exc_info=True)
            warnings.add(f"page {page_no}: tables could not be detected")
            return []


def _lines(values: list[float]) -> list[float]:
    out: list[float] = []
    for v in sorted(values):
        if not out or v - out[-1] > _EPS:
            out.append(v)
    return out


def _index(lines: list[float], v: float) -> int:
    i = bisect_left(lines, v - _EPS)
    return min(i, len(lines) - 1)


def _build_table(
    cells: list[tuple[float, float, float, float]], geometry: PageGeometry, textpage: Any
) -> Table | None:
    if len(cells) < 2:
        return None
    xs = _lines([c[0] for c in cells] + [c[2] for c in cells])
    ys = _lines([c[1] for c in cells] + [c[3] for c in cells])
    n_cols, n_rows = len(xs) - 1, len(ys) - 1
    if n_cols < 1 or n_rows < 1:
        return None
    out: list[Cell] = []
    for x0, top, x1, bottom in cells:
        col, col_end = _index(xs, x0), _index(xs, x1)
        row, row_end = _index(ys, top), _index(ys, bottom)
        bbox = geometry.clip((x0, top, x1, bottom))
        out.append(
            Cell(
                text=_cell_text(textpage, geometry, bbox),
                row=row,
                col=col,
                row_span=max(1, row_end - row),
                col_span=max(1, col_end - col),
                bbox=bbox,
            )
        )
    if sum(1 for c in out if c.text) < 2:
        return None  # a frame or an empty drawn grid (forms, decorations), not a table
    out.sort(key=lambda c: (c.row, c.col))
    table_bbox: BBox = geometry.clip((xs[0], ys[0], xs[-1], ys[-1]))
    return Table(table_bbox, n_rows, n_cols, out)


def _cell_text(textpage: Any, geometry: PageGeometry, bbox: BBox) -> str:
    left, bottom, right, top = geometry.rect_to_user(bbox)
    raw = textpage.get_text_bounded(left, bottom, right, top)
    lines = (line.strip() for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line).replace("\ufffe", "-")
