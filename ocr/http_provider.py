"""OCR through an OpenAI-compatible chat/vision endpoint (e.g. dots.ocr or another VLM behind vLLM).

One request per page: the rendered page goes as a PNG data URI in a ``chat/completions`` call, and
the model answers either with layout JSON - a list of ``{"bbox": [x1, y1, x2, y2], "category",
"text"}`` in the sent image's pixels, the shape dots.ocr produces - or with plain text, which
becomes one block covering the page. Models report no confidence, so ``confidence`` is null.

Failure mapping (the worker retries transient errors, then reports ``ocr_provider_error``):

* connection errors, timeouts, HTTP 408/425/429 and 5xx -> :class:`OCRProviderError` (transient);
* other HTTP errors (401, 404, 400 ...) -> :class:`OCRProviderError` with ``transient=False``: a
  misconfigured deployment, which retrying will not fix;
* a 2xx answer that is not a chat completion, or layout JSON of the wrong shape ->
  :class:`MalformedOCRResponseError` (``extraction_failed``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import httpx
from PIL import Image

from ocr.config import EngineConfig
from ocr.errors import MalformedOCRResponseError, OCRProviderError
from ocr.provider import OCRBlock

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 425, 429}
DEFAULT_PROMPT = (
    "Extract the text of this document page. Output the layout as a single JSON array in "
    'reading order, one object per layout element, with the keys "bbox" ([x1, y1, x2, y2] in '
    'pixels of this image), "category" and "text" (tables as Markdown). Output only the JSON. '
    "Languages likely present: {languages}."
)


class HttpProvider:
    name = "http"

    def __init__(self, config: EngineConfig) -> None:
        if not config.http_url or not config.http_model:
            raise ValueError("the http provider needs http_url and http_model")
        url = config.http_url.rstrip("/")
        self._url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self._config = config
        headers = {"Accept": "application/json"}
        if config.http_api_key:
            headers["Authorization"] = f"Bearer {config.http_api_key}"
        self._client = httpx.Client(
            headers=headers, timeout=config.http_timeout_s, follow_redirects=False
        )

    def close(self) -> None:
        self._client.close()

    def recognize(
        self, image: Image.Image, *, languages: Sequence[str], timeout_s: float
    ) -> list[OCRBlock]:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=3)
        data_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        prompt = (self._config.http_prompt or DEFAULT_PROMPT).replace(
            "{languages}", ", ".join(languages)
        )
        payload = {
            "model": self._config.http_model,
            "temperature": 0,
            "max_tokens": self._config.http_max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
        }
        timeout = max(0.1, min(self._config.http_timeout_s, timeout_s))
        try:
            response = self._client.post(self._url, json=payload, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise OCRProviderError("The OCR provider did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise OCRProviderError("The OCR provider could not be reached.") from exc
        status = response.status_code
        if status in _TRANSIENT_STATUS or status >= 500:
            log.info("OCR provider answered HTTP %d", status)
            raise OCRProviderError(f"The OCR provider is unavailable (HTTP {status}).")
        if status >= 300:
            log.warning("OCR provider refused the request: HTTP %d", status)
            raise OCRProviderError(
                f"The OCR provider refused the request (HTTP {status}).", transient=False
            )
        return parse_completion(response.content, image.size)


def parse_completion(body: bytes, size: tuple[int, int]) -> list[OCRBlock]:
    """A chat-completion body -> blocks in image pixels. Raises MalformedOCRResponseError."""
    try:
        message = json.loads(body)["choices"][0]["message"]
        content = message["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise MalformedOCRResponseError() from exc
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        try:
            content = "".join(p["text"] for p in content if p.get("type") == "text")
        except (AttributeError, KeyError, TypeError) as exc:
            raise MalformedOCRResponseError() from exc
    if content is None:
        return []
    if not isinstance(content, str):
        raise MalformedOCRResponseError()
    return parse_content(content, size)


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        first_newline = text.find("\n")
        text = text[first_newline + 1 :] if first_newline >= 0 else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def parse_content(content: str, size: tuple[int, int]) -> list[OCRBlock]:
    """The model's answer: layout JSON (list of elements) or plain text."""
    text = _strip_fence(content)
    if not text:
        return []
    width, height = size
    whole: tuple[float, float, float, float] = (0.0, 0.0, float(width), float(height))
    if text[0] not in "[{":
        return [OCRBlock(text, whole, None)]
    try:
        parsed: Any = json.loads(text)
    except ValueError as exc:
        raise MalformedOCRResponseError() from exc
    if isinstance(parsed, dict):
        items = parsed.get("blocks", parsed.get("layout"))
        parsed = items if isinstance(items, list) else [parsed]
    if not isinstance(parsed, list):
        raise MalformedOCRResponseError()
    blocks = []
    for item in parsed:
        if not isinstance(item, dict):
            raise MalformedOCRResponseError()
        value = item.get("text")
        if value is None:
            continue  # pictures and other elements without text
        if not isinstance(value, str):
            raise MalformedOCRResponseError()
        if not value.strip():
            continue
        bbox = _bbox(item.get("bbox"), width, height) if "bbox" in item else whole
        blocks.append(OCRBlock(value.strip(), bbox, None))
    return blocks


def _bbox(raw: Any, width: int, height: int) -> tuple[float, float, float, float]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise MalformedOCRResponseError()
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
    except (TypeError, ValueError) as exc:
        raise MalformedOCRResponseError() from exc
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise MalformedOCRResponseError()
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return x0, y0, x1, y1
