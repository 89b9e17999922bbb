"""Tesseract, the default OCR provider, and the language helpers.

Two backends produce the same word table (Tesseract's TSV: words with boxes and confidences):

* ``library`` (chosen by ``tesseract_backend="auto"`` when tesserocr is importable): Tesseract's
  C++ API in this process. One ``PyTessBaseAPI`` per language set (and one for orientation
  detection) is kept per thread, so the model is loaded once per process and no process starts
  per page; the page's pixels are handed over as bytes (no file). bench/ocr_speed.py: ~1.4x
  the pages/s per core of the bare ``tesseract`` command on the same images. The per-page
  timeout is ``Recognize(timeout=ms)`` (Tesseract's cancel monitor): it is checked while words
  are recognised, not during layout analysis or OSD, so a page can overrun by those (seconds at
  most on a 40 MP page); the worker's sandbox wall clock is the backstop.
* ``subprocess``: the ``tesseract`` command through pytesseract, fed an uncompressed PGM/PPM file
  (encoding a 300 dpi page as PNG, what pytesseract does with a PIL image, costs more than
  reading it back); pytesseract kills the process when the timeout runs out.

Both: ``OMP_THREAD_LIMIT=1`` (Tesseract's OpenMP threads fight the worker processes for cores;
parallelism comes from running more workers; set in ``os.environ`` when the provider is created,
which the subprocess inherits). The page's resolution is passed on (``image.info["dpi"]``, set by
the renderer): without it Tesseract assumes 70 dpi, and its layout analysis then split the
justified pdfLaTeX pages of bench/ocr_quality.py into false columns at 200 dpi (64 % CER).

Orientation (``--psm 1``): orientation detection (OSD) runs first. A sure page (OSD margin >=
``tesseract_osd_min_confidence``) is turned upright and read with ``--psm 3``. An unsure one (a
short page: OSD guesses right more often than not, but Tesseract's own psm 1 rotates only at a
margin of 7, so a two-line page upside down came out as gibberish) is read in OSD's guess first,
then in the other orientations until a reading looks right (most of its characters in confident,
well-formed words); the best reading is kept. Word boxes are mapped back to the input image.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _installed_packs(tesseract_cmd: str) -> frozenset[str]:
    return frozenset(_list_langs(tesseract_cmd)[1])


@functools.lru_cache(maxsize=8)
def _list_langs(tesseract_cmd: str) -> tuple[str | None, tuple[str, ...]]:
    """``tesseract --list-langs``: (tessdata folder, packs); (None, ()) without the command."""
    try:
        proc = subprocess.run(
            [tesseract_cmd, "--list-langs"],
            capture_output=True,
            timeout=30,
            check=False,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )
    except (OSError, subprocess.SubprocessError):
        return None, ()
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    # first line: 'List of available languages in "/usr/share/tesseract-ocr/5/tessdata/" (6):'
    found = re.search(r'"([^"]+)"', out[0]) if out else None
    return (found.group(1) if found else None), tuple(x.strip() for x in out[1:] if x.strip())


def tessdata_dir(config: EngineConfig | None = None) -> str | None:
    """The tessdata folder the library backend loads models from (see ``tesseract_datapath``)."""
    config = config or EngineConfig()
    if config.tesseract_datapath:
        return config.tesseract_datapath
    found = _list_langs(config.tesseract_cmd)[0]
    if found:
        return found
    tesserocr = _tesserocr()
    return None if tesserocr is None else str(tesserocr.get_languages()[0])


@functools.cache
def _tesserocr() -> Any:
    try:
        import tesserocr
    except ImportError:
        return None
    return tesserocr


def library_status() -> str:
    """ "tesseract X.Y.Z (tesserocr A.B.C)" when the library backend can run, else why not."""
    tesserocr = _tesserocr()
    if tesserocr is None:
        return "unavailable: tesserocr is not installed"
    version = str(tesserocr.tesseract_version()).split()[:2]
    return f"{' '.join(version)} (tesserocr {getattr(tesserocr, '__version__', '?')})"


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


#: candidate orientations of an unsure page after OSD's own guess (clockwise degrees the content
#: is turned by, as OSD reports them)
_ORIENTATIONS = (0, 180, 90, 270)
#: an unsure page's reading is accepted without trying the other orientations when this share
#: of its characters is in confident, well-formed words (an upside-down reading scores 0.2-0.5,
#: an upright one 0.85-0.97 on the test pages)
_GOOD_READING = 0.75
_EDGE_PUNCTUATION = (
    "\"'`.,;:!?()[]{}<>*/\\|-\u00ab\u00bb\u201e\u201c\u201d\u2018\u2019\u2010\u2011\u2013\u2014"
)

TSV = dict[str, list[Any]]


@dataclass(frozen=True)
class Orientation:
    """OSD's answer: the content is turned ``degrees`` clockwise; ``confidence`` is the margin
    of that orientation over the next best one."""

    degrees: int
    confidence: float


class _Backend(Protocol):
    def osd(self, image: Image.Image, dpi: int | None) -> Orientation | None: ...

    def read(
        self,
        image: Image.Image,
        dpi: int | None,
        languages: Sequence[str],
        psm: int,
        timeout_s: float,
    ) -> TSV: ...

    def close(self) -> None: ...


class TesseractProvider:
    """Local Tesseract (library or subprocess backend); see the module docstring."""

    name = "tesseract"

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        os.environ["OMP_THREAD_LIMIT"] = "1"
        backend = config.tesseract_backend
        if backend == "auto":
            backend = "library" if _tesserocr() is not None else "subprocess"
        self.backend_name = backend
        self._backend: _Backend
        if backend == "library":
            if _tesserocr() is None:
                raise OCRProviderError("The OCR engine is not installed on this worker.")
            self._backend = _LibraryBackend(tessdata_dir(config))
        else:
            self._backend = _SubprocessBackend(config)
        psm = config.tesseract_psm
        self._osd = psm == 1 and "osd" in self._packs()
        self._psm = 3 if psm == 1 else psm

    def _packs(self) -> frozenset[str]:
        if self.backend_name == "library":
            datapath = tessdata_dir(self._config)
            tesserocr = _tesserocr()
            return frozenset(tesserocr.get_languages(datapath)[1]) if datapath else frozenset()
        return _installed_packs(self._config.tesseract_cmd)

    def close(self) -> None:
        self._backend.close()

    def recognize(
        self, image: Image.Image, *, languages: Sequence[str], timeout_s: float
    ) -> list[OCRBlock]:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        dpi = _image_dpi(image)
        deadline = time.monotonic() + max(0.05, timeout_s)
        if not self._osd:
            return blocks_from_tsv(self._read(image, 0, dpi, languages, deadline))
        guess = self._backend.osd(image, dpi)
        if guess is not None and guess.confidence >= self._config.tesseract_osd_min_confidence:
            return blocks_from_tsv(self._read(image, guess.degrees, dpi, languages, deadline))
        # unsure: OSD's guess first, then the others until a reading looks right
        first = guess.degrees if guess is not None else 0
        candidates = [first, *(a for a in _ORIENTATIONS if a != first)]
        best: tuple[float, TSV] | None = None
        for angle in candidates:
            try:
                data = self._read(image, angle, dpi, languages, deadline)
            except PageOCRTimeout:
                if best is None:
                    raise
                break
            weight, quality = reading_score(data)
            if best is None or weight > best[0]:
                best = (weight, data)
            if quality >= _GOOD_READING or weight == 0 or time.monotonic() >= deadline:
                # right way up, or nothing legible in any orientation (a blank page, a photo):
                # the other orientations would not find more
                break
        assert best is not None
        return blocks_from_tsv(best[1])

    def _read(
        self,
        image: Image.Image,
        angle: int,
        dpi: int | None,
        languages: Sequence[str],
        deadline: float,
    ) -> TSV:
        """Read ``image`` turned upright from ``angle`` (OSD's clockwise degrees); boxes come back
        in ``image``'s pixels."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PageOCRTimeout()
        upright = image if angle == 0 else image.transpose(_UPRIGHT[angle])
        try:
            data = self._backend.read(upright, dpi, languages, self._psm, remaining)
        finally:
            if upright is not image:
                upright.close()
        if angle:
            _boxes_back(data, angle, image.width, image.height)
        return data


# PIL's transpose that turns content rotated clockwise by the key upright again
_UPRIGHT = {
    90: Image.Transpose.ROTATE_90,  # counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def _boxes_back(data: TSV, angle: int, width: int, height: int) -> None:
    """Map word boxes of the upright image back to the original (``width`` x ``height``)."""
    lefts, tops, widths, heights = data["left"], data["top"], data["width"], data["height"]
    for i in range(len(lefts)):
        x0, y0 = int(lefts[i]), int(tops[i])
        x1, y1 = x0 + int(widths[i]), y0 + int(heights[i])
        if angle == 180:
            box = (width - x1, height - y1, width - x0, height - y0)
        elif angle == 90:  # upright = original turned 90 degrees counter-clockwise
            box = (width - y1, x0, width - y0, x1)
        else:  # 270: upright = original turned 90 degrees clockwise
            box = (y0, height - x1, y1, height - x0)
        lefts[i], tops[i] = box[0], box[1]
        widths[i], heights[i] = box[2] - box[0], box[3] - box[1]


def _image_dpi(image: Image.Image) -> int | None:
    """The page's resolution as the renderer recorded it (``info["dpi"]``), if credible."""
    dpi: Any = image.info.get("dpi")
    try:
        value = float(dpi[0]) if isinstance(dpi, tuple) else float(dpi)
    except (TypeError, ValueError, IndexError):
        return None
    return round(value) if 20 <= value <= 2400 else None


def _well_formed(word: str) -> bool:
    """A word as text is written: a number, or letters in one case pattern (lower, Title,
    UPPER, or uncased scripts), possibly hyphenated. Upside-down Latin reads as 'sAep', 'Auiy}',
    '$9]0U': mixed case, digits and brackets inside words."""
    core = word.strip(_EDGE_PUNCTUATION)
    if not core:
        return False
    if any(ch.isdigit() for ch in core):
        return all(ch.isdigit() or ch in ".,:/%-" for ch in core)
    parts = re.split("[-'\u2019]", core)
    if not all(p.isalpha() for p in parts if p) or not any(parts):
        return False
    return (
        core.islower()
        or core.isupper()
        or core.istitle()
        or not any(ch.isupper() or ch.islower() for ch in core)
    )


def reading_score(data: TSV) -> tuple[float, float]:
    """(characters in well-formed words, weighted by confidence / 100; that as a share of all
    recognised characters). The orientation that reads right has the most of the first."""
    weight = 0.0
    n_chars = 0
    for i, raw in enumerate(data.get("text", [])):
        word = str(raw).strip() if raw is not None else ""
        try:
            conf = float(data["conf"][i])
        except (TypeError, ValueError):
            continue
        if not word or conf < 0:
            continue
        n_chars += len(word)
        if _well_formed(word):
            weight += len(word) * min(conf, 100.0) / 100.0
    return weight, weight / max(1, n_chars)


def tsv_to_dict(text: str) -> TSV:
    """Tesseract's TSV output (with or without its header line) -> pytesseract's DICT layout."""
    names = [
        "level",
        "page_num",
        "block_num",
        "par_num",
        "line_num",
        "word_num",
        "left",
        "top",
        "width",
        "height",
        "conf",
        "text",
    ]
    out: TSV = {n: [] for n in names}
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) < 11 or cells[0] == "level":
            continue
        if len(cells) == 11:
            cells.append("")
        for n, cell in zip(names, cells[:12], strict=True):
            out[n].append(cell if n == "text" else (float(cell) if n == "conf" else int(cell)))
    return out


class _SubprocessBackend:
    """The ``tesseract`` command through pytesseract, on an uncompressed PGM/PPM file."""

    def __init__(self, config: EngineConfig) -> None:
        if config.tesseract_cmd != "tesseract":
            pytesseract.pytesseract.tesseract_cmd = config.tesseract_cmd
        self._tmp = tempfile.TemporaryDirectory(prefix="pagelane-ocr-")

    def close(self) -> None:
        self._tmp.cleanup()

    def _file(self, image: Image.Image) -> str:
        path = os.path.join(self._tmp.name, "page.pgm" if image.mode == "L" else "page.ppm")
        image.save(path, format="PPM")
        return path

    def osd(self, image: Image.Image, dpi: int | None) -> Orientation | None:
        path = self._file(image)
        try:
            out = pytesseract.image_to_osd(path, config=_dpi_flag(dpi), timeout=60)
        except (RuntimeError, pytesseract.TesseractError) as exc:
            # 'Too few characters. Skipping this page' and the like: no orientation found
            log.debug("OSD found no orientation: %s", exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        degrees = re.search(r"Orientation in degrees:\s*(\d+)", out)
        conf = re.search(r"Orientation confidence:\s*([\d.]+)", out)
        if not degrees or not conf:
            return None
        return Orientation(int(degrees.group(1)) % 360, float(conf.group(1)))

    def read(
        self,
        image: Image.Image,
        dpi: int | None,
        languages: Sequence[str],
        psm: int,
        timeout_s: float,
    ) -> TSV:
        path = self._file(image)
        try:
            data: TSV = pytesseract.image_to_data(
                path,
                lang="+".join(languages),
                config=f"--psm {psm} {_dpi_flag(dpi)}".strip(),
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
        return data


def _dpi_flag(dpi: int | None) -> str:
    return f"--dpi {dpi}" if dpi else ""


#: language sets whose loaded API a thread keeps (each holds its models: ~20-60 MB)
_MAX_APIS_PER_THREAD = 4
_apis = threading.local()


def _api(datapath: str | None, lang: str, psm: int) -> Any:
    """This thread's ``PyTessBaseAPI`` for ``lang`` (created once: the model load is the
    expensive part), most recently used kept; the least recently used beyond the cap is ended."""
    cache: collections.OrderedDict[tuple[str | None, str], Any] | None
    cache = getattr(_apis, "cache", None)
    if cache is None:
        cache = _apis.cache = collections.OrderedDict()
    key = (datapath, lang)
    api = cache.get(key)
    if api is None:
        tesserocr = _tesserocr()
        kwargs = {"path": datapath} if datapath else {}
        try:
            api = tesserocr.PyTessBaseAPI(lang=lang, psm=psm, **kwargs)
        except RuntimeError as exc:
            raise OCRProviderError("The OCR engine could not load its language data.") from exc
        cache[key] = api
        while len(cache) > _MAX_APIS_PER_THREAD:
            _, old = cache.popitem(last=False)
            old.End()
    cache.move_to_end(key)
    api.SetPageSegMode(psm)
    return api


class _LibraryBackend:
    """Tesseract's C++ API through tesserocr (one loaded API per language set and thread)."""

    def __init__(self, datapath: str | None) -> None:
        self._datapath = datapath

    def close(self) -> None:
        pass  # the APIs outlive the provider: loading a model is what this backend avoids

    @staticmethod
    def _set_image(api: Any, image: Image.Image, dpi: int | None) -> bytes:
        pixels = image.tobytes()
        bpp = 1 if image.mode == "L" else 3
        api.SetImageBytes(pixels, image.width, image.height, bpp, image.width * bpp)
        if dpi:
            api.SetSourceResolution(dpi)
        return pixels  # Tesseract does not copy the buffer: the caller keeps it alive

    def osd(self, image: Image.Image, dpi: int | None) -> Orientation | None:
        # the OSD model as the main language: DetectOrientationScript on an API loaded with a
        # recognition language aborts the process (std::out_of_range in Tesseract 5.5)
        api = _api(self._datapath, "osd", _tesserocr().PSM.OSD_ONLY)
        pixels = self._set_image(api, image, dpi)
        try:
            found = api.DetectOrientationScript()
        finally:
            api.Clear()
            del pixels
        if not found:
            return None
        return Orientation(int(found["orient_deg"]) % 360, float(found["orient_conf"]))

    def read(
        self,
        image: Image.Image,
        dpi: int | None,
        languages: Sequence[str],
        psm: int,
        timeout_s: float,
    ) -> TSV:
        api = _api(self._datapath, "+".join(languages), psm)
        pixels = self._set_image(api, image, dpi)
        try:
            started = time.monotonic()
            if not api.Recognize(timeout=max(1, int(timeout_s * 1000))):
                if time.monotonic() - started >= timeout_s * 0.9:
                    raise PageOCRTimeout()
                raise OCRProviderError("The OCR engine failed on this page.")
            return tsv_to_dict(api.GetTSVText(0))
        finally:
            api.Clear()
            del pixels


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
