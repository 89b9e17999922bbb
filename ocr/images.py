"""Image inputs (PNG, JPEG, TIFF, WebP, BMP, GIF) and image encoding for ``image`` chunks.

Pillow's decompression-bomb guard stays on (``Image.MAX_IMAGE_PIXELS`` is never changed); on top
of it every frame is checked against ``EngineConfig.max_image_pixels`` *before* it is decoded.
"""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from ocr.config import EngineConfig
from ocr.errors import CorruptDocumentError, PageLimitExceededError, ResourceLimitError

#: What a hostile or broken image makes Pillow raise. Anything in here means "cannot be read".
PIL_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    Image.DecompressionBombError,
)
#: DPI metadata outside this range is junk (0, 1, 65535 ...); such images count as 72 dpi.
_SANE_DPI = (20.0, 2400.0)


@dataclass
class Frame:
    """One frame, ready for OCR: 8-bit ``L``, at most ``max_render_pixels``."""

    image: Image.Image
    #: multiply a pixel coordinate of ``image`` by this to get points (72 per inch)
    px_to_pt: float
    width_pt: float
    height_pt: float
    downscaled: bool


def open_image(data: bytes, config: EngineConfig) -> tuple[Image.Image, int]:
    """Open (without decoding pixels) and count frames; enforce the page and pixel limits."""
    try:
        with warnings.catch_warnings():
            # we enforce our own limit below; Pillow's hard limit (2x) still raises
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            n_frames = _frame_count(im)
    except Image.DecompressionBombError as exc:
        raise ResourceLimitError(
            "The image has too many pixels to process safely (decompression bomb guard)."
        ) from exc
    except PIL_DECODE_ERRORS as exc:
        raise CorruptDocumentError(
            "The image is corrupted or truncated and cannot be read."
        ) from exc
    if n_frames > config.max_pages:
        raise PageLimitExceededError(
            f"The image has {n_frames} frames; the maximum is {config.max_pages}."
        )
    _check_pixels(im, config)
    return im, n_frames


def _frame_count(im: Image.Image) -> int:
    # Only TIFF frames are pages; GIF/WebP animations are read as their first frame (SPEC).
    if im.format == "TIFF":
        return max(1, int(getattr(im, "n_frames", 1)))
    return 1


def _check_pixels(im: Image.Image, config: EngineConfig) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise CorruptDocumentError("The image has no pixels.")
    if w * h > config.max_image_pixels:
        raise ResourceLimitError(
            f"The image is too large to process ({w}x{h} pixels; "
            f"the limit is {config.max_image_pixels:,} pixels)."
        )


def iter_frames(
    im: Image.Image, n_frames: int, config: EngineConfig, *, start: int = 0
) -> Iterator[Frame]:
    """Decode frames one at a time (a 1,000-frame TIFF never sits in memory whole), from
    frame ``start`` (a page slice; the frames before it are not decoded)."""
    for index in range(start, n_frames):
        try:
            if index:
                im.seek(index)
            _check_pixels(im, config)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                frame = _for_ocr(im)
        except (ResourceLimitError, CorruptDocumentError):
            raise
        except Image.DecompressionBombError as exc:
            raise ResourceLimitError("The image has too many pixels to process safely.") from exc
        except PIL_DECODE_ERRORS as exc:
            raise CorruptDocumentError(
                f"Frame {index + 1} of the image is corrupted or truncated."
            ) from exc
        declared = _declared_dpi(im)
        yield _bounded(frame, declared or 72.0, config, has_dpi=declared is not None)


def _declared_dpi(im: Image.Image) -> float | None:
    """The image's dpi metadata when present and credible."""
    dpi: Any = im.info.get("dpi")
    try:
        value = float(dpi[0]) if isinstance(dpi, tuple) else float(dpi)
    except (TypeError, ValueError, IndexError):
        return None
    if abs(value - round(value)) < 0.05:
        value = float(round(value))  # PNG stores pixels per metre: 144 dpi reads as 143.99
    return value if _SANE_DPI[0] <= value <= _SANE_DPI[1] else None


def _for_ocr(im: Image.Image) -> Image.Image:
    """Any mode -> 8-bit grayscale on white (CMYK, palette, alpha, 16-bit, EXIF rotation)."""
    if im.format == "JPEG":
        im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        im = im.convert("I")
        extrema: Any = im.getextrema()
        lo, hi = int(extrema[0]), int(extrema[1])
        span = max(1, hi - lo)
        return im.point(lambda v: (v - lo) * 255.0 / span).convert("L")
    if mode == "F":
        return im.convert("L")
    if mode == "CMYK":
        im = im.convert("RGB")
    return im.convert("L") if im.mode != "L" else im.copy()


def _bounded(im: Image.Image, dpi: float, config: EngineConfig, *, has_dpi: bool) -> Frame:
    """Downscale to ``max_render_pixels``; ``image.info["dpi"]`` is set to the resolution OCR
    sees (the OCR provider passes it on) when the input declares a credible one, else removed."""
    px_to_pt = 72.0 / dpi
    width_pt = im.width * px_to_pt
    height_pt = im.height * px_to_pt
    downscaled = False
    pixels = im.width * im.height
    if pixels > config.max_render_pixels:
        factor = (config.max_render_pixels / pixels) ** 0.5
        size = (max(1, int(im.width * factor)), max(1, int(im.height * factor)))
        px_to_pt = width_pt / size[0]
        im = im.resize(size, Image.Resampling.LANCZOS)
        downscaled = True
    if has_dpi:
        im.info["dpi"] = (72.0 / px_to_pt, 72.0 / px_to_pt)
    else:
        im.info.pop("dpi", None)
    return Frame(im, px_to_pt, width_pt, height_pt, downscaled)


def encode_image(
    im: Image.Image, *, max_side: int, prefer: str = "png", png_budget: int = 512 * 1024
) -> tuple[str, str, int, int]:
    """Encode an extracted figure: (mime, base64, width, height).

    PNG keeps line art and text exact; photos that would be a large PNG go out as WebP, at a
    fraction of the size. ``prefer="webp"`` always uses WebP.
    """
    if im.mode not in ("L", "RGB", "RGBA", "LA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    mime = "image/png"
    if prefer == "png":
        im.save(buf, format="PNG", compress_level=6)
    if prefer != "png" or buf.tell() > png_budget:
        buf = io.BytesIO()
        webp_im = im if im.mode in ("RGB", "RGBA") else im.convert("RGB")
        webp_im.save(buf, format="WEBP", quality=85, method=4)
        mime = "image/webp"
    return mime, base64.b64encode(buf.getvalue()).decode("ascii"), im.width, im.height
