"""Coordinates: every bbox in a result is ``[x0, top, x1, bottom]`` in points on the page *as
displayed* (after /Rotate), with the origin at the top-left corner, like pdfplumber.

PDF content lives in user space (origin bottom-left, y up, unrotated). :class:`PageGeometry`
converts between the two; rendered and OCR'd pixels convert with a single scale factor.
"""

from __future__ import annotations

from dataclasses import dataclass

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class PageGeometry:
    """The visible page box (``box`` in user space: left, bottom, right, top) and its rotation."""

    box: BBox
    rotation: int = 0

    @property
    def _w(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def _h(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def width(self) -> float:
        """Displayed width in points."""
        return self._h if self.rotation in (90, 270) else self._w

    @property
    def height(self) -> float:
        """Displayed height in points."""
        return self._w if self.rotation in (90, 270) else self._h

    def to_display(self, x: float, y: float) -> tuple[float, float]:
        """User-space point -> displayed top-left-origin point."""
        u = x - self.box[0]
        v = self.box[3] - y
        rot = self.rotation
        if rot == 90:
            return self._h - v, u
        if rot == 180:
            return self._w - u, self._h - v
        if rot == 270:
            return v, self._w - u
        return u, v

    def to_user(self, x: float, y: float) -> tuple[float, float]:
        """Displayed top-left-origin point -> user-space point (inverse of :meth:`to_display`)."""
        rot = self.rotation
        if rot == 90:
            u, v = y, self._h - x
        elif rot == 180:
            u, v = self._w - x, self._h - y
        elif rot == 270:
            u, v = self._w - y, x
        else:
            u, v = x, y
        return u + self.box[0], self.box[3] - v

    def rect_to_display(self, left: float, bottom: float, right: float, top: float) -> BBox:
        """User-space rectangle -> clipped displayed bbox."""
        ax, ay = self.to_display(left, bottom)
        bx, by = self.to_display(right, top)
        return self.clip((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))

    def rect_to_user(self, bbox: BBox) -> BBox:
        """Displayed bbox -> user-space (left, bottom, right, top)."""
        ax, ay = self.to_user(bbox[0], bbox[1])
        bx, by = self.to_user(bbox[2], bbox[3])
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)

    def clip(self, bbox: BBox) -> BBox:
        return clip_bbox(bbox, self.width, self.height)


def clip_bbox(bbox: BBox, width: float, height: float) -> BBox:
    """Clamp a bbox into ``[0, width] x [0, height]`` (content drawn off-page stays, clipped)."""
    x0, y0, x1, y1 = bbox
    x0 = min(max(x0, 0.0), width)
    x1 = min(max(x1, x0), width)
    y0 = min(max(y0, 0.0), height)
    y1 = min(max(y1, y0), height)
    return x0, y0, x1, y1


def scale_bbox(bbox: BBox, factor: float) -> BBox:
    """Multiply every coordinate (pixels -> points is ``72 / dpi``)."""
    return bbox[0] * factor, bbox[1] * factor, bbox[2] * factor, bbox[3] * factor


def union(a: BBox, b: BBox) -> BBox:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def round_bbox(bbox: BBox) -> list[float]:
    return [round(v, 2) for v in bbox]
