""".ci/check_self_contained.py: passes on this repository, fails on each way out of it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "check_self_contained.py"


# Data that names where it came from is not a read outside the repository.
MANIFEST_NAMING_ITS_SOURCE = '{"reference": "../shared/corpus"}\n'  # self-contained: ok


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_self_contained", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_this_repository_is_self_contained() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


ESCAPES = {
    "tests/conftest.py": (
        "from pathlib import Path\n"
        "REPO = Path(__file__).resolve().parents[1]\n"
        'CORPUS = REPO.parent / "documents"\n'
    ),
    "tests/ocr/kit.py": 'from pathlib import Path\nDATA = Path(__file__).parents[3] / "x"\n',
    "tests/a/b.py": ('import os\nUP = os.path.join(os.path.dirname(__file__), "..", "..", "..")\n'),
    "bench/run.py": 'from pathlib import Path\nDOC = Path("../documents/a.pdf")\n',
    "bench/abs.py": 'DOC = "/work/shared/a.pdf"\n',  # self-contained: ok (example input)
    "tests/ocr/test_x.py": '"""Reads ../shared/corpus."""\n',  # self-contained: ok (example)
    "Makefile": "bench:\n\tpython bench/x.py --corpus ../documents\n",
    ".ci/run": '#!/usr/bin/env bash\ncd "$(dirname "$0")/../.."\n',
}


@pytest.mark.parametrize("rel", sorted(ESCAPES))
def test_each_escape_is_found(checker: ModuleType, tmp_path: Path, rel: str) -> None:
    root = _tree(tmp_path, {rel: ESCAPES[rel]})
    findings = checker.check(root)
    assert findings and all(f.startswith(f"{rel}:") for f in findings), findings


def test_the_script_exits_1_and_names_the_file(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"Makefile": ESCAPES["Makefile"]})
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "Makefile:2:" in done.stderr, done.stderr


def test_paths_inside_the_repository_pass(checker: ModuleType, tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tests/conftest.py": (
                "from pathlib import Path\n"
                "REPO = Path(__file__).resolve().parents[1]\n"
                'CORPUS = REPO / "tests" / "corpus"\n'
                "HERE = Path(__file__).parent\n"
                "# blob keys that must be refused are data, not paths we read:\n"
                'BAD_KEYS = ["../escape", "a/../../x"]\n'
            ),
            "tests/ocr/kit.py": (
                'from pathlib import Path\nROOT = Path(__file__).parents[2] / "ocr"\n'
            ),
            ".ci/run": '#!/usr/bin/env bash\ncd "$(dirname "$0")/.."\nmake test\n',
            "Makefile": "test:\n\tpytest -q tests/ocr\n",
            "bench/x.py": 'OUT = "/tmp/bench"  # the machine\'s temp dir is fine\n',
            "tests/corpus/MANIFEST.json": MANIFEST_NAMING_ITS_SOURCE,
        },
    )
    assert checker.check(root) == []


def test_a_pragma_allows_one_line(checker: ModuleType, tmp_path: Path) -> None:
    line = 'X = "../shared/a.pdf"  # self-contained: ok (documented exception)\n'
    root = _tree(tmp_path, {"bench/x.py": line})
    assert checker.check(root) == []
