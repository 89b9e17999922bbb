"""A real `pagelane worker` whose engine can be told to misbehave (fault tests only).

Production code has no test hooks; instead this entry point wraps the worker's way into the
engine (``Sandbox.extract``: every extraction goes to the pool child's capped sandbox
process, given the path of the input the task streamed to disk) the way OCRmyPDF's tests
inject crashing engines, then runs the unmodified worker:

* ``PAGELANE_FAULT_POISON=<hex>``: a document containing these bytes kills its worker process
  (``os._exit``, as the OOM killer would) every time it is extracted. A crash inside the
  sandbox child only fails the item (tests/faults/test_item_work.py); this is the worker
  itself dying, which only the attempt cap stops.
* ``PAGELANE_FAULT_PROVIDER_FAILURES=1``: a document containing ``FAILn`` (n a digit) fails the
  first n extraction calls with the engine's transient OCR provider error. Calls are counted in
  Redis per document, so the count survives retries on other worker processes.
* ``PAGELANE_FAULT_SLEEP=<seconds>``: every extraction sleeps first, so a test can hit items
  mid-flight.

Run: ``python -m tests.support.fault_worker worker -c 2 ...`` (the same arguments as pagelane).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import redis

import ocr
from ocr.sandbox import Sandbox
from service.cli import main


def install_faults() -> None:
    real_extract = Sandbox.extract
    poison = bytes.fromhex(os.environ.get("PAGELANE_FAULT_POISON", ""))
    provider_failures = os.environ.get("PAGELANE_FAULT_PROVIDER_FAILURES") == "1"
    sleep = float(os.environ.get("PAGELANE_FAULT_SLEEP", "0"))
    counter = redis.Redis.from_url(os.environ["PAGELANE_REDIS_URL"]) if provider_failures else None

    def faulty_extract(self: Sandbox, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if sleep:
            time.sleep(sleep)
        data = Path(path).read_bytes() if poison or counter is not None else b""
        if poison and poison in data:
            os._exit(137)
        if counter is not None:
            wanted = re.search(rb"FAIL(\d)", data)
            if wanted:
                key = "fault:calls:" + hashlib.sha256(data).hexdigest()
                if counter.incr(key) <= int(wanted.group(1)):
                    raise ocr.errors.OCRProviderError("injected provider outage")
        return real_extract(self, path, *args, **kwargs)

    Sandbox.extract = faulty_extract  # type: ignore[method-assign]


if __name__ == "__main__":
    install_faults()
    sys.argv[0] = "pagelane"
    main()
