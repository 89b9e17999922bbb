"""Fixtures for the engine tests: the corpus, the hostile-file generator, and a per-session cache
of corpus extractions (each corpus document is extracted once). Helpers: ocr_testkit.py."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from ocr_testkit import CORPUS, CorpusCache, load_hostile


@pytest.fixture(scope="session")
def hostile() -> ModuleType:
    """tests/fixtures/hostile/make_hostile.py as a module (PDF builders and the hostile cases)."""
    return load_hostile()


@pytest.fixture(scope="session")
def hostile_files(tmp_path_factory: pytest.TempPathFactory, hostile: ModuleType) -> dict[str, Path]:
    paths: dict[str, Path] = hostile.write_all(tmp_path_factory.mktemp("hostile"))
    return paths


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS / "MANIFEST.json").is_file():
        pytest.fail(f"the test corpus is missing: expected it at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def corpus_cache(corpus_dir: Path) -> CorpusCache:
    return CorpusCache(corpus_dir)
