"""PDF pages: open, count, then per page the text layer, OCR, tables and figures.

Everything here goes through pdfium (pypdfium2): it opens, counts, reads text (~1-6 ms a page) and
renders. pdfplumber is only used for table detection (ocr/tables.py), on pages that have ruling
lines. Pages are loaded and closed one at a time, so memory does not grow with the page count.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from ocr.config import EngineConfig
from ocr.errors import (
    CorruptDocumentError,
    EncryptedDocumentError,
    PageLimitExceededError,
    ResourceLimitError,
)
from ocr.geometry import BBox, PageGeometry, clip_bbox, scale_bbox
from ocr.images import encode_image
from ocr.provider import OCRProvider, PageOCRTimeout
from ocr.result import Warnings, image_chunk, place_in_reading_order, text_chunk
from ocr.streams import check_stream_bombs
from ocr.tables import MIN_EDGE_PT, Rulings, TableExtractor, ruling_lines
from ocr.textlayer import PageText, TextCounts, read_page_text

log = logging.getLogger(__name__)

#: form XObjects nested deeper than this are not searched for figures or ruling lines
_MAX_FORM_DEPTH = 4
#: an image covering this share of the page is the page itself (a scan or a background), not a
#: figure: it is OCR'd when needed but not returned as an image chunk
_PAGE_SIZED_IMAGE = 0.85
#: below this many letters/digits, a page whose area is mostly image is a scan with a stray
#: text layer (stamps, page numbers): OCR it in ``auto`` mode
_SPARSE_TEXT = 32


#: pdfium must not be called from two threads at once, not even on different documents
#: (pypdfium2's documentation); workers are processes, but the sync endpoint may be threaded.
PDFIUM_LOCK = threading.RLock()


def open_document(data: bytes, config: EngineConfig) -> pdfium.PdfDocument:
    """Open with the empty user password, check the page count, and map failures to codes."""
    check_stream_bombs(data, config.max_decoded_stream_bytes)  # pure Python: outside the lock
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            code = getattr(exc, "err_code", None)
            if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
                raise EncryptedDocumentError() from exc
            raise CorruptDocumentError(
                "The PDF is corrupted or truncated and cannot be opened."
            ) from exc
        count = len(pdf)
        if count > config.max_pages:
            pdf.close()
            raise PageLimitExceededError(
                f"The document has {count} pages; the maximum is {config.max_pages}."
            )
        if count < 1:
            pdf.close()
            raise CorruptDocumentError("The PDF has no pages.")
    return pdf


@dataclass
class ImageInfo:
    handle: Any  # FPDF_PAGEOBJECT
    bbox: BBox  # displayed
    px_w: int
    px_h: int
    decoded_bytes: int


@dataclass
class ObjectScan:
    """What a page holds, from one pass over its page objects (raw pdfium calls only)."""

    n_objects: int = 0
    too_many: bool = False
    images: list[ImageInfo] = field(default_factory=list)
    #: path objects with the matrices that map them to page space (innermost first)
    paths: list[tuple[Any, tuple[tuple[float, ...], ...]]] = field(default_factory=list)
    image_coverage: float = 0.0
    _rulings: Rulings | None = None

    def rulings(self, geometry: PageGeometry) -> Rulings:
        """The page's straight ruling lines (computed once, on demand)."""
        if self._rulings is None:
            self._rulings = ruling_lines(self.paths, geometry, _matrix)
        return self._rulings


def _matrix(obj: Any) -> tuple[float, float, float, float, float, float]:
    m = pdfium_c.FS_MATRIX()
    if not pdfium_c.FPDFPageObj_GetMatrix(obj, m):
        return 1.0, 0.0, 0.0, 1.0, 0.0, 0.0
    return m.a, m.b, m.c, m.d, m.e, m.f


def _apply(m: tuple[float, ...], rect: BBox) -> BBox:
    a, b, c, d, e, f = m
    xs, ys = [], []
    for x, y in ((rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3])):
        xs.append(a * x + c * y + e)
        ys.append(b * x + d * y + f)
    return min(xs), min(ys), max(xs), max(ys)


