"""The engine's two entry points: :func:`extract` (bytes -> Extract result) and :func:`probe`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pypdfium2 as pdfium

from ocr import images as image_input
from ocr import pdf as pdf_input
from ocr.config import EngineConfig
from ocr.errors import (
    CorruptDocumentError,
    DocumentTooLargeError,
    ExtractionError,
    ExtractionTimeoutError,
    ResourceLimitError,
)
from ocr.geometry import clip_bbox, scale_bbox
from ocr.provider import NullProvider, OCRProvider, PageOCRTimeout
from ocr.result import Warnings, envelope, normalize_options, text_chunk
from ocr.sniff import Sniffed, sniff
from ocr.tables import TableExtractor

if TYPE_CHECKING:  # office/web formats (issue 14)
    from ocr.office import OfficeConverter

log = logging.getLogger(__name__)

OnPage = Callable[[int, int], None]


@dataclass(frozen=True)
class Probe:
    """Cheap facts about an input: ``kind`` ("pdf" | "image" | "office"), sniffed MIME,
    pages/frames (office documents: pages of the PDF rendering)."""

    kind: str
    content_type: str
    page_count: int


def probe(
    data: bytes,
    *,
    config: EngineConfig | None = None,
    converter: OfficeConverter | None = None,
) -> Probe:
    """Sniff and count pages without rendering or OCR (the worker reserves quota with this).

    Raises the same errors as :func:`extract` for unsupported, corrupt, encrypted, too large or
    over-the-page-limit input. Office and web documents are converted to PDF to count their
    pages (``converter``, default :func:`ocr.office.shared_converter`, keeps the result, so the
    :func:`extract` that follows does not convert again).
    """
    config = config or EngineConfig()
    sniffed = _check_input(data, config)
    data = bytes(data)
    try:
        # --- begin office/web formats (issue 14) ---
        if sniffed.kind == "office":
            data = _office_pdf(data, sniffed, config, converter, config.document_timeout_s)[0]
        # --- end office/web formats ---
        if sniffed.kind in ("pdf", "office"):
            doc = pdf_input.open_document(data, config)
            with pdf_input.PDFIUM_LOCK:
                count = len(doc)
                doc.close()
        else:
            im, count = image_input.open_image(data, config)
            im.close()
    except ExtractionError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise _resource_error(exc) from exc
    return Probe(sniffed.kind, sniffed.content_type, count)


def extract(
    data: bytes,
    options: Mapping[str, Any] | None = None,
    *,
    filename: str | None = None,
    config: EngineConfig | None = None,
    on_page: OnPage | None = None,
    file_id: str | None = None,
    pages: tuple[int, int] | None = None,
    converter: OfficeConverter | None = None,
) -> dict[str, Any]:
    """Extract text, tables and images: returns SPEC's Extract result as a JSON-ready dict.

    ``options`` are SPEC's batch options (``extract_text``, ``extract_images``,
    ``extract_tables``, ``ocr`` auto|force|never, ``languages``); defaults are filled in.
    ``on_page(pages_done, page_count)`` runs after each page; an exception it raises propagates
    unchanged (that is how a worker aborts a cancelled item). Every other failure is an
    :class:`~ocr.errors.ExtractionError` carrying its public code; ``filename`` is advisory and
    only echoed back.

    ``pages=(first, last)`` (1-based, inclusive, clipped to the document) extracts only that
    range, as a page slice does: chunks keep their document page numbers, ``page_count`` and
    ``on_page`` count the range's pages, and ``page_range`` says which they were.

    Office and web documents (kind "office") are rendered to PDF by ``converter`` (default
    :func:`ocr.office.shared_converter`) and go through the PDF path with their own text (never
    OCR); ``page_no``/``bbox`` refer to that rendering.
    """
    config = config or EngineConfig()
    opts = normalize_options(options)
    if pages is not None and not (1 <= pages[0] <= pages[1]):
        raise ValueError(f"pages must be (first, last) with 1 <= first <= last, not {pages}")
    sniffed = _check_input(data, config)
    data = bytes(data)  # pdfium and hashlib want bytes, not bytearray/memoryview
    # --- begin office/web formats (issue 14) ---
    office_pdf: bytes | None = None
    office_warnings: tuple[str, ...] = ()
    if sniffed.kind == "office":
        started = time.monotonic()
        office_pdf, office_warnings = _office_pdf(
            data, sniffed, config, converter, config.document_timeout_s
        )
        # the text is the document's own: exact, never recognised from the rendering
        opts["ocr"] = "never"
        remaining = config.document_timeout_s - (time.monotonic() - started)
        config = dataclasses.replace(config, document_timeout_s=max(remaining, 1.0))
    # --- end office/web formats ---
    needs_ocr_languages = opts["extract_text"] and opts["ocr"] != "never"
    if needs_ocr_languages and config.provider == "tesseract":
        from ocr.tesseract import available_languages, validate_languages

        installed = available_languages(config.tesseract_cmd)
        # no packs at all means no Tesseract on this host: text layers still extract, and a
        # page that needs OCR fails with ocr_provider_error instead of every document failing
        if installed:
            opts["languages"] = validate_languages(opts["languages"], available=installed)
    run = _Run(config, opts, pages)
    for message in office_warnings:
        run.warnings.add(message)
    try:
        if office_pdf is not None:
            page_count, chunks = run.pdf(office_pdf, on_page)
        elif sniffed.kind == "pdf":
            page_count, chunks = run.pdf(data, on_page)
        else:
            page_count, chunks = run.image(data, on_page)
    finally:
        run.close()
    if run.provider is not None and run.provider.name == "null" and run.ocr_pages:
        run.warnings.add(
            f"{run.ocr_pages} page(s) needed OCR, but OCR is disabled on this deployment"
            " (provider: null); they have no text"
        )
    return envelope(
        data,
        file_id=file_id,
        filename=filename,
        content_type=sniffed.content_type,
        page_count=page_count,
        chunks=chunks,
        warnings=run.warnings,
    ) | ({"page_range": [pages[0], pages[0] + page_count - 1]} if pages is not None else {})


def _check_input(data: bytes, config: EngineConfig) -> Sniffed:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    if len(data) > config.max_file_bytes:
        raise DocumentTooLargeError(
            f"The document is {len(data):,} bytes; the maximum is {config.max_file_bytes:,}."
        )
    # the whole input: ZIP and OLE2 containers are recognised by their directories
    return sniff(bytes(data))


# --- begin office/web formats (issue 14) ---
def _office_pdf(
    data: bytes,
    sniffed: Sniffed,
    config: EngineConfig,
    converter: OfficeConverter | None,
    timeout_s: float,
) -> tuple[bytes, tuple[str, ...]]:
    """An office document rendered to PDF (at most max_pages + 1 pages), and its warnings."""
    from ocr.office import page_limit_error, render_to_pdf

    converted = render_to_pdf(
        data,
        sniffed.content_type,
        encrypted=sniffed.encrypted,
        max_pages=config.max_pages,
        timeout_s=timeout_s,
        max_expanded_bytes=config.max_decoded_stream_bytes,
        converter=converter,
    )
    with pdf_input.PDFIUM_LOCK:
        try:
            rendered = pdfium.PdfDocument(converted.pdf)
        except pdfium.PdfiumError as exc:
            raise CorruptDocumentError("The document could not be rendered to pages.") from exc
        count = len(rendered)
        rendered.close()
    if count > config.max_pages:
        raise page_limit_error(config.max_pages)
    if count < 1:
        raise CorruptDocumentError("The document has no pages when rendered.")
    return converted.pdf, converted.warnings


# --- end office/web formats ---


def _resource_error(exc: BaseException) -> ExtractionError:
    if isinstance(exc, RecursionError):
        return CorruptDocumentError("The document's structure is too deeply nested to read.")
    return ResourceLimitError("The document needs more memory than the engine allows.")


def make_provider(config: EngineConfig) -> OCRProvider:
    """The provider named by ``config.provider``. The implementations import the interface
    (``ocr.provider``), never this module: the engine picks, they do not register themselves.
    The HTTP provider loads httpx, so it is imported only when configured."""
    if config.provider == "null":
        return NullProvider()
    if config.provider == "http":
        from ocr.http_provider import HttpProvider

        return HttpProvider(config)
    from ocr.tesseract import TesseractProvider

    return TesseractProvider(config)


class _Run:
    """State of one extraction: budgets, warnings, the lazily created OCR provider."""

    def __init__(
        self, config: EngineConfig, options: dict[str, Any], pages: tuple[int, int] | None = None
    ) -> None:
        self.config = config
        self.pages = pages
        self.options = options
        self.warnings = Warnings()
        self.provider: OCRProvider | None = None
        self.ocr_pages = 0
        self._deadline = time.monotonic() + config.document_timeout_s

    def close(self) -> None:
        if self.provider is not None:
            self.provider.close()

    def get_provider(self) -> OCRProvider:
        if self.provider is None:
            self.provider = make_provider(self.config)
        return self.provider

    def remaining_s(self) -> float:
        return self._deadline - time.monotonic()

    def page_range(self, count: int) -> range:
        """The 0-based indexes to extract: every page, or the slice's range clipped to count."""
        if self.pages is None:
            return range(count)
        return range(min(self.pages[0], count + 1) - 1, min(self.pages[1], count))

    def check_time(self) -> None:
        if self.remaining_s() <= 0:
            raise ExtractionTimeoutError(
                f"The document took longer than {self.config.document_timeout_s:.0f} s to extract."
            )

    # -- PDF -----------------------------------------------------------------------------------

    def pdf(self, data: bytes, on_page: OnPage | None) -> tuple[int, list[dict[str, Any]]]:
        doc = pdf_input.open_document(data, self.config)
        tables = TableExtractor() if self.options["extract_tables"] else None
        state = pdf_input.DocumentState(
            images_left=self.config.max_images_per_document,
            image_bytes_left=self.config.max_image_bytes_per_document,
        )
        job = pdf_input.PageJob(
            options=self.options,
            config=self.config,
            get_provider=self.get_provider,
            remaining_s=self.remaining_s,
            warnings=self.warnings,
            state=state,
            tables=tables,
        )
        chunks: list[dict[str, Any]] = []
        try:
            with pdf_input.PDFIUM_LOCK:
                count = len(doc)
            indexes = self.page_range(count)
            for done, index in enumerate(indexes, 1):
                self.check_time()
                page_chunks: list[dict[str, Any]] = self._guarded(
                    functools.partial(pdf_input.process_page, doc, index, job), ()
                )
                chunks.extend(page_chunks)
                self.check_time()
                if on_page is not None:
                    # outside any error mapping: its errors propagate
                    on_page(done, len(indexes))
        finally:
            self.ocr_pages = state.ocr_pages_without_provider_text
            with pdf_input.PDFIUM_LOCK:
                doc.close()
        return len(indexes), chunks

    # -- images --------------------------------------------------------------------------------

    def image(self, data: bytes, on_page: OnPage | None) -> tuple[int, list[dict[str, Any]]]:
        im, count = image_input.open_image(data, self.config)
        chunks: list[dict[str, Any]] = []
        run_ocr = self.options["extract_text"] and self.options["ocr"] != "never"
        try:
            indexes = self.page_range(count)
            frames = image_input.iter_frames(im, count, self.config, start=indexes.start)
            for done, index in enumerate(indexes, 1):
                self.check_time()
                page_no = index + 1
                frame = self._guarded(lambda: next(frames), image_input.PIL_DECODE_ERRORS)
                try:
                    if run_ocr:
                        frame_chunks: list[dict[str, Any]] = self._guarded(
                            functools.partial(self._ocr_frame, frame, page_no), ()
                        )
                        chunks.extend(frame_chunks)
                finally:
                    frame.image.close()
                self.check_time()
                if on_page is not None:
                    on_page(done, len(indexes))
        finally:
            im.close()
        return len(indexes), chunks

    def _ocr_frame(self, frame: image_input.Frame, page_no: int) -> list[dict[str, Any]]:
        if frame.downscaled:
            self.warnings.add(
                f"page {page_no}: very large image downscaled to"
                f" {frame.image.width}x{frame.image.height} pixels for OCR"
            )
        provider = self.get_provider()
        timeout = min(self.config.tesseract_timeout_s, self.remaining_s())
        try:
            blocks = provider.recognize(
                frame.image, languages=self.options["languages"], timeout_s=timeout
            )
        except PageOCRTimeout:
            self.warnings.add(f"page {page_no}: OCR ran out of time; the page has no text")
            return []
        if provider.name == "null":
            self.ocr_pages += 1
        out = []
        for block in blocks:
            bbox = clip_bbox(
                scale_bbox(block.bbox, frame.px_to_pt), frame.width_pt, frame.height_pt
            )
            out.append(
                text_chunk(page_no, bbox, block.text, source="ocr", confidence=block.confidence)
            )
        return out

    # -- error mapping ---------------------------------------------------------------------------

    def _guarded(
        self, fn: Callable[[], Any], decode_errors: tuple[type[BaseException], ...]
    ) -> Any:
        """Run engine work, mapping parser failures to ExtractionErrors. ``decode_errors`` are
        the exception types that mean "cannot decode" for this input (Pillow raises plain
        OSError/ValueError/...); anything else unexpected propagates as the bug it is."""
        try:
            return fn()
        except ExtractionError:
            raise
        except StopIteration as exc:  # frame iterator ended early: the file lied about its frames
            raise CorruptDocumentError("The image has fewer frames than it declares.") from exc
        except (MemoryError, RecursionError) as exc:
            log.warning("resource error during extraction", exc_info=True)
            raise _resource_error(exc) from exc
        except pdfium.PdfiumError as exc:
            log.info("pdfium failed during extraction", exc_info=True)
            raise CorruptDocumentError("The PDF is damaged and could not be read.") from exc
        except decode_errors as exc:
            log.info("decoding failed during extraction", exc_info=True)
            raise CorruptDocumentError("The document is damaged and could not be read.") from exc
