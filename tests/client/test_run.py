"""`pagelane run` end to end: a real CLI process against the live stack and a real worker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import CliProcess, Fault, LiveStack, copy_corpus, run_cli
from tests.conftest import CORPUS

MANIFEST = {f["name"]: f for f in json.loads((CORPUS / "MANIFEST.json").read_text())["files"]}
# SPEC's item error code for each failing outcome the manifest names.
EXPECTED_CODE = {
    "error:corrupt": "extraction_failed",
    "error:encrypted": "extraction_failed",
    "error:unsupported": "unsupported_input",
    "error:empty": "unsupported_input",
}
# A slice of the corpus that extracts in a few seconds, laid out in folders.
SLICE = {
    "digital-crazyones-1p.pdf": "digital-crazyones-1p.pdf",
    "reports/digital-french-minutes-2p.pdf": "digital-french-minutes-2p.pdf",
    "reports/2015/digital-lorem-pdflatex-4p.pdf": "digital-lorem-pdflatex-4p.pdf",
    "reports/digital-multilang-hello-world-1p.pdf": "digital-multilang-hello-world-1p.pdf",
    "scans/image-simple-text.jpg": "image-generated-simple-text.jpg",
    "broken/corrupted-not-a-valid-pdf.pdf": "corrupted-not-a-valid-pdf.pdf",
    "broken/truncated-scotus-transcript-half.pdf": "truncated-scotus-transcript-half.pdf",
    "broken/encrypted-password-test-4p.pdf": "encrypted-password-test-4p.pdf",
    "broken/unsupported-zip-archive.zip": "unsupported-zip-archive.zip",
    "broken/unsupported-plaintext-named-as.pdf": "unsupported-plaintext-named-as.pdf",
    "broken/empty-zero-byte.pdf": "empty-zero-byte.pdf",
    # Hidden files and folders are not inputs.
    ".DS_Store": "unsupported-zip-archive.zip",
    ".cache/digital-crazyones-1p.pdf": "digital-crazyones-1p.pdf",
}
VISIBLE = {
    rel: name
    for rel, name in SLICE.items()
    if not any(part.startswith(".") for part in rel.split("/"))
}
SUCCEEDING = {
    rel: n for rel, n in VISIBLE.items() if "error" not in MANIFEST[n]["expected_outcome"]
}
FAILING = {rel: n for rel, n in VISIBLE.items() if rel not in SUCCEEDING}
UPLOADABLE = {rel for rel, name in VISIBLE.items() if MANIFEST[name]["size_bytes"] > 0}


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def assert_results_match_the_manifest(out: Path) -> None:
    for relative, name in SUCCEEDING.items():
        result = json.loads((out / f"{relative}.json").read_text())
        assert result["object"] == "extraction"
        assert result["page_count"] == MANIFEST[name]["page_count"], relative
        text = collapse(" ".join(chunk["page_content"] for chunk in result["chunks"]))
        for snippet in MANIFEST[name]["expected_snippets"]:
            assert collapse(snippet) in text, (relative, snippet)
    errors = read_errors(out)
    assert set(errors) == set(FAILING)
    for relative, name in FAILING.items():
        assert errors[relative]["code"] == EXPECTED_CODE[MANIFEST[name]["expected_outcome"]]
        assert errors[relative]["message"]
        if MANIFEST[name]["size_bytes"] > 0:
            assert errors[relative]["item_id"].startswith("item_")
        else:  # refused by the client: zero bytes cannot be registered
            assert errors[relative]["item_id"] is None
    assert not (out / ".DS_Store.json").exists() and not (out / ".cache").exists()
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []


def read_errors(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "errors.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len({r["path"] for r in records}), "a failure is listed twice"
    return {r["path"]: r for r in records}


def test_run_turns_a_folder_into_results_and_an_error_list(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("run")
    source = copy_corpus(tmp_path / "in", SLICE)
    out = tmp_path / "out"
    code, output = run_cli(
        ["run", str(source), "--out", str(out), "--poll-interval", "0.2"], customer.env()
    )

    assert code == 2, output  # some items failed
    assert_results_match_the_manifest(out)
    assert customer.batch_count() == 1
    assert customer.s3_requests("PUT", "inputs") == len(UPLOADABLE)
    # Not a terminal: plain lines, no escape codes; the summary counts by code.
    assert "\x1b[" not in output
    assert "upload: 10/10 files" in output
    assert f"{len(VISIBLE)} files," in output
    assert f"succeeded  {len(SUCCEEDING)}" in output
    assert "extraction_failed 3" in output and "unsupported_input 3" in output
    assert f"failures in {out.resolve()}/errors.jsonl" in output


def test_run_resumes_after_interrupts_without_repeating_work(
    live: LiveStack, tmp_path: Path
) -> None:
    """Ctrl-C once after the uploads and once while polling; the reruns upload nothing again,
    submit no second batch, download only missing results, and end where one run would."""
    # One item at a time, the slow scan last: results arrive one by one while polling.
    customer = live.customer("resume", concurrency=1)
    layout = {
        "a/digital-crazyones-1p.pdf": "digital-crazyones-1p.pdf",
        "a/digital-french-minutes-2p.pdf": "digital-french-minutes-2p.pdf",
        "b/corrupted-not-a-valid-pdf.pdf": "corrupted-not-a-valid-pdf.pdf",
        "b/digital-lorem-pdflatex-4p.pdf": "digital-lorem-pdflatex-4p.pdf",
        "c/image-simple-text.jpg": "image-generated-simple-text.jpg",
        "z/scan-multipage-3p.pdf": "scan-generated-multipage-3p.pdf",
    }
    source = copy_corpus(tmp_path / "in", layout)
    out = tmp_path / "out"
    args = ["run", str(source), "--out", str(out), "--poll-interval", "0.2"]
    state_file = out / ".pagelane-run.json"

    def state() -> dict[str, Any]:
        try:
            return json.loads(state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    # 1. The API turns submissions away for now (503, come back in 30 s): Ctrl-C during the wait.
    closed = live.faults.add(Fault("POST", "/v1/batches", 503, headers={"Retry-After": "30"}))
    first = CliProcess(args, customer.env())
    try:
        first.wait_for(
            lambda: closed.hits >= 1 and "retrying in 30.0 s" in first.output, 60, "the 503"
        )
    finally:
        live.faults.remove(closed)
    first.interrupt()
    assert first.finish() == 130, first.output
    assert "resume with:  pagelane run" in first.output
    saved = state()
    assert all(entry["uploaded"] for entry in saved["files"].values())
    assert [b["id"] for b in saved["batches"]] == [None]  # formed, key saved, not created
    uploads, registrations = customer.s3_requests("PUT", "inputs"), customer.file_count()
    assert uploads == registrations == len(layout) and customer.batch_count() == 0

    # 2. Rerun: it submits and polls; Ctrl-C once some results are in but not all.
    def some_results() -> bool:
        batches = state().get("batches") or [{}]
        done = list(out.rglob("*.pdf.json")) + list(out.rglob("*.jpg.json"))
        return batches[0].get("id") is not None and len(done) >= 2

    second = CliProcess(args, customer.env())
    second.wait_for(some_results, 90, "the first results")
    second.interrupt()
    assert second.finish() == 130, second.output
    saved = state()
    assert saved["batches"][0]["id"] and not saved["batches"][0]["drained"]
    assert customer.batch_count() == 1
    assert customer.s3_requests("PUT", "inputs") == uploads
    assert customer.file_count() == registrations
    # A download in flight at Ctrl-C may have reached S3 without its file being renamed into
    # place; what counts is that the rerun fetches exactly the results that are missing.
    fetched_before = customer.s3_requests("GET", "results")
    present = {
        p.relative_to(out).as_posix()[: -len(".json")]
        for p in out.rglob("*.json")
        if not p.name.startswith(".")
    }

    # 3. Rerun to the end.
    code, output = run_cli(args, customer.env())
    assert code == 2, output
    assert customer.batch_count() == 1
    assert customer.s3_requests("PUT", "inputs") == uploads
    assert customer.file_count() == registrations
    succeeded = [rel for rel, name in layout.items() if "corrupted" not in name]
    for relative in succeeded:
        assert (out / f"{relative}.json").exists(), relative
    assert set(read_errors(out)) == {"b/corrupted-not-a-valid-pdf.pdf"}
    assert present and present < set(succeeded)
    fetched = customer.s3_requests("GET", "results") - fetched_before
    assert fetched == len(set(succeeded) - present)  # only the missing ones
    assert f"{len(layout)} files" in output

    # 4. A result deleted by hand is the only thing a further rerun fetches.
    (out / "a/digital-crazyones-1p.pdf.json").unlink()
    fetched_before = customer.s3_requests("GET", "results")
    code, output = run_cli(args, customer.env())
    assert code == 2, output
    assert (out / "a/digital-crazyones-1p.pdf.json").exists()
    assert customer.s3_requests("GET", "results") == fetched_before + 1
    assert customer.s3_requests("PUT", "inputs") == uploads and customer.batch_count() == 1
    assert set(read_errors(out)) == {"b/corrupted-not-a-valid-pdf.pdf"}


def test_cancel_on_interrupt_cancels_the_batch(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("cancel", concurrency=1)
    layout = {f"{n}/scan-multipage-3p.pdf": "scan-generated-multipage-3p.pdf" for n in range(4)}
    source = copy_corpus(tmp_path / "in", layout)
    out = tmp_path / "out"
    process = CliProcess(
        ["run", str(source), "--out", str(out), "--cancel-on-interrupt"], customer.env()
    )
    process.wait_for(lambda: "submitted batch" in process.output, 60, "the submission")
    process.interrupt()
    assert process.finish() == 130, process.output
    assert "interrupted: cancelled batch_" in process.output
    state = json.loads((out / ".pagelane-run.json").read_text())
    batch_id = state["batches"][0]["id"]
    code, output = run_cli(["status", batch_id, "--json"], customer.env())
    assert code == 0, output
    batch = json.loads(output)
    assert batch["cancel_requested_at"] is not None
    assert batch["counts"]["cancelled"] >= 2  # one may have been running; the rest were pending


def test_run_refuses_bad_usage_and_bad_keys_with_exit_1(live: LiveStack, tmp_path: Path) -> None:
    customer = live.customer("usage")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.pdf").write_bytes((CORPUS / "digital-crazyones-1p.pdf").read_bytes())

    code, output = run_cli(
        ["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], customer.env()
    )
    assert code == 1 and "does not exist" in output

    code, output = run_cli(["run", str(tmp_path / "in")], customer.env())
    assert code == 1 and "Missing option '--out'" in output

    env = {**customer.env(), "PAGELANE_API_KEY": "pl_wrong"}
    code, output = run_cli(["run", str(tmp_path / "in"), "--out", str(tmp_path / "o")], env)
    assert code == 1 and "401 unauthorized" in output

    # The same OUT with other options belongs to another run.
    code, output = run_cli(
        ["run", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--ocr", "force"],
        customer.env(),
    )
    assert code == 1 and "holds another run" in output, output


@pytest.mark.parametrize("pattern", ["*.pdf"])
def test_include_globs_select_files(live: LiveStack, tmp_path: Path, pattern: str) -> None:
    customer = live.customer("include")
    source = copy_corpus(
        tmp_path / "in",
        {
            "x/digital-crazyones-1p.pdf": "digital-crazyones-1p.pdf",
            "x/image-simple-text.jpg": "image-generated-simple-text.jpg",
        },
    )
    out = tmp_path / "in" / "results"  # inside the input: never walked into
    code, output = run_cli(
        ["run", str(source), "--out", str(out), "--include", pattern, "--json"], customer.env()
    )
    assert code == 0, output
    summary = json.loads(output[output.index("{\n") :])
    assert summary["files"] == 1 and summary["succeeded"] == 1 and summary["pages"] == 1
    assert (out / "x/digital-crazyones-1p.pdf.json").exists()
    assert not (out / "x/image-simple-text.jpg.json").exists()
    assert (out / "errors.jsonl").read_text() == ""


def test_batches_of_batch_size_and_a_changed_file_goes_in_a_new_batch(
    live: LiveStack, tmp_path: Path
) -> None:
    customer = live.customer("batches")
    source = copy_corpus(
        tmp_path / "in",
        {
            "a.pdf": "digital-crazyones-1p.pdf",
            "b.pdf": "digital-french-minutes-2p.pdf",
            "c.pdf": "digital-multilang-hello-world-1p.pdf",
        },
    )
    out = tmp_path / "out"
    args = ["run", str(source), "--out", str(out), "--batch-size", "2", "--poll-interval", "0.2"]
    code, output = run_cli(args, customer.env())
    assert code == 0, output
    assert customer.batch_count() == 2 and output.count("submitted batch") == 2
    assert all((out / f"{name}.json").exists() for name in ("a.pdf", "b.pdf", "c.pdf"))

    # New content under an old name: only it is uploaded and submitted again (its batch's
    # Idempotency-Key comes from the content hashes), and its result is replaced.
    (source / "b.pdf").write_bytes((CORPUS / "digital-lorem-pdflatex-4p.pdf").read_bytes())
    code, output = run_cli(args, customer.env())
    assert code == 0, output
    assert customer.batch_count() == 3 and customer.s3_requests("PUT", "inputs") == 4
    result = json.loads((out / "b.pdf.json").read_text())
    assert "Huardest gefburn" in collapse(" ".join(c["page_content"] for c in result["chunks"]))
    assert json.loads((out / "a.pdf.json").read_text())["page_count"] == 1


def test_uploads_missing_from_the_state_are_checked_before_being_sent_again(
    live: LiveStack, tmp_path: Path
) -> None:
    """A hard kill can lose the record of finished uploads (saves are throttled): the rerun
    asks the server about each such file and uploads only what it does not have."""
    customer = live.customer("lost-uploads")
    layout = {
        "a.pdf": "digital-crazyones-1p.pdf",
        "b.pdf": "digital-french-minutes-2p.pdf",
        "c.pdf": "digital-multilang-hello-world-1p.pdf",
    }
    source = copy_corpus(tmp_path / "in", layout)
    out = tmp_path / "out"
    args = ["run", str(source), "--out", str(out), "--poll-interval", "0.2"]
    closed = live.faults.add(Fault("POST", "/v1/batches", 503, headers={"Retry-After": "30"}))
    first = CliProcess(args, customer.env())
    try:
        first.wait_for(lambda: closed.hits >= 1, 60, "the submission")
    finally:
        live.faults.remove(closed)
    first.interrupt()
    assert first.finish() == 130, first.output
    assert customer.s3_requests("PUT", "inputs") == 3

    state_file = out / ".pagelane-run.json"
    state = json.loads(state_file.read_text())
    state["files"]["a.pdf"]["uploaded"] = False  # uploaded, but the record was lost
    state["files"]["b.pdf"]["uploaded"] = False  # and this one's registration is unknown
    state["files"]["b.pdf"]["file_id"] = "file_unknowntotheserver000000"
    state["batches"] = []
    state_file.write_text(json.dumps(state))

    code, output = run_cli(args, customer.env())
    assert code == 0, output
    assert customer.s3_requests("PUT", "inputs") == 4  # b.pdf again, a.pdf not
    assert customer.file_count() == 4 and customer.batch_count() == 1
    assert all((out / f"{name}.json").exists() for name in layout)
