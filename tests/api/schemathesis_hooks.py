"""What schemathesis cannot read from the document alone, taught to its generators (loaded by
the `st` run in test_schemathesis.py through SCHEMATHESIS_HOOKS). It loosens no check:

- ``Idempotency-Key``: SPEC answers the same key with a different body 422
  ``idempotency_key_mismatch``, which is right, but a generator that reuses a key across
  unrelated examples would call that a valid request rejected. A valid key gets a unique
  suffix (it stays valid: printable ASCII, at most 255); an invalid one is left as it is.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

_VALID_KEY = re.compile(r"[\x20-\x7e]{1,200}")


@schemathesis.hook
def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if headers:
        key = headers.get("Idempotency-Key")
        if isinstance(key, str) and _VALID_KEY.fullmatch(key):
            headers["Idempotency-Key"] = f"{key}-{uuid.uuid4().hex}"
    return headers
