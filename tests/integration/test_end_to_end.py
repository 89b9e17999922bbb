"""The batch lane end to end: upload, submit, real workers extract, poll, fetch results."""

from __future__ import annotations

import hashlib
import re

import httpx

from tests.support.live import Stack, corpus_bytes


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_batch_of_real_documents_reaches_terminal_with_results(stack: Stack) -> None:
    stack.worker(concurrency=2)
    stack.beat()
    alice = stack.tenant("alice")
    documents = {
        "digital-crazyones-1p.pdf": ("succeeded", "The round pegs in the square holes."),
        "image-generated-simple-text.jpg": ("succeeded", None),
        "corrupted-not-a-valid-pdf.pdf": ("failed", "extraction_failed"),
        "unsupported-zip-archive.zip": ("failed", "unsupported_input"),
        "empty-zero-byte.pdf": ("failed", "unsupported_input"),
    }
    file_ids = {}
    for name in documents:
        data = corpus_bytes(name)
        if data:
            file_ids[name] = alice.upload(data, name)
        else:  # S3 cannot sign a zero-length PUT for size_bytes > 0; store an empty object
            created = alice.register(b"x", name)
            assert stack.ctx.blob_store is not None
            stack.ctx.blob_store.put(f"{alice.customer_id}/inputs/{created['id']}", b"")
            file_ids[name] = created["id"]
    batch = alice.submit(list(file_ids.values())).get_json()
    final = stack.wait_terminal(alice, batch["id"])
    assert final["status"] == "partially_failed"
    assert final["counts"]["succeeded"] == 2 and final["counts"]["failed"] == 3

    items = {
        i["file_id"]: i
        for i in alice.get(f"/v1/batches/{batch['id']}?limit=500").get_json()["items"]
    }
    for name, (status, expectation) in documents.items():
        item = items[file_ids[name]]
        assert item["status"] == status, (name, item)
        assert item["attempts"] == 1
        if status == "failed":
            assert item["error"]["code"] == expectation, (name, item["error"])
            continue
        file = alice.get(f"/v1/files/{file_ids[name]}").get_json()
        assert file["sha256"] == hashlib.sha256(corpus_bytes(name)).hexdigest()
        redirect = alice.get(item["result_url"])
        assert redirect.status_code == 302
        result = httpx.get(redirect.headers["Location"], timeout=10).json()
        assert result["object"] == "extraction"
        assert result["page_count"] == item["page_count"] == item["pages_done"]
        text = _collapse(" ".join(c["page_content"] for c in result["chunks"]))
        if expectation:
            assert expectation in text
        else:
            assert any(c["source"] == "ocr" for c in result["chunks"])
    assert final["pages_billed"] == sum(
        i["page_count"] for i in items.values() if i["status"] == "succeeded"
    )
