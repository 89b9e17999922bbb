"""The in-repository corpus is what its manifests say: every file there with its recorded sha256
and size, nothing unlisted beside them, and a source and a licence we may redistribute for each."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import CORPUS, OFFICE

# What lives in tests/corpus besides the documents.
NOT_DOCUMENTS = {
    "__init__.py",
    "generate.py",
    "test_copies.py",
    "README.md",
    "LICENSES.md",
    "MANIFEST.json",
    "office",
    "__pycache__",
}
# GPL, LGPL, AGPL: kept out of the repository (README.md says why); CC-BY-SA files may stay.
COPYLEFT_CODE = "GPL"


def _manifest(folder: Path) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = json.loads((folder / "MANIFEST.json").read_text("utf-8"))["files"]
    return files


ENTRIES = [(CORPUS, e) for e in _manifest(CORPUS)] + [(OFFICE, e) for e in _manifest(OFFICE)]


@pytest.mark.parametrize(("folder", "entry"), ENTRIES, ids=[e["name"] for _, e in ENTRIES])
def test_copy_matches_its_recorded_sha256(folder: Path, entry: dict[str, Any]) -> None:
    data = (folder / entry["name"]).read_bytes()
    assert len(data) == entry["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], (
        f"{entry['name']} differs from the copy the manifest records"
    )


@pytest.mark.parametrize("folder", [CORPUS, OFFICE], ids=["corpus", "office"])
def test_every_file_is_in_the_manifest(folder: Path) -> None:
    listed = {e["name"] for e in _manifest(folder)}
    present = {p.name for p in folder.iterdir()} - NOT_DOCUMENTS
    assert present == listed


@pytest.mark.parametrize(("folder", "entry"), ENTRIES, ids=[e["name"] for _, e in ENTRIES])
def test_every_file_has_a_source_and_a_redistributable_licence(
    folder: Path, entry: dict[str, Any]
) -> None:
    licence = entry["license_spdx"]
    assert licence and COPYLEFT_CODE not in licence, licence
    if entry.get("source_repo"):
        assert entry["source_path"] and len(entry["source_commit"]) == 40
    else:
        assert entry["generated_by"] == "tests/corpus/generate.py"


def test_generated_documents_are_the_generators() -> None:
    spec = importlib.util.spec_from_file_location("corpus_generate", CORPUS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = {e["name"] for e in _manifest(CORPUS) if e.get("generated_by")}
    assert generated == set(module.GENERATED)