def scan_objects(page: pdfium.PdfPage, geometry: PageGeometry, config: EngineConfig) -> ObjectScan:
    scan = ObjectScan()
    page_raw = page.raw
    left, bottom = ctypes.c_float(), ctypes.c_float()
    right, top = ctypes.c_float(), ctypes.c_float()
    out = (ctypes.byref(left), ctypes.byref(bottom), ctypes.byref(right), ctypes.byref(top))
    w_px, h_px = ctypes.c_uint(), ctypes.c_uint()
    limit = config.max_objects_per_page
    page_area = max(geometry.width * geometry.height, 1.0)
    covered = 0.0

    # iterative walk (no recursion): (container or None, depth, matrices from container to page)
    stack: list[tuple[Any, int, tuple[tuple[float, ...], ...]]] = [(None, 0, ())]
    while stack:
        container, depth, chain = stack.pop()
        if container is None:
            count = pdfium_c.FPDFPage_CountObjects(page_raw)
        else:
            count = pdfium_c.FPDFFormObj_CountObjects(container)
        for i in range(max(count, 0)):
            scan.n_objects += 1
            if scan.n_objects > limit:
                scan.too_many = True
                return scan
            if container is None:
                obj = pdfium_c.FPDFPage_GetObject(page_raw, i)
            else:
                obj = pdfium_c.FPDFFormObj_GetObject(container, i)
            if not obj:
                continue
            kind = pdfium_c.FPDFPageObj_GetType(obj)
            if kind == pdfium_c.FPDF_PAGEOBJ_TEXT:
                continue
            if kind == pdfium_c.FPDF_PAGEOBJ_FORM:
                if depth + 1 < _MAX_FORM_DEPTH:
                    stack.append((obj, depth + 1, (_matrix(obj), *chain)))
                continue
            if kind not in (pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_PATH):
                continue
            if not pdfium_c.FPDFPageObj_GetBounds(obj, *out):
                continue
            rect: BBox = (left.value, bottom.value, right.value, top.value)
            for m in chain:
                rect = _apply(m, rect)
            bbox = geometry.rect_to_display(*rect)
            bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
            if kind == pdfium_c.FPDF_PAGEOBJ_PATH:
                if max(bw, bh) >= MIN_EDGE_PT:
                    scan.paths.append((obj, chain))
                continue
            if not pdfium_c.FPDFImageObj_GetImagePixelSize(obj, w_px, h_px):
                continue
            # worst case 4 bytes a pixel; only ask pdfium for the real depth when that matters
            # (the metadata call can decode the whole image, ~20 ms for a page-sized scan)
            decoded = w_px.value * h_px.value * 4
            if decoded > config.max_decoded_image_bytes:
                meta = pdfium_c.FPDF_IMAGEOBJ_METADATA()
                if (
                    pdfium_c.FPDFImageObj_GetImageMetadata(obj, page_raw, meta)
                    and meta.bits_per_pixel
                ):
                    bpp = max(1, int(meta.bits_per_pixel))
                    decoded = math.ceil(w_px.value * h_px.value * bpp / 8)
            scan.images.append(ImageInfo(obj, bbox, w_px.value, h_px.value, decoded))
            covered += bw * bh
    scan.image_coverage = min(1.0, covered / page_area)
    return scan


@dataclass
class DocumentState:
    """Per-document budgets shared by all pages."""

    images_left: int
    image_bytes_left: int
    image_cap_warned: bool = False
    ocr_pages: int = 0
    ocr_pages_without_provider_text: int = 0


@dataclass
class PageJob:
    options: dict[str, Any]
    config: EngineConfig
    get_provider: Callable[[], OCRProvider]
    remaining_s: Callable[[], float]
    warnings: Warnings
    state: DocumentState
    tables: TableExtractor | None


def process_page(pdf: pdfium.PdfDocument, index: int, job: PageJob) -> list[dict[str, Any]]:
    """Chunks of one page, in reading order. Page-level trouble becomes a warning; document-level
    limits (image bombs) raise.

    All pdfium work happens under :data:`PDFIUM_LOCK` (pdfium is not thread-safe, and the sync
    endpoint may run in a threaded server); the OCR call, the slow part, runs outside it on a
    rendered copy of the page.
    """
    with PDFIUM_LOCK:
        prepared = _prepare_page(pdf, index, job)
    if prepared is None:
        return []
    chunks = prepared.chunks
    if prepared.ocr_image is not None:
        try:
            chunks = _recognize(prepared, job)
        finally:
            prepared.ocr_image.close()
    if prepared.others:
        chunks = place_in_reading_order(chunks, prepared.others)
    return chunks


@dataclass
class _PreparedPage:
    page_no: int
    geometry: PageGeometry
    chunks: list[dict[str, Any]]  # text-layer chunks (empty when the page is OCR'd)
    others: list[dict[str, Any]]  # tables and images
    ocr_image: Image.Image | None = None
    scale: float = 1.0


