"""The console in a real browser against the real embedded stack: sign in, drop three documents
(one corrupt), watch the batch finish, read the corrupt one's error code, download the zip."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from service.models import Batch
from tests.conftest import CORPUS
from tests.console.conftest import ConsoleStack

DOCUMENTS = [
    "digital-crazyones-1p.pdf",
    "digital-table-nics-background-checks-1p.pdf",
    "corrupted-not-a-valid-pdf.pdf",
]
# Chromium reports CSP violations and failed loads on the console: the page must cause none.
NOISE = ("Failed to load resource",)  # reported again, with its URL, by the response hook


def collect_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return errors


def drop_files(page: Any, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """Dispatch a real drop event whose DataTransfer carries ``files`` (name, bytes, type)."""
    payload = [
        {"name": name, "b64": base64.b64encode(data).decode(), "type": mime}
        for name, data, mime in files
    ]
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const raw = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([raw], f.name, { type: f.type }));
            }
            return dt;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/console")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("body[data-page='batches']")


def batch_count(stack: ConsoleStack, customer_id: str) -> int:
    with stack.ctx.session_factory() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Batch).where(Batch.customer_id == customer_id)
            )
            or 0
        )


def test_drop_watch_and_download(console_stack: ConsoleStack, page: Any, artifacts: Path) -> None:
    customer_id, key = console_stack.customer("console-e2e", quota=500)
    errors = collect_errors(page)
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))

    page.goto(f"{console_stack.url}/console")
    page.wait_for_selector("#api-key")
    page.screenshot(path=str(artifacts / "01-sign-in.png"), full_page=True)

    page.get_by_label("API key").fill(key)
    page.keyboard.press("Enter")  # keyboard works: the form submits on Enter
    page.wait_for_selector("body[data-page='batches']")
    page.wait_for_selector("#quota")
    assert "500" in page.inner_text("#quota")
    page.screenshot(path=str(artifacts / "02-batches-empty.png"), full_page=True)

    page.get_by_role("link", name="New batch").first.click()
    page.wait_for_selector("#dropzone")
    files = [(name, (CORPUS / name).read_bytes(), "application/pdf") for name in DOCUMENTS]
    drop_files(page, "#dropzone", files)
    page.wait_for_function(
        "() => document.querySelector('#upload-progress-label').textContent"
        ".startsWith('3 of 3 files uploaded')"
    )
    submit = page.locator("#submit-batch")
    assert submit.is_enabled()
    assert submit.inner_text() == "Submit batch of 3 files"
    page.screenshot(path=str(artifacts / "03-upload.png"), full_page=True)

    submit.dblclick()  # an impatient double click still makes one batch
    page.wait_for_url(re.compile(r".*#/batches/batch_[A-Za-z0-9_-]+$"))
    batch_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("#batch-summary .badge.partially_failed", timeout=120_000)
    assert batch_count(console_stack, customer_id) == 1

    failed_row = page.locator("#items tr[data-status='failed']")
    assert failed_row.count() == 1
    assert failed_row.locator(".error-code").inner_text() == "extraction_failed"
    assert "corrupted-not-a-valid-pdf.pdf" in failed_row.inner_text()
    assert page.locator("#items tr[data-status='succeeded']").count() == 2
    counts = page.inner_text("#batch-counts")
    assert re.search(r"2\s*succeeded", counts) and re.search(r"1\s*failed", counts), counts
    page.wait_for_function(
        "() => document.querySelector('#batch-progress-label').textContent"
        ".includes('3 of 3 items finished')"
    )
    assert page.get_attribute("#batch-progress", "value") == page.get_attribute(
        "#batch-progress", "max"
    )
    page.evaluate("() => { document.getElementById('status').textContent = ''; }")
    # docs/console-batch.png (the README's picture) is a copy of this one.
    page.screenshot(path=str(artifacts / "04-batch.png"), full_page=True)

    # Filter by status: only the failed item.
    # The table redraws after the change event: wait for it (count() does not wait, and under
    # load it read the three rows still there).
    page.get_by_label("Show items with status").select_option("failed")
    page.wait_for_function("() => document.querySelectorAll('#items tbody tr').length === 1")
    assert page.locator("#items tbody tr[data-status='failed']").count() == 1
    page.get_by_label("Show items with status").select_option("")

    with page.expect_download() as zip_download:
        page.get_by_role("button", name="Download all results (zip)").click()
    archive_path = artifacts / "results.zip"
    zip_download.value.save_as(archive_path)
    with zipfile.ZipFile(archive_path) as archive:
        names = sorted(archive.namelist())
        assert names == [
            "manifest.csv",
            "results/00000-digital-crazyones-1p.json",
            "results/00001-digital-table-nics-background-checks-1p.json",
        ], names
        for name in names[1:]:
            result = json.loads(archive.read(name))
            assert result["object"] == "extraction" and result["page_count"] == 1
            assert result["chunks"]
        manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [row["status"] for row in manifest] == ["succeeded", "succeeded", "failed"]
    assert manifest[2]["error_code"] == "extraction_failed"

    with page.expect_download() as csv_download:
        page.get_by_role("button", name="Errors (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert [(r["filename"], r["error_code"]) for r in rows] == [
        ("corrupted-not-a-valid-pdf.pdf", "extraction_failed")
    ]

    table_item = page.locator("#items tr[data-status='succeeded']").nth(1)
    with page.expect_download() as md_download:
        table_item.get_by_role("button", name=re.compile("as Markdown")).click()
    markdown = Path(md_download.value.path()).read_text()
    assert markdown.startswith("# digital-table-nics-background-checks-1p.pdf")
    assert re.search(r"^\|---\|", markdown, flags=re.M), "a table rendered as a Markdown table"

    with page.expect_download() as json_download:
        table_item.get_by_role("button", name=re.compile("as JSON")).click()
    assert json.loads(Path(json_download.value.path()).read_text())["object"] == "extraction"

    # The list shows the batch, newest first, linking to it.
    page.get_by_role("link", name="Batches").click()
    page.wait_for_selector(f"#batches tr[data-batch-id='{batch_id}']")
    page.screenshot(path=str(artifacts / "05-batches.png"), full_page=True)

    # The key was sent only as a header: never in a URL, never as a cookie.
    assert requests, "the page made requests"
    for request in requests:
        assert key not in request.url, request.url
        assert "cookie" not in {k.lower() for k in request.headers}, request.url
    api_calls = [r for r in requests if "/v1/" in r.url]
    assert api_calls and all(r.headers.get("x-api-key") == key for r in api_calls)
    assert page.context.cookies() == []
    assert page.evaluate("() => sessionStorage.getItem('pagelane.apiKey')") == key
    assert page.evaluate("() => localStorage.length") == 0
    assert [e for e in errors if not any(n in e for n in NOISE)] == [], errors


def test_another_customer_sees_nothing(
    console_stack: ConsoleStack, page: Any, artifacts: Path
) -> None:
    """Bob's console shows none of Alice's batches, and her batch page is a 404 for him."""
    _, alice_key = console_stack.customer("alice")
    _, bob_key = console_stack.customer("bob")
    import httpx

    base = console_stack.url
    alice = httpx.Client(base_url=base, headers={"X-API-KEY": alice_key}, timeout=30)
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    created = alice.post("/v1/files/bulk", json={"files": [{"size_bytes": len(data)}]}).json()
    upload = created["data"][0]["upload"]
    assert httpx.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    batch = alice.post("/v1/batches", json={"file_ids": [created["data"][0]["id"]]}).json()

    sign_in(page, base, bob_key)
    page.wait_for_selector("#batches-info")
    assert batch["id"] not in page.inner_text("#batches")
    page.goto(f"{base}/console#/batches/{batch['id']}")
    page.wait_for_function(
        "() => document.querySelector('#batch-error').textContent === 'No such batch.'"
    )
    page.screenshot(path=str(artifacts / "06-other-customer.png"), full_page=True)

    bob = httpx.Client(base_url=base, headers={"X-API-KEY": bob_key}, timeout=30)
    for path in (
        f"/v1/batches/{batch['id']}",
        f"/v1/batches/{batch['id']}/results.zip",
        f"/v1/batches/{batch['id']}/errors.csv",
        f"/v1/batches/{batch['id']}/items/item_x/result.md",
    ):
        response = bob.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json()["error"] == "not_found"


def test_console_headers(console_stack: ConsoleStack) -> None:
    import httpx

    for path in ("/console", "/console/assets/app.js", "/console/assets/style.css"):
        response = httpx.get(console_stack.url + path)
        assert response.status_code == 200, path
        csp = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["img-src"] == "'self' data: blob:"
        # The browser PUTs uploads to the blob store's origin, and only there besides 'self'.
        assert directives["connect-src"].split() == [
            "'self'",
            console_stack.settings.public_url,
        ]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "set-cookie" not in response.headers
    page = httpx.get(console_stack.url + "/console").text
    # No inline script or style anywhere: the CSP would block them.
    assert "<script>" not in page and "style=" not in page
    assert re.findall(r"<script[^>]*>", page) == [
        '<script type="module" src="/console/assets/app.js">'
    ]
