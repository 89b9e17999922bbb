"""A dry run of :func:`ocr.extract`: how many pages a document has and how many need OCR.

Used by quotes (``POST /v1/quotes``): nothing is rendered, recognised or extracted, yet the
answer must agree with what extraction will do. So this walks the same decisions with the
engine's own functions: the same input checks (``_check_input``: size, magic bytes), the same
open (``pdf.open_document``: stream bombs, password, page limit, no pages), per page the same
OCR decision (``pdf._needs_ocr``: unusable text layer, or sparse text on a mostly-image page)
from the same counts of the text layer (``textlayer.read_text_counts``, which extraction's
``read_page_text`` counts with too, without its per-line boxes and fonts), and for a page that
would be OCR'd the same image budget check that rendering does first
(``pdf._check_image_budget``). Images are opened and their frames decoded
as extraction decodes them (truncated frames fail there). Errors are the same
:class:`~ocr.errors.ExtractionError` classes, hence the same item error codes.

What it cannot foresee: the per-document time budget, a page that pdfium fails to render, and
an OCR provider that fails (all rare, and the last one transient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pypdfium2 as pdfium

from ocr import images as image_input
from ocr import pdf as pdf_input
from ocr.config import EngineConfig
from ocr.errors import CorruptDocumentError, ExtractionError
from ocr.geometry import PageGeometry
from ocr.pipeline import _check_input, _resource_error
from ocr.result import Warnings, normalize_options
from ocr.textlayer import read_text_counts


def quote_probe(
    data: bytes, options: Mapping[str, Any] | None = None, config: EngineConfig | None = None
) -> tuple[int, int]:
    """``(page_count, ocr_pages)`` of ``data`` under batch ``options``.

    Raises what :func:`ocr.extract` raises for unsupported, too large, corrupt, truncated,
    encrypted or over-the-page-limit input, and for images too large to render for OCR.
    """
    config = config or EngineConfig()
    opts = normalize_options(options)
    sniffed = _check_input(data, config)
    data = bytes(data)
    try:
        if sniffed.kind == "pdf":
            return _pdf(data, opts, config)
        return _image(data, opts, config)
    except ExtractionError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise _resource_error(exc) from exc
    except pdfium.PdfiumError as exc:
        raise CorruptDocumentError("The PDF is damaged and could not be read.") from exc


def _image(data: bytes, opts: dict[str, Any], config: EngineConfig) -> tuple[int, int]:
    im, count = image_input.open_image(data, config)
    try:
        if not (opts["extract_text"] and opts["ocr"] != "never"):
            return count, 0  # extraction never decodes the frames then
        frames = image_input.iter_frames(im, count, config)
        for _ in range(count):
            try:
                frame = next(frames)
            except StopIteration as exc:
                raise CorruptDocumentError("The image has fewer frames than it declares.") from exc
            except image_input.PIL_DECODE_ERRORS as exc:
                damaged = "The document is damaged and could not be read."
                raise CorruptDocumentError(damaged) from exc
            frame.image.close()
        return count, count
    finally:
        im.close()


def _pdf(data: bytes, opts: dict[str, Any], config: EngineConfig) -> tuple[int, int]:
    doc = pdf_input.open_document(data, config)
    job = pdf_input.PageJob(
        options=opts,
        config=config,
        get_provider=_no_provider,
        remaining_s=lambda: float(config.document_timeout_s),
        warnings=Warnings(),
        state=pdf_input.DocumentState(images_left=0, image_bytes_left=0),
        tables=None,
    )
    ocr_pages = 0
    try:
        with pdf_input.PDFIUM_LOCK:
            count = len(doc)
            if opts["extract_text"]:
                for index in range(count):
                    ocr_pages += _page_needs_ocr(doc, index, job)
    finally:
        with pdf_input.PDFIUM_LOCK:
            doc.close()
    return count, ocr_pages


def _page_needs_ocr(doc: pdfium.PdfDocument, index: int, job: pdf_input.PageJob) -> bool:
    """``pdf._prepare_page`` up to its OCR decision, and the check its rendering starts with."""
    page_no = index + 1
    try:
        page = doc[index]
    except (pdfium.PdfiumError, OSError):
        return False  # extraction skips an unreadable page with a warning
    textpage = None
    try:
        box = page.get_bbox()
        geometry = PageGeometry((box[0], box[1], box[2], box[3]), page.get_rotation())
        if geometry.width < 1 or geometry.height < 1:
            return False  # skipped: no visible area
        textpage = page.get_textpage()
        counts = read_text_counts(textpage.raw)
        run_ocr, scan = pdf_input._needs_ocr(page, page_no, geometry, counts, None, job)
        if not run_ocr or scan is None or scan.too_many:
            return False  # too complex to render: extraction gives the page no text
        pdf_input._check_image_budget(page_no, scan, job.config)
        return True
    finally:
        if textpage is not None:
            textpage.close()
        page.close()


def _no_provider() -> Any:
    raise AssertionError("a quote never runs OCR")