def _prepare_page(pdf: pdfium.PdfDocument, index: int, job: PageJob) -> _PreparedPage | None:
    """Everything of one page that needs pdfium: its text layer or its rendering for OCR, its
    tables and figures. None when the page cannot be read or has no visible area."""
    page_no = index + 1
    try:
        page = pdf[index]
    except (pdfium.PdfiumError, OSError) as exc:
        log.info("page %d failed to load: %s", page_no, exc)
        job.warnings.add(f"page {page_no}: could not be read; it is skipped")
        return None
    textpage = None
    prepared: _PreparedPage | None = None
    try:
        box = page.get_bbox()
        geometry = PageGeometry((box[0], box[1], box[2], box[3]), page.get_rotation())
        if geometry.width < 1 or geometry.height < 1:
            job.warnings.add(f"page {page_no}: has no visible area; it is skipped")
            return None
        opts = job.options
        page_text: PageText | None = None
        if opts["extract_text"] or opts["extract_tables"]:
            textpage = page.get_textpage()
            page_text = read_page_text(textpage.raw, geometry)
        # the object scan costs ~0.1-8 ms a page: only pay for it when something needs it
        scan: ObjectScan | None = None
        if opts["extract_images"] or opts["extract_tables"]:
            scan = _scan(page, page_no, geometry, job)
        run_ocr, scan = _needs_ocr(page, page_no, geometry, page_text, scan, job)
        prepared = _PreparedPage(page_no, geometry, [], [])
        _add_text(prepared, page, page_text, scan if run_ocr else None, job)
        if scan is not None and not scan.too_many:
            prepared.others.extend(_figures_and_tables(prepared, scan, page_text, textpage, job))
        return prepared
    except BaseException:
        if prepared is not None and prepared.ocr_image is not None:
            prepared.ocr_image.close()
        raise
    finally:
        if textpage is not None:
            textpage.close()
        page.close()


def _needs_ocr(
    page: pdfium.PdfPage,
    page_no: int,
    geometry: PageGeometry,
    page_text: TextCounts | None,
    scan: ObjectScan | None,
    job: PageJob,
) -> tuple[bool, ObjectScan | None]:
    """Whether the page is read by OCR (``force``; ``auto`` when its text layer is unusable,
    or sparse on a page that is mostly image), and the object scan that decision may need."""
    mode = job.options["ocr"]
    run_ocr = False
    if not job.options["extract_text"]:
        return False, scan
    if mode == "force":
        run_ocr = True
    elif mode == "auto" and page_text is not None:
        if not page_text.usable:
            run_ocr = True
        elif page_text.n_meaningful < _SPARSE_TEXT:
            if scan is None:
                scan = _scan(page, page_no, geometry, job)
            run_ocr = scan.image_coverage >= 0.5
    if run_ocr and scan is None:
        scan = _scan(page, page_no, geometry, job)
    return run_ocr, scan


def _add_text(
    prepared: _PreparedPage,
    page: pdfium.PdfPage,
    page_text: PageText | None,
    ocr_scan: ObjectScan | None,
    job: PageJob,
) -> None:
    """The page's text: its rendering for OCR when ``ocr_scan`` is given, else the text layer."""
    page_no = prepared.page_no
    if ocr_scan is not None and ocr_scan.too_many:
        job.warnings.add(f"page {page_no}: too complex to render for OCR; it has no text")
    elif ocr_scan is not None:
        prepared.ocr_image, prepared.scale = _render(
            page, page_no, prepared.geometry, ocr_scan, job
        )
    elif job.options["extract_text"] and page_text is not None:
        for block in page_text.blocks:
            prepared.chunks.append(text_chunk(page_no, block.bbox, block.text, source="text_layer"))


def _figures_and_tables(
    prepared: _PreparedPage,
    scan: ObjectScan,
    page_text: PageText | None,
    textpage: pdfium.PdfTextPage | None,
    job: PageJob,
) -> list[dict[str, Any]]:
    page_no, geometry = prepared.page_no, prepared.geometry
    found: list[dict[str, Any]] = []
    if (
        job.options["extract_tables"]
        and job.tables is not None
        and page_text is not None
        and page_text.n_meaningful > 0
        and textpage is not None
    ):
        rulings = scan.rulings(geometry)
        if rulings.has_grid():
            found.extend(job.tables.page_tables(page_no, geometry, rulings, textpage, job.warnings))
    if job.options["extract_images"]:
        found.extend(_image_chunks(page_no, geometry, scan, job))
    return found


def _scan(page: pdfium.PdfPage, page_no: int, geometry: PageGeometry, job: PageJob) -> ObjectScan:
    scan = scan_objects(page, geometry, job.config)
    if scan.too_many:
        job.warnings.add(
            f"page {page_no}: more than {job.config.max_objects_per_page:,} drawing objects;"
            " tables and images on it are skipped"
        )
    return scan


def _check_image_budget(page_no: int, scan: ObjectScan, config: EngineConfig) -> None:
    for img in scan.images:
        if img.decoded_bytes > config.max_decoded_image_bytes:
            raise ResourceLimitError(
                f"Page {page_no} holds an image of {img.px_w}x{img.px_h} pixels, too large to"
                " decode safely."
            )


