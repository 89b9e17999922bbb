"""Production always isolates: `pagelane worker` extracts every item in a sandbox child of its
pool child (ocr/sandbox.py). The one worker that does not, bench/inprocess.py's (the baseline
of the isolation's cost in bench/throughput.py), is run beside it: it proves the check can tell
the two apart, and that the benchmark's baseline really is unisolated."""

from __future__ import annotations

import pytest

from tests.support.live import Stack, corpus_bytes


@pytest.mark.parametrize(
    ("module", "isolated"), [("service.cli", True), ("bench.inprocess", False)]
)
def test_pagelane_worker_extracts_in_a_sandbox_child_and_the_benchmark_baseline_not(
    stack: Stack, module: str, isolated: bool
) -> None:
    worker = stack.worker(concurrency=1, module=module)
    tenant = stack.tenant("isolation")
    file_id = tenant.upload(corpus_bytes("digital-crazyones-1p.pdf"), "one-page.pdf")
    batch = tenant.submit([file_id]).get_json()
    final = stack.wait_terminal(tenant, batch["id"], timeout=60)
    assert final["status"] == "completed", final
    # The sandbox starts with the first extraction and stays warm: after an item, an isolating
    # pool child has exactly one, which is where that item was extracted.
    (sandboxes,) = worker.sandbox_children().values()
    assert sandboxes == (1 if isolated else 0)
