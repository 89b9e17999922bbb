"""Engine configuration: one frozen object, built by the caller (no module-level settings).

Every bound a hostile document could make us exceed has a field here, with a default that keeps a
2-core worker with a few GB of RAM safe. ``service.settings`` maps its ``PAGELANE_*`` variables
onto these fields; the engine itself never reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVIDERS = ("tesseract", "http", "null")
TESSERACT_BACKENDS = ("auto", "library", "subprocess")
IMAGE_FORMATS = ("png", "webp")


@dataclass(frozen=True)
class EngineConfig:
    """Limits and provider settings for :func:`ocr.extract` and :func:`ocr.probe`."""

    # --- input limits -------------------------------------------------------------------------
    #: more pages (or image frames) than this -> page_limit_exceeded, checked before rendering.
    max_pages: int = 1000
    #: larger inputs -> document_too_large (SPEC: 150 MB).
    max_file_bytes: int = 150 * 1024 * 1024

    # --- OCR rendering ------------------------------------------------------------------------
    #: resolution at which pages without a usable text layer are rendered for OCR. 300 dpi is
    #: chosen from bench/ocr_quality.py (docs/engine.md has the figures).
    ocr_dpi: int = 300
    #: a rendered page (or an image input handed to OCR) never exceeds this many pixels: larger
    #: pages are rendered at a lower dpi (with a warning) instead of exhausting memory.
    max_render_pixels: int = 40_000_000
    #: image inputs with more pixels than this fail with extraction_failed (decompression bombs).
    #: Same value as Pillow's own ``Image.MAX_IMAGE_PIXELS`` default, which stays untouched.
    max_image_pixels: int = 89_478_485
    #: an image embedded in a PDF page that would decode to more bytes than this makes the page
    #: fail with extraction_failed before pdfium tries to decode it (PDF image bombs).
    max_decoded_image_bytes: int = 400_000_000
    #: a compressed (Flate) content stream, font or form that inflates past this fails the PDF
    #: with extraction_failed before pdfium loads it (zip bombs; see ocr/streams.py)
    max_decoded_stream_bytes: int = 256 * 1024 * 1024
    #: Tesseract page segmentation mode. 1 = automatic segmentation with orientation and script
    #: detection, so 90/180/270-degree scans come out right; falls back to 3 without osd data.
    tesseract_psm: int = 1
    tesseract_cmd: str = "tesseract"
    #: how Tesseract is called: "library" = its C++ API in-process through tesserocr (the model
    #: is loaded once per process, no process start per page: ~1.4x the pages/s per core of
    #: the bare command, bench/ocr_speed.py), "subprocess" = the ``tesseract`` command through
    #: pytesseract, "auto" = library when tesserocr is importable, else subprocess.
    tesseract_backend: str = "auto"
    #: tessdata folder for the library backend; None = the one the ``tesseract`` command reports
    #: (``--list-langs``), else tesserocr's built-in default.
    tesseract_datapath: str | None = None
    #: with psm 1, a page whose orientation detection (OSD) is less sure than this (Tesseract's
    #: margin between the best and the second-best orientation; Tesseract itself rotates only
    #: at >= 7) is read in the candidate orientations and the best reading is kept.
    tesseract_osd_min_confidence: float = 7.0

    # --- time budgets -------------------------------------------------------------------------
    #: per page OCR call; a page that runs over is returned without text, with a warning.
    tesseract_timeout_s: float = 60.0
    #: whole document; when exhausted the extraction fails with extraction_failed.
    document_timeout_s: float = 1800.0

    # --- tables and images --------------------------------------------------------------------
    #: pages with more page objects than this skip table detection and image extraction
    #: (with a warning): the text layer still comes out.
    max_objects_per_page: int = 50_000
    max_images_per_document: int = 50
    #: images smaller than this (pixels, either side) are decoration, not figures.
    min_image_px: int = 64
    #: images are downscaled so their longest side is at most this many pixels.
    max_image_side_px: int = 2048
    #: total bytes of base64 image data in one result; later images are omitted with a warning.
    max_image_bytes_per_document: int = 32 * 1024 * 1024
    #: "png" (lossless; large photos fall back to lossy WebP) or "webp" (always lossy WebP).
    image_format: str = "png"

    # --- OCR provider -------------------------------------------------------------------------
    #: "tesseract" (local, default), "http" (OpenAI-compatible vision chat endpoint), "null".
    provider: str = "tesseract"
    #: base URL of the OpenAI-compatible API (".../v1"); "/chat/completions" is appended unless
    #: the URL already ends with it.
    http_url: str | None = None
    http_model: str | None = None
    http_timeout_s: float = 120.0
    http_api_key: str | None = None
    http_max_tokens: int = 8192
    #: instruction sent with each page image; None = the built-in layout-OCR prompt.
    http_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, not {self.provider!r}")
        if self.provider == "http" and not (self.http_url and self.http_model):
            raise ValueError("provider 'http' needs http_url and http_model")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
        if not 50 <= self.ocr_dpi <= 600:
            raise ValueError("ocr_dpi must be between 50 and 600")
        if self.tesseract_backend not in TESSERACT_BACKENDS:
            raise ValueError(f"tesseract_backend must be one of {TESSERACT_BACKENDS}")
        if self.tesseract_osd_min_confidence < 0:
            raise ValueError("tesseract_osd_min_confidence must be >= 0")
        if self.tesseract_psm not in (1, 3, 4, 6, 11, 12):
            raise ValueError("tesseract_psm must be one of 1, 3, 4, 6, 11, 12")
        positive = (
            "max_pages",
            "max_file_bytes",
            "max_render_pixels",
            "max_image_pixels",
            "max_decoded_image_bytes",
            "max_decoded_stream_bytes",
            "tesseract_timeout_s",
            "document_timeout_s",
            "max_objects_per_page",
            "max_image_side_px",
            "http_timeout_s",
            "http_max_tokens",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_images_per_document", "min_image_px", "max_image_bytes_per_document"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