def render_scale(geometry: PageGeometry, dpi: int, max_pixels: int) -> float:
    """Points -> pixels factor for rendering: ``dpi / 72``, lowered to fit ``max_pixels``."""
    scale = dpi / 72.0
    area = geometry.width * geometry.height
    if area * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / area)
    return scale


def _render(
    page: pdfium.PdfPage, page_no: int, geometry: PageGeometry, scan: ObjectScan, job: PageJob
) -> tuple[Image.Image, float]:
    """Render the page in 8-bit gray at the OCR resolution (bounded by ``max_render_pixels``)."""
    config = job.config
    _check_image_budget(page_no, scan, config)
    scale = render_scale(geometry, config.ocr_dpi, config.max_render_pixels)
    if scale * 72.0 < config.ocr_dpi - 0.5:
        job.warnings.add(
            f"page {page_no}: very large page rendered for OCR at {scale * 72:.0f} dpi"
            f" instead of {config.ocr_dpi} dpi"
        )
    bitmap = page.render(scale=scale, grayscale=True, draw_annots=True)
    try:
        # render() allocates the buffer on the Python side and the PIL image keeps a reference
        # to it, so the image outlives the pdfium bitmap handle safely
        image = bitmap.to_pil()
        if image.mode != "L":
            image = image.convert("L")
    finally:
        bitmap.close()
    # the OCR provider passes the resolution on: Tesseract assumes 70 dpi without it, and its
    # layout analysis then reads tightly set pages as false columns (bench/ocr_quality.py)
    image.info["dpi"] = (scale * 72.0, scale * 72.0)
    return image, scale


def _recognize(prepared: _PreparedPage, job: PageJob) -> list[dict[str, Any]]:
    assert prepared.ocr_image is not None
    page_no, geometry, scale = prepared.page_no, prepared.geometry, prepared.scale
    provider = job.get_provider()
    timeout = min(job.config.tesseract_timeout_s, job.remaining_s())
    job.state.ocr_pages += 1
    try:
        blocks = provider.recognize(
            prepared.ocr_image, languages=job.options["languages"], timeout_s=timeout
        )
    except PageOCRTimeout:
        job.warnings.add(f"page {page_no}: OCR ran out of time; the page has no text")
        return []
    if provider.name == "null":
        job.state.ocr_pages_without_provider_text += 1
    chunks = []
    for block in blocks:
        bbox = clip_bbox(scale_bbox(block.bbox, 1.0 / scale), geometry.width, geometry.height)
        chunks.append(
            text_chunk(page_no, bbox, block.text, source="ocr", confidence=block.confidence)
        )
    return chunks


def _image_chunks(
    page_no: int, geometry: PageGeometry, scan: ObjectScan, job: PageJob
) -> list[dict[str, Any]]:
    config = job.config
    state = job.state
    page_area = geometry.width * geometry.height
    chunks: list[dict[str, Any]] = []
    for img in scan.images:
        bw, bh = img.bbox[2] - img.bbox[0], img.bbox[3] - img.bbox[1]
        if min(img.px_w, img.px_h) < config.min_image_px or bw < 4 or bh < 4:
            continue
        if bw * bh >= _PAGE_SIZED_IMAGE * page_area:
            continue  # the page itself (scan or background)
        if state.images_left <= 0 or state.image_bytes_left <= 0:
            if not state.image_cap_warned:
                job.warnings.add(
                    f"page {page_no}: image limit reached ({config.max_images_per_document} images"
                    " per document); further images are omitted"
                )
                state.image_cap_warned = True
            return chunks
        if img.px_w * img.px_h > config.max_render_pixels or (
            img.decoded_bytes > config.max_decoded_image_bytes
        ):
            job.warnings.add(f"page {page_no}: an image too large to extract was skipped")
            continue
        try:
            raw_bitmap = pdfium_c.FPDFImageObj_GetBitmap(img.handle)
            if not raw_bitmap:
                raise ValueError("no bitmap")
            bitmap = pdfium.PdfBitmap.from_raw(raw_bitmap)
            bitmap.warn_on_close = False  # the PIL view is dropped before we close
            try:
                mime, b64, width, height = encode_image(
                    bitmap.to_pil(), max_side=config.max_image_side_px, prefer=config.image_format
                )
            finally:
                bitmap.close()
        except Exception as exc:  # a broken image stream must not fail the page
            log.info("page %d: image extraction failed: %s", page_no, exc)
            job.warnings.add(f"page {page_no}: an image could not be decoded and was skipped")
            continue
        state.images_left -= 1
        state.image_bytes_left -= len(b64)
        chunks.append(
            image_chunk(page_no, img.bbox, width=width, height=height, mime=mime, b64=b64)
        )
    return chunks
