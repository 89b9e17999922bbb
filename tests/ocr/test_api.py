"""The engine's public contract: names, errors and codes, languages, config, sniffing, isolation."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
from ocr_testkit import REPO, encode, text_image

import ocr
from ocr.sniff import sniff


def test_public_names_and_signatures() -> None:
    params = inspect.signature(ocr.extract).parameters
    keyword_only = ["filename", "config", "on_page", "file_id", "pages", "converter"]
    assert list(params) == ["data", "options", *keyword_only]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in keyword_only)
    assert list(inspect.signature(ocr.probe).parameters)[:2] == ["data", "config"]
    probe = ocr.probe(encode(text_image(["x"], size=(100, 100)), "PNG"))
    assert probe == ocr.Probe(kind="image", content_type="image/png", page_count=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        probe.page_count = 2  # type: ignore[misc]


def test_engine_config_defaults_and_validation() -> None:
    config = ocr.EngineConfig()
    assert config.max_pages == 1000 and config.provider == "tesseract"
    assert 200 <= config.ocr_dpi <= 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_pages = 5  # type: ignore[misc]
    for bad in (
        {"provider": "cloud"},
        {"ocr_dpi": 20},
        {"max_pages": 0},
        {"image_format": "gif"},
        {"tesseract_timeout_s": 0},
    ):
        with pytest.raises(ValueError):
            ocr.EngineConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "code", "transient"),
    [
        (ocr.UnsupportedInputError, "unsupported_input", False),
        (ocr.CorruptDocumentError, "extraction_failed", False),
        (ocr.EncryptedDocumentError, "extraction_failed", False),
        (ocr.ResourceLimitError, "extraction_failed", False),
        (ocr.ExtractionTimeoutError, "extraction_failed", False),
        (ocr.MalformedOCRResponseError, "extraction_failed", False),
        (ocr.PageLimitExceededError, "page_limit_exceeded", False),
        (ocr.DocumentTooLargeError, "document_too_large", False),
        (ocr.OCRProviderError, "ocr_provider_error", True),
        (ocr.UnsupportedLanguageError, "validation_error", False),
    ],
)
def test_error_codes(cls: type[ocr.ExtractionError], code: str, transient: bool) -> None:
    error = cls()
    assert isinstance(error, ocr.ExtractionError)
    assert (error.code, error.transient) == (code, transient)
    assert error.message and error.to_dict() == {"code": code, "message": error.message}


def test_languages() -> None:
    installed = ocr.available_languages()
    assert "eng" in installed and "osd" not in installed
    installed.add("zz")  # callers get their own copy of the cached set
    assert "zz" not in ocr.available_languages()
    assert ocr.validate_languages(["eng", "eng"]) == ["eng"]
    for bad in (["xx"], ["eng", "--psm"], ["eng+fra"], [], "eng", ["../../etc/passwd"]):
        with pytest.raises(ocr.UnsupportedLanguageError) as info:
            ocr.validate_languages(bad)  # type: ignore[arg-type]
        assert info.value.code == "validation_error"


@pytest.mark.parametrize(
    ("data", "kind", "content_type"),
    [
        (b"%PDF-1.4\n...", "pdf", "application/pdf"),
        (b"\x00" * 100 + b"%PDF-1.7\n", "pdf", "application/pdf"),  # junk before the header
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "image", "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "image", "image/jpeg"),
        (b"II*\x00" + b"\x00" * 20, "image", "image/tiff"),
        (b"MM\x00*" + b"\x00" * 20, "image", "image/tiff"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image", "image/webp"),
        (b"GIF89a" + b"\x00" * 20, "image", "image/gif"),
        (b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00" + b"\x00" * 20, "image", "image/bmp"),
    ],
)
def test_sniff_by_magic_bytes(data: bytes, kind: str, content_type: str) -> None:
    sniffed = sniff(data)
    assert (sniffed.kind, sniffed.content_type) == (kind, content_type)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"BMW is a car brand, not a bitmap",
        b"PK\x03\x04rest",
        b"a,b,c\n1,2,3\n",
        b"\x1f\x8b\x08\x00",
        bytes(range(256)),
        b"RIFF\x00\x00\x00\x00WAVE",
    ],
)
def test_sniff_rejects_everything_else(data: bytes) -> None:
    with pytest.raises(ocr.UnsupportedInputError) as info:
        ocr.extract(data, filename="looks-fine.pdf")
    assert info.value.code == "unsupported_input"


def test_ocr_imports_nothing_of_the_service() -> None:
    code = (
        "import sys, ocr, ocr.pipeline, ocr.http_provider, ocr.tables, ocr.tesseract\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'service', 'tasks', 'client', 'flask', 'celery', 'sqlalchemy', 'redis', 'boto3'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == ""


def test_concurrent_calls_from_threads_are_safe(hostile) -> None:  # type: ignore[no-untyped-def]
    """pdfium is not thread-safe; the engine serialises its pdfium work so a threaded server
    (the sync endpoint) can call it from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    docs = [
        hostile.text_pdf(20, 10),
        hostile.table_pdf([["a", "b"], ["1", "2"], ["3", "4"]]),
        hostile.image_pdf(2),
        hostile.scan_pdf([text_image(["Threads are fine"])]),
    ]
    expected = [ocr.extract(d) for d in docs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ocr.extract, docs * 3))
    for i, result in enumerate(results):
        assert result == expected[i % len(docs)]
