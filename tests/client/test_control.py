"""Batch control from the SDK and the CLI (retry, quotes, delete), and `pagelane run`
following the event stream (and falling back to polling), against the live stack."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import update

from pagelane import ApiError, Client, FileSpec
from service.models import Customer as CustomerRow
from tests.client.conftest import Fault, LiveStack, copy_corpus, run_cli
from tests.conftest import CORPUS

GOOD = {
    "a/digital-crazyones-1p.pdf": "digital-crazyones-1p.pdf",
    "b/digital-lorem-pdflatex-4p.pdf": "digital-lorem-pdflatex-4p.pdf",
    "digital-french-minutes-2p.pdf": "digital-french-minutes-2p.pdf",
}
BROKEN = {
    "broken/encrypted-password-test-4p.pdf": "encrypted-password-test-4p.pdf",
    "broken/corrupted-not-a-valid-pdf.pdf": "corrupted-not-a-valid-pdf.pdf",
}


def upload_all(client: Client, names: list[str]) -> list[str]:
    paths = [CORPUS / n for n in names]
    files = client.files.create_many([FileSpec.from_path(p) for p in paths])
    for file, path in zip(files, paths, strict=True):
        client.files.upload(file, path)
    return [f.id for f in files]


def cancelled_batch(client: Client) -> tuple[str, list[str]]:
    """A terminal batch with cancelled items: eight files, cancelled right after submit."""
    names = ["digital-lorem-pdflatex-4p.pdf", "digital-two-column-latex-3p.pdf"] * 4
    ids = upload_all(client, names)
    batch = client.batches.create(ids, options={"ocr": "never"})
    client.batches.cancel(batch.id)
    final = client.batches.wait(batch.id, poll_interval=0.2, timeout=120)
    assert final.counts.cancelled > 0
    return batch.id, ids


def test_sdk_retry_quote_and_delete(live: LiveStack) -> None:
    customer = live.customer("control-sdk")
    with Client(customer.key, live.url) as client:
        parent_id, file_ids = cancelled_batch(client)
        with pytest.raises(ApiError) as nothing:
            client.batches.retry(parent_id)  # cancelled items are only taken when asked
        assert nothing.value.status == 409 and nothing.value.code == "nothing_to_retry"
        child = client.batches.retry(parent_id, include_cancelled=True, idempotency_key="r-1")
        assert child.parent_batch_id == parent_id
        again = client.batches.retry(parent_id, include_cancelled=True, idempotency_key="r-1")
        assert again.id == child.id
        done = client.batches.wait(child.id, poll_interval=0.2, timeout=120)
        parent = client.batches.get(parent_id)
        assert done.total_items == parent.counts.cancelled + parent.counts.failed
        assert done.status == "completed"

        quote = client.quotes.create(file_ids[:2], options={"ocr": "never"})
        assert quote.id.startswith("quote_")
        quote = client.quotes.wait(quote.id, timeout=120)
        assert [(i.page_count, i.predicted_error) for i in quote.items] == [(4, None), (3, None)]
        assert quote.totals is not None and quote.totals.pages == 7
        assert client.quotes.get(quote.id).status == "completed"

        client.batches.delete(child.id)
        with pytest.raises(ApiError) as gone:
            client.batches.get(child.id)
        assert gone.value.status == 404
        client.files.delete(file_ids[0])
        with pytest.raises(ApiError) as gone:
            client.files.get(file_ids[0])
        assert gone.value.status == 404


def test_cli_retry_prints_the_new_batch(live: LiveStack) -> None:
    customer = live.customer("control-cli")
    with Client(customer.key, live.url) as client:
        parent_id, _ = cancelled_batch(client)
        code, output = run_cli(["retry", parent_id], customer.env())
        assert code == 1 and "nothing_to_retry" in output
        code, output = run_cli(["retry", parent_id, "--include-cancelled"], customer.env())
        assert code == 0, output
        child_id = output.strip().splitlines()[-1]
        assert client.batches.get(child_id).parent_batch_id == parent_id


def test_run_quote_prints_a_table_and_submits_nothing(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("control-quote")
    source = copy_corpus(tmp_path / "in", {**GOOD, **BROKEN})
    code, output = run_cli(["run", str(source), "--quote", "--ocr", "never"], customer.env())
    assert code == 0, output
    assert customer.batch_count() == 0
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in output.splitlines()
        if line.count("│") >= 5
    }
    assert rows["a/digital-crazyones-1p.pdf"] == ["1", "0", ""]
    assert rows["b/digital-lorem-pdflatex-4p.pdf"] == ["4", "0", ""]
    assert rows["digital-french-minutes-2p.pdf"] == ["2", "0", ""]
    assert rows["broken/encrypted-password-test-4p.pdf"][2] == "extraction_failed"
    assert rows["broken/corrupted-not-a-valid-pdf.pdf"][2] == "extraction_failed"
    total = next(v for k, v in rows.items() if k.startswith("total"))
    assert total[0] == "7" and total[2] == "2 predicted to fail"
    assert re.search(r"billable pages: 7 \(quota remaining: unlimited, fits\)", output)
    assert "nothing was submitted" in output
    # --json carries the same, with the paths.
    code, output = run_cli(
        ["run", str(source), "--quote", "--ocr", "never", "--json"], customer.env()
    )
    assert code == 0, output
    body = json.loads(output[output.index("{") :])
    assert {i["path"]: i["page_count"] for i in body["items"]}[
        "b/digital-lorem-pdflatex-4p.pdf"
    ] == 4


def event_requests(live: LiveStack, batch_id: str) -> tuple[int, int]:
    """(GETs of the batch's event stream, GETs of the batch itself) the API received."""
    requests = list(live.faults.requests)
    streams = sum(1 for m, p in requests if m == "GET" and p == f"/v1/batches/{batch_id}/events")
    polls = sum(1 for m, p in requests if m == "GET" and p == f"/v1/batches/{batch_id}")
    return streams, polls


def test_run_follows_the_event_stream(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("control-run-events")
    source = copy_corpus(tmp_path / "in", GOOD)
    out = tmp_path / "out"
    code, output = run_cli(["run", str(source), "--out", str(out), "--json"], customer.env())
    assert code == 0, output
    summary = json.loads(output[output.index("{\n") :])
    assert summary["succeeded"] == 3 and summary["pages"] == 7
    for relative in GOOD:
        assert json.loads((out / f"{relative}.json").read_text())["object"] == "extraction"
    (batch_id,) = summary["batch_ids"]
    streams, polls = event_requests(live, batch_id)
    assert streams >= 1
    assert polls <= 2  # the final settling poll only (no cursor polling while it runs)


def test_run_falls_back_to_polling_without_an_event_stream(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("control-run-poll")
    source = copy_corpus(tmp_path / "in", GOOD)
    out = tmp_path / "out"
    fault = live.faults.add(
        Fault("GET", r"/v1/batches/[^/]+/events", 404, body=b'{"error": "not_found"}')
    )
    try:
        code, output = run_cli(["run", str(source), "--out", str(out), "--json"], customer.env())
    finally:
        live.faults.remove(fault)
    assert code == 0, output
    summary = json.loads(output[output.index("{\n") :])
    assert summary["succeeded"] == 3
    assert event_requests(live, summary["batch_ids"][0])[0] >= 1


def test_run_retry_failed_retries_the_previous_runs_failures(
    live: LiveStack, tmp_path: Path
) -> None:
    customer = live.customer("control-run-retry", quota=1)
    source = copy_corpus(tmp_path / "in", GOOD)
    out = tmp_path / "out"
    code, output = run_cli(["run", str(source), "--out", str(out), "--json"], customer.env())
    assert code == 2, output
    first = json.loads(output[output.index("{\n") :])
    assert first["failed_by_code"].get("payment_required", 0) >= 2
    with live.ctx.session_factory() as session, session.begin():
        session.execute(
            update(CustomerRow).where(CustomerRow.id == customer.id).values(page_quota=None)
        )
    code, output = run_cli(
        ["run", str(source), "--out", str(out), "--retry-failed", "--json"], customer.env()
    )
    assert code == 0, output
    second = json.loads(output[output.index("{\n") :])
    assert second["succeeded"] == 3 and second["failed"] == 0
    assert len(second["batch_ids"]) == 2
    parent, child = second["batch_ids"]
    with Client(customer.key, live.url) as client:
        assert client.batches.get(child).parent_batch_id == parent
    for relative in GOOD:
        assert (out / f"{relative}.json").exists()
    assert (out / "errors.jsonl").read_text() == ""
