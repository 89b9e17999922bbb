"""Which files of a folder a run processes."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class LocalFile:
    """One input: its path relative to the run's folder (POSIX separators), size and mtime."""

    relative: str
    path: Path
    size: int
    mtime_ns: int


def scan_folder(
    source: Path, includes: Sequence[str] = (), *, skip: Sequence[Path] = ()
) -> list[LocalFile]:
    """Every regular file under ``source``, recursively, sorted by relative path.

    Hidden files and folders (a name starting with ``.``) are skipped, and so is every folder in
    ``skip`` (the output folder, when it sits inside the input). With ``includes`` only files
    whose relative path or name matches one of the globs are kept (``*.pdf`` matches at any
    depth; ``scans/*.tif`` only under ``scans``). Symlinked files are read; symlinked folders are
    not entered, so a link loop cannot make the walk endless.
    """
    source = source.resolve()
    skipped = {p.resolve() for p in skip}
    found: list[LocalFile] = []
    for directory, subdirs, filenames in os.walk(source):
        here = Path(directory)
        subdirs[:] = sorted(
            d for d in subdirs if not d.startswith(".") and (here / d).resolve() not in skipped
        )
        for name in filenames:
            if name.startswith("."):
                continue
            path = here / name
            relative = path.relative_to(source).as_posix()
            if includes and not _matches(relative, includes):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue  # a dangling symlink, or a file deleted while we walk
            if not path.is_file():
                continue
            found.append(LocalFile(relative, path, stat.st_size, stat.st_mtime_ns))
    found.sort(key=lambda f: f.relative)
    return found


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    name = PurePosixPath(relative).name
    return any(
        fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(name, pattern)
        for pattern in patterns
    )
