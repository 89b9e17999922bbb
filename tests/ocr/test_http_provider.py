"""The http OCR provider against a fake OpenAI-compatible server on loopback that can fail."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
from ocr_testkit import encode, text_image, text_of
from PIL import Image

import ocr


class FakeVLM(ThreadingHTTPServer):
    """Answers POST /v1/chat/completions according to ``mode``; records what it received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "layout"
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeVLM

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
        )
        mode = self.server.mode
        if mode == "slow":
            time.sleep(2.0)
            mode = "layout"
        if mode in ("500", "503", "429", "401"):
            return self._send(int(mode), b'{"error": "nope"}')
        if mode == "not-json":
            return self._send(200, b"<html>proxy error page</html>")
        if mode == "no-choices":
            return self._send(200, json.dumps({"id": "x", "choices": []}).encode())
        content: Any = {
            "layout": json.dumps(
                [
                    {"bbox": [100, 50, 700, 120], "category": "Title", "text": "Quarterly Report"},
                    {"bbox": [100, 150, 900, 260], "category": "Text", "text": "Revenue grew 12%."},
                    {"bbox": [100, 300, 400, 500], "category": "Picture"},
                ]
            ),
            "fenced": '```json\n[{"bbox": [0, 0, 10, 10], "text": "fenced answer"}]\n```',
            "plain": "Just the text of the page.\nSecond line.",
            "bad-bbox": json.dumps([{"bbox": ["a", 1, 2, 3], "text": "x"}]),
            "truncated-json": '[{"bbox": [1, 2, 3, 4], "text": "cut of',
            "content-not-string": 42,
        }[mode]
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
        }
        self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def vlm() -> Iterator[FakeVLM]:
    server = FakeVLM()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page_png() -> bytes:
    return encode(
        text_image(["ignored by the fake"], size=(1000, 800), origin=(50, 50)),
        "PNG",
        dpi=(144, 144),
    )


def _config(vlm: FakeVLM, **kw: Any) -> ocr.EngineConfig:
    return ocr.EngineConfig(
        provider="http",
        http_url=vlm.url,
        http_model="dots-ocr",
        http_timeout_s=kw.pop("http_timeout_s", 5.0),
        **kw,
    )


def test_layout_answer_becomes_ocr_chunks(vlm: FakeVLM, page_png: bytes) -> None:
    result = ocr.extract(
        page_png, {"languages": ["eng", "deu"]}, config=_config(vlm, http_api_key="sk-test")
    )
    chunks = result["chunks"]
    assert [c["page_content"] for c in chunks] == ["Quarterly Report", "Revenue grew 12%."]
    assert all(c["source"] == "ocr" and c["confidence"] is None for c in chunks)
    # pixels of a 144 dpi image -> points: halved
    assert chunks[0]["bbox"] == [50.0, 25.0, 350.0, 60.0]

    (request,) = vlm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["json"]
    assert body["model"] == "dots-ocr" and body["temperature"] == 0
    parts = body["messages"][0]["content"]
    image_url = next(p for p in parts if p["type"] == "image_url")["image_url"]["url"]
    assert image_url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(image_url.split(",", 1)[1])))
    assert sent.size == (1000, 800)
    prompt = next(p for p in parts if p["type"] == "text")["text"]
    assert "eng, deu" in prompt


def test_plain_and_fenced_answers(vlm: FakeVLM, page_png: bytes) -> None:
    vlm.mode = "plain"
    result = ocr.extract(page_png, config=_config(vlm))
    assert text_of(result) == "Just the text of the page. Second line."
    assert result["chunks"][0]["bbox"] == [0.0, 0.0, 500.0, 400.0]  # the whole page
    vlm.mode = "fenced"
    assert text_of(ocr.extract(page_png, config=_config(vlm))) == "fenced answer"


def test_scanned_pdf_pages_go_to_the_provider(vlm: FakeVLM, hostile: ModuleType) -> None:
    data = hostile.scan_pdf([text_image(["page one"]), text_image(["page two"])])
    result = ocr.extract(data, config=_config(vlm, ocr_dpi=100))
    assert len(vlm.requests) == 2
    assert {c["page_no"] for c in result["chunks"]} == {1, 2}
    # born-digital pages never reach the provider in auto mode
    ocr.extract(hostile.text_pdf(2, 3), config=_config(vlm))
    assert len(vlm.requests) == 2


@pytest.mark.parametrize("mode", ["500", "503", "429", "slow"])
def test_unavailable_provider_is_transient(vlm: FakeVLM, page_png: bytes, mode: str) -> None:
    vlm.mode = mode
    with pytest.raises(ocr.OCRProviderError) as info:
        ocr.extract(page_png, config=_config(vlm, http_timeout_s=0.5))
    assert info.value.code == "ocr_provider_error" and info.value.transient is True


def test_unreachable_provider_is_transient(page_png: bytes) -> None:
    server = FakeVLM()
    url = server.url
    server.server_close()  # nothing listens on that port any more
    config = ocr.EngineConfig(provider="http", http_url=url, http_model="m", http_timeout_s=2)
    with pytest.raises(ocr.OCRProviderError) as info:
        ocr.extract(page_png, config=config)
    assert info.value.transient is True


def test_refused_request_is_not_worth_retrying(vlm: FakeVLM, page_png: bytes) -> None:
    vlm.mode = "401"
    with pytest.raises(ocr.OCRProviderError) as info:
        ocr.extract(page_png, config=_config(vlm))
    assert info.value.code == "ocr_provider_error" and info.value.transient is False


@pytest.mark.parametrize(
    "mode", ["not-json", "no-choices", "bad-bbox", "truncated-json", "content-not-string"]
)
def test_malformed_answer_fails_extraction(vlm: FakeVLM, page_png: bytes, mode: str) -> None:
    vlm.mode = mode
    with pytest.raises(ocr.MalformedOCRResponseError) as info:
        ocr.extract(page_png, config=_config(vlm))
    assert info.value.code == "extraction_failed" and info.value.transient is False
    assert "Traceback" not in info.value.message


def test_http_provider_needs_url_and_model() -> None:
    with pytest.raises(ValueError):
        ocr.EngineConfig(provider="http")
