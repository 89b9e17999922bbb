"""Tesseract, the default OCR provider (through pytesseract), and the language helpers.

* ``OMP_THREAD_LIMIT=1``: Tesseract's OpenMP threads fight the worker processes for cores and make
  it slower overall; parallelism comes from running more workers. pytesseract passes
  ``os.environ`` to the subprocess, so the provider sets the variable there when it is created.
* Each call has a timeout; pytesseract kills the process when it runs out.
* Page images go to Tesseract as uncompressed PGM/PPM files: encoding a 300 dpi page as PNG (what
  pytesseract does with a PIL image) costs more than reading it back.
* ``--psm 1`` (segmentation with orientation detection) reads 90/180/270-degree scans correctly
  for ~10-15 % more time than ``--psm 3``; word boxes stay in the input image's coordinates.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import pytesseract
from PIL import Image

from ocr.config import EngineConfig
from ocr.errors import OCRProviderError, UnsupportedLanguageError
from ocr.provider import OCRBlock, PageOCRTimeout

_LANG_RE = re.compile(r"^[A-Za-z0-9_]{2,40}$")
# Not recognition languages: orientation/script detection data and tesseract's test data.
_NOT_LANGUAGES = {"osd", "equ"}
#: words below this confidence are dropped when the whole line is this unsure: that is how
#: Tesseract reports texture, photos and line art it mistook for text.
_NOISE_LINE_CONFIDENCE = 40.0


@functools.lru_cache(maxsize=8)
def _installed_packs(tesseract_cmd: str) -> frozenset[str]:
    try:
        proc = subprocess.run(
            [tesseract_cmd, "--list-langs"],
            capture_output=True,
            timeout=30,
            check=False,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    # first line: 'List of available languages in "/usr/share/tesseract-ocr/5/tessdata/" (6):'
    return frozenset(x.strip() for x in out[1:] if x.strip())


def available_languages(tesseract_cmd: str = "tesseract") -> set[str]:
    """Installed Tesseract language packs usable for recognition (cached per process)."""
    return set(_installed_packs(tesseract_cmd)) - _NOT_LANGUAGES


def validate_languages(
    langs: Iterable[str] | None, *, available: Iterable[str] | None = None
) -> list[str]:
    """Check OCR language codes against the installed packs (or ``available``); returns them
    de-duplicated. Raises :class:`UnsupportedLanguageError` (code ``validation_error``)."""
    if langs is None or isinstance(langs, str):
        raise UnsupportedLanguageError(
            [] if langs is None else [langs], "languages must be a list of language codes"
        )
    items = list(langs)
    if not items:
        raise UnsupportedLanguageError([], "languages must name at least one language")
    known = set(available) if available is not None else available_languages()
    bad = [x for x in items if not isinstance(x, str) or not _LANG_RE.match(x) or x not in known]
    if bad:
        shown = sorted(known)
        message = (
            f"Unsupported OCR language(s): {', '.join(repr(x)[:50] for x in bad[:10])}. "
            f"Installed: {', '.join(shown) if shown else 'none'}."
        )
        raise UnsupportedLanguageError([str(x)[:50] for x in bad], message)
    return list(dict.fromkeys(items))


class TesseractProvider:
    """Local Tesseract through pytesseract's ``image_to_data`` (TSV: words with boxes)."""

    name = "tesseract"

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        os.environ["OMP_THREAD_LIMIT"] = "1"
        if config.tesseract_cmd != "tesseract":
            pytesseract.pytesseract.tesseract_cmd = config.tesseract_cmd
        psm = config.tesseract_psm
        if psm == 1 and "osd" not in _installed_packs(config.tesseract_cmd):
            psm = 3
        self._psm = psm
        self._tmp = tempfile.TemporaryDirectory(prefix="pagelane-ocr-")

    def close(self) -> None:
        self._tmp.cleanup()

    def recognize(
        self, image: Image.Image, *, languages: Sequence[str], timeout_s: float
    ) -> list[OCRBlock]:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        path = os.path.join(self._tmp.name, "page.pgm" if image.mode == "L" else "page.ppm")
        image.save(path, format="PPM")
        try:
            data = pytesseract.image_to_data(
                path,
                lang="+".join(languages),
                config=f"--psm {self._psm}",
                timeout=max(0.05, timeout_s),
                output_type=pytesseract.Output.DICT,
            )
        except RuntimeError as exc:
            if "timeout" in str(exc).lower():
                raise PageOCRTimeout() from exc
            raise OCRProviderError("The OCR engine failed on this page.") from exc
        except pytesseract.TesseractNotFoundError as exc:
            raise OCRProviderError("The OCR engine is not installed on this worker.") from exc
        except pytesseract.TesseractError as exc:
            raise OCRProviderError("The OCR engine failed on this page.") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return blocks_from_tsv(data)


def blocks_from_tsv(data: dict[str, list[Any]]) -> list[OCRBlock]:
    """Tesseract's word table -> paragraph blocks (lines joined by newlines)."""
    Box = tuple[int, int, int, int]
    paragraphs: dict[tuple[int, int, int], dict[int, list[tuple[str, float, Box]]]]
    paragraphs = {}
    texts = data.get("text", [])
    for i, raw in enumerate(texts):
        word = str(raw).strip() if raw is not None else ""
        try:
            conf = float(data["conf"][i])
        except (TypeError, ValueError):
            continue
        if not word or conf < 0:
            continue
        key = (int(data["page_num"][i]), int(data["block_num"][i]), int(data["par_num"][i]))
        box: Box = (
            int(data["left"][i]),
            int(data["top"][i]),
            int(data["left"][i]) + int(data["width"][i]),
            int(data["top"][i]) + int(data["height"][i]),
        )
        paragraphs.setdefault(key, {}).setdefault(int(data["line_num"][i]), []).append(
            (word, conf, box)
        )
    blocks: list[OCRBlock] = []
    for lines in paragraphs.values():
        kept_lines: list[str] = []
        boxes: list[Box] = []
        weighted = 0.0
        n_chars = 0
        for words in lines.values():
            n_line = max(1, sum(len(w) for w, _, _ in words))
            line_conf = sum(c * len(w) for w, c, _ in words) / n_line
            if line_conf < _NOISE_LINE_CONFIDENCE and not any(
                sum(ch.isalnum() for ch in w) >= 3 and c >= _NOISE_LINE_CONFIDENCE
                for w, c, _ in words
            ):
                continue
            kept_lines.append(" ".join(w for w, _, _ in words))
            for w, c, box in words:
                boxes.append(box)
                weighted += c * len(w)
                n_chars += len(w)
        if not kept_lines:
            continue
        bbox = (
            float(min(b[0] for b in boxes)),
            float(min(b[1] for b in boxes)),
            float(max(b[2] for b in boxes)),
            float(max(b[3] for b in boxes)),
        )
        blocks.append(OCRBlock("\n".join(kept_lines), bbox, weighted / max(1, n_chars)))
    return blocks
