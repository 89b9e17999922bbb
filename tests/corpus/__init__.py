"""The documents the suite and the benchmarks read, inside the repository (see README.md here).

``CORPUS`` is the one place tests/ and bench/ take their documents from; ``MANIFEST.json`` next
to them lists each with its source, licence and sha256 (tests/corpus/test_copies.py checks it).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent
OFFICE = CORPUS / "office"
