"""The engine's error taxonomy.

Every error the engine raises on purpose is an :class:`ExtractionError`. Each class knows the
public error code of SPEC's "Item error codes" table (``code``) and whether retrying the same
input can help (``transient``). ``message`` is safe to show to a client: it never contains paths,
library names, stack traces or other internals; the detail goes to logs through ``__cause__``.
"""

from __future__ import annotations


class ExtractionError(Exception):
    """Base class: a document could not be extracted, for a reason with a public code."""

    code: str = "extraction_failed"
    transient: bool = False
    default_message: str = "The document could not be extracted."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        """The error envelope's ``{"code", "message"}`` pair (the item ``error`` field)."""
        return {"code": self.code, "message": self.message}


class UnsupportedInputError(ExtractionError):
    """The bytes are not a format the engine reads (magic bytes decide, not the filename)."""

    code = "unsupported_input"
    default_message = (
        "The file is not a supported format. Supported: PDF, PNG, JPEG, TIFF, WebP, BMP, GIF,"
        " DOCX, DOC, PPTX, PPT, XLSX, XLSM, XLS, ODT, ODP, ODS, RTF, HTML, EPUB."
    )


class CorruptDocumentError(ExtractionError):
    """A PDF or image that claims a supported format but cannot be read (corrupted, truncated)."""

    code = "extraction_failed"
    default_message = "The document is corrupted or truncated and cannot be read."


class EncryptedDocumentError(ExtractionError):
    """A PDF that needs a password (it does not open with the empty user password)."""

    code = "extraction_failed"
    default_message = "The PDF is encrypted and needs a password; remove the password and resubmit."


class ResourceLimitError(ExtractionError):
    """The document would need more memory or pixels than the engine allows (e.g. image bombs)."""

    code = "extraction_failed"
    default_message = "The document exceeds the engine's resource limits."


class PageLimitExceededError(ExtractionError):
    """More pages (or image frames) than the configured maximum; raised before any rendering."""

    code = "page_limit_exceeded"
    default_message = "The document has more pages than the allowed maximum."


class DocumentTooLargeError(ExtractionError):
    """The input is larger than the maximum file size."""

    code = "document_too_large"
    default_message = "The document is larger than the maximum file size."


class ExtractionTimeoutError(ExtractionError):
    """The per-document time budget ran out."""

    code = "extraction_failed"
    default_message = "The document took longer to extract than the time limit allows."


class OCRProviderError(ExtractionError):
    """The OCR provider is unavailable (connection error, timeout, 429, 5xx). Worth a retry."""

    code = "ocr_provider_error"
    transient = True
    default_message = "The OCR provider is unavailable; the extraction will be retried."

    def __init__(self, message: str | None = None, *, transient: bool = True) -> None:
        super().__init__(message)
        # False for a provider that refuses the request (bad key, unknown model): retrying the
        # same request cannot succeed, so the worker should fail the item at once.
        self.transient = transient


class MalformedOCRResponseError(ExtractionError):
    """The OCR provider answered, but with something that is not a valid OCR result."""

    code = "extraction_failed"
    default_message = "The OCR provider returned an answer that could not be understood."


class UnsupportedLanguageError(ExtractionError):
    """An OCR language that is not installed (or not a valid language code).

    The API turns this into a 422 ``validation_error`` at submit time, so a worker never sees it.
    """

    code = "validation_error"

    def __init__(self, languages: list[str] | None = None, message: str | None = None) -> None:
        self.languages = list(languages or [])
        if message is None:
            shown = ", ".join(repr(x) for x in self.languages[:10]) or "(none)"
            message = f"Unsupported OCR language(s): {shown}."
        super().__init__(message)


class InvalidOptionsError(ExtractionError):
    """Options of the wrong shape (the API validates them first; this is the backstop)."""

    code = "validation_error"
    default_message = "Invalid extraction options."


__all__ = [
    "CorruptDocumentError",
    "DocumentTooLargeError",
    "EncryptedDocumentError",
    "ExtractionError",
    "ExtractionTimeoutError",
    "InvalidOptionsError",
    "MalformedOCRResponseError",
    "OCRProviderError",
    "PageLimitExceededError",
    "ResourceLimitError",
    "UnsupportedInputError",
    "UnsupportedLanguageError",
]
