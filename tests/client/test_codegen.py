"""The blocking client is generated from the asyncio one (`python -m pagelane._codegen`); the
check `make check` runs fails as soon as the committed sync file is not what it generates."""

from __future__ import annotations

import shutil
import tokenize
from pathlib import Path

import pytest

from pagelane import _codegen


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "_async" / "client.py"
    target = tmp_path / "_sync" / "client.py"
    for original, copy in ((_codegen.SOURCE, source), (_codegen.TARGET, target)):
        copy.parent.mkdir()
        shutil.copyfile(original, copy)
    return source, target


def check(source: Path, target: Path) -> int:
    return _codegen.main(["--check", "--source", str(source), "--target", str(target)])


def test_the_committed_sync_client_is_what_the_async_one_generates() -> None:
    assert _codegen.main(["--check"]) == 0


def test_the_check_fails_when_the_sync_client_is_edited_by_hand(
    copies: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = copies
    assert check(source, target) == 0
    text = target.read_text()
    target.write_text(text.replace("QUICK_POLL_SECONDS, self._poll_interval", "0.5, 1.0", 1))
    assert target.read_text() != text

    assert check(source, target) == 1
    err = capsys.readouterr().err
    assert "+        quick = delay = min(QUICK_POLL_SECONDS, self._poll_interval)" in err
    assert "python -m pagelane._codegen" in err


def test_the_check_fails_when_the_async_client_changes_alone(copies: tuple[Path, Path]) -> None:
    source, target = copies
    source.write_text(
        source.read_text().replace("max_connections: int = 32", "max_connections: int = 8")
    )
    assert check(source, target) == 1
    # Regenerating brings the pair back in step, with the change in the sync client too.
    assert _codegen.main(["--source", str(source), "--target", str(target)]) == 0
    assert check(source, target) == 0
    assert "max_connections: int = 8" in target.read_text()


def test_the_generated_client_is_blocking_and_says_where_it_comes_from() -> None:
    text = _codegen.TARGET.read_text()
    first, second = text.splitlines()[:2]
    assert first.startswith("# Generated from pagelane/_async/client.py by")
    assert "do not edit" in second
    with _codegen.TARGET.open("rb") as stream:
        names = {t.string for t in tokenize.tokenize(stream.readline) if t.type == tokenize.NAME}
    assert not names & {"async", "await", "asyncio", "Awaitable", "aclose", "aread"}
    assert not [name for name in names if name.startswith("Async")]
    assert {"Client", "ChangeFeed", "Iterator", "__enter__", "__next__", "time"} <= names
