"""Proof at scale (issue 13): schemathesis, every check enabled, against `/openapi.json` of the
API served over real HTTP on the embedded stack (SQLite, local blobs, Redis): at least 2,000
requests, 0 failures.

It runs the `st` command as a user would, plus tests/api/schemathesis.toml (two status lists,
each explained there) and tests/api/schemathesis_hooks.py (real cursors, unique idempotency
keys). The customer has real data before the run: uploaded files and a batch whose items
succeeded, so the stateful phase follows the document's links to real batches, items and results.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from service.api.app import create_app
from service.db import make_engine
from service.migrate import upgrade
from tasks.items import Outcome, process_item
from tests.conftest import CORPUS, build_context, new_customer_key, put_upload

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MIN_REQUESTS = 2000


def _seed(client: Any, key: str, ctx: Any, public_url: str) -> None:
    """Two uploaded files and a batch of them, run to success by the task code itself."""
    headers = {"X-API-KEY": key}
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    file_ids = []
    for _ in range(2):
        created = client.post("/v1/files", json={"size_bytes": len(data)}, headers=headers)
        assert created.status_code == 200
        assert put_upload(created.get_json()["upload"], data, client, public_url) == 200
        file_ids.append(created.get_json()["id"])
    batch = client.post("/v1/batches", json={"file_ids": file_ids}, headers=headers).get_json()
    for item in batch["items"]:
        assert process_item(ctx, item["id"]) == Outcome.SUCCEEDED


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_all_checks(
    make_settings: Any, redis_url: str, report: Any, tmp_path: Path
) -> None:
    from tests.client.conftest import FaultInjector, ServedApp, _QuietHandler

    redis.Redis.from_url(redis_url).flushdb()
    with socket.socket() as probe:  # a free port, so that upload URLs can name it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        blob_store="local",
        public_url=url,
        # The budgets are SPEC's business and tested in test_requests.py; here they would
        # only turn most of the run into 429s.
        submit_rate_limit="1000000/minute",
        sync_rate_limit="1000000/minute",
        sync_concurrency=64,
        # OCR of generated images is tesseract's time, not the API's behaviour.
        ocr_provider="null",
        # The document states it as maxItems; at 10,000 the boundary cases of the coverage
        # phase (10,000 generated ids, validated both ways) took most of the run.
        max_files_per_batch=100,
    )
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    ctx = build_context(settings)
    app = create_app(settings, context=ctx, dispatcher=ctx.dispatcher)
    counted = FaultInjector(app)  # no faults: it records every request
    server = make_server("127.0.0.1", port, counted, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    served = ServedApp(url, counted, server, thread)
    try:
        _, key = new_customer_key(ctx, "schemathesis")
        _seed(app.test_client(), key, ctx, served.url)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        }
        started = time.monotonic()
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "--no-color",
                "run",
                f"{served.url}/openapi.json",
                "--checks",
                "all",
                "-H",
                f"X-API-KEY: {key}",
                "--max-examples",
                "100",
                "--seed",
                "13",
                # The sync endpoint may take up to its time limit (PAGELANE_SYNC_TIMEOUT_SECONDS,
                # 120 s: then 504); its first Office document in a process starts LibreOffice.
                "--request-timeout",
                "125",
                "--max-response-time",
                "125",
            ],
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the repository
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        seconds = time.monotonic() - started
        requests = len(served.faults.requests)
    finally:
        served.stop()
        ctx.close()
    output = run.stdout + run.stderr
    cases = re.search(r"(\d+) generated", output)
    report(
        schemathesis_requests=requests,
        schemathesis_cases=int(cases.group(1)) if cases else None,
        schemathesis_seconds=round(seconds, 1),
    )
    assert run.returncode == 0, output[-20000:]
    assert requests >= MIN_REQUESTS, (requests, output[-3000:])
