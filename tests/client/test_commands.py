"""The scripting commands (`submit`, `status`, `wait`, `download`, `cancel`) against the live
stack, through click's runner in this process (the same code the `pagelane` binary runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from pagelane.cli import cli
from tests.client.conftest import Customer, LiveStack
from tests.conftest import CORPUS


def invoke(customer: Customer, *args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=customer.env())


def test_submit_wait_status_download_and_cancel(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("commands")
    good, bad = CORPUS / "digital-crazyones-1p.pdf", CORPUS / "corrupted-not-a-valid-pdf.pdf"

    submitted = invoke(customer, "submit", good, bad, "--wait", "--json", "--ocr", "never")
    assert submitted.exit_code == 2, submitted.output  # one item failed
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "partially_failed" and batch["options"]["ocr"] == "never"
    assert batch["counts"]["succeeded"] == batch["counts"]["failed"] == 1

    status = invoke(customer, "status", batch["id"])
    assert status.exit_code == 0
    assert status.stdout.startswith(f"{batch['id']}  partially_failed  2/2 done")
    assert json.loads(invoke(customer, "status", batch["id"], "--json").stdout)["id"] == batch["id"]

    waited = invoke(customer, "wait", batch["id"], "--json")
    assert waited.exit_code == 2 and json.loads(waited.stdout)["status"] == "partially_failed"

    out = tmp_path / "results"
    downloaded = invoke(customer, "download", batch["id"], "--out", out, "--json")
    assert downloaded.exit_code == 2, downloaded.output
    report = json.loads(downloaded.stdout)
    assert (report["succeeded"], report["downloaded"], report["failed"]) == (1, 1, 1)
    result = json.loads((out / f"{good.name}.json").read_text())
    assert result["object"] == "extraction" and result["file"]["filename"] == good.name
    (error,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert (error["path"], error["code"]) == (bad.name, "extraction_failed")
    again = invoke(customer, "download", batch["id"], "--out", out, "--json")
    assert json.loads(again.stdout)["downloaded"] == 0  # what is there is not fetched again

    cancelled = invoke(customer, "cancel", batch["id"], "--json")
    assert cancelled.exit_code == 0
    assert json.loads(cancelled.stdout)["status"] == "partially_failed"  # terminal: unchanged


def test_submit_prints_only_the_batch_id_and_cancel_stops_the_rest(
    live: LiveStack, tmp_path: Path
) -> None:
    customer = live.customer("commands-cancel", concurrency=1)
    scan = CORPUS / "scan-generated-multipage-3p.pdf"
    copies = []
    for n in range(3):
        copies.append(tmp_path / f"scan-{n}.pdf")
        copies[-1].write_bytes(scan.read_bytes())

    submitted = invoke(customer, "submit", *copies)
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_") and "\n" not in batch_id

    cancelled = invoke(customer, "cancel", batch_id)
    assert cancelled.exit_code == 0
    assert cancelled.stdout.startswith(batch_id)
    waited = invoke(customer, "wait", batch_id, "--poll-interval", "0.2", "--json")
    final = json.loads(waited.stdout)
    assert final["cancel_requested_at"] is not None and final["counts"]["cancelled"] >= 1
    assert waited.exit_code == 2  # not every item succeeded (the batch itself may be "completed")


def test_commands_fail_with_exit_1_on_api_and_usage_errors(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("commands-errors")
    unknown = invoke(customer, "status", "batch_doesnotexist")
    assert unknown.exit_code == 1 and "404 not_found" in unknown.stderr

    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    refused = invoke(customer, "submit", empty)
    assert refused.exit_code == 1 and "empty files cannot be submitted" in refused.output

    missing = invoke(customer, "download", "batch_x")
    assert missing.exit_code == 1 and "Missing option '--out'" in missing.output

    no_key = CliRunner().invoke(
        cli, ["status", "batch_x"], env={"PAGELANE_API_KEY": "", "EXTRACT_API_KEY": ""}
    )
    assert no_key.exit_code == 1 and "no API key" in no_key.stderr
