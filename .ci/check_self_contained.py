#!/usr/bin/env python3
"""Fail when tests/, bench/, .ci/ or the Makefile reach outside the repository.

A fresh clone must be complete: the suite and the benchmarks read only what is inside it (their
documents are in tests/corpus). CI clones the repository beside the team's shared corpus, so a
path that escapes would still work there and nobody would notice; this check does.

What counts as leaving the repository:

* the shared corpus by name (``../shared``, ``shared/corpus``) and absolute paths into home or
  work directories (``/work/...``, ``/home/...``, ``/Users/...``), in code and comments alike;
* Python: a path built from ``__file__`` that climbs above the repository root
  (``Path(__file__).resolve().parents[N]``, ``.parent`` chains, ``/ ".."``,
  ``os.path.dirname``/``os.path.join(..., "..")``, also through a name such as
  ``REPO = ...parents[1]`` then ``REPO.parent``), and ``Path("../...")``/``open("../...")``
  (tests and make run from the repository root);
* shell scripts and the Makefile: any ``..`` path component, except ``$(dirname "$0")/..``
  climbing no higher than the repository root.

A line may opt out with the comment ``self-contained: ok`` (say why on the same line).
Usage: ``python .ci/check_self_contained.py [REPO_ROOT]``; exit status 1 lists each finding.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SCOPE_DIRS = ("tests", "bench", ".ci")
SCOPE_FILES = ("Makefile",)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
DATA_DIR = ("tests", "corpus")
TEXT_SUFFIXES = {".py", ".sh", ".bash", ".toml", ".ini", ".cfg", ".yml", ".yaml", ".mk"}
PRAGMA = "self-contained: ok"
SELF = Path(".ci") / "check_self_contained.py"

NAMED_OUTSIDE = re.compile(
    r"\.\./+shared\b|\bshared/corpus\b|(?<![\w.~$-])/(?:work|home|Users)(?:/|\b)"
)
SHELL_DOTDOT = re.compile(r"(?:^|(?<=[\s\"'=:(/]))\.\.(?=/|\s|\"|'|\)|;|$)")
SHELL_SCRIPT_DIR = re.compile(
    r"\$\(\s*dirname\s+\"?\$(?:0|\{BASH_SOURCE\[0\]\}|BASH_SOURCE)\"?\s*\)\"?((?:/\.\.)+)"
)


def files_in_scope(root: Path) -> Iterator[Path]:
    for name in SCOPE_FILES:
        if (root / name).is_file():
            yield root / name
    for top in SCOPE_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(root)
            if any(part in SKIP_DIRS for part in rel.parts):
                continue
            # tests/corpus holds documents (and manifests naming their upstream homes);
            # its Python files are checked like any other.
            if rel.parts[:2] == DATA_DIR and path.suffix != ".py":
                continue
            if path.is_file() and (path.suffix in TEXT_SUFFIXES or _is_script(path)):
                yield path


def _is_script(path: Path) -> bool:
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _is_python(path: Path) -> bool:
    if path.suffix == ".py":
        return True
    if path.suffix or not _is_script(path):
        return False
    return b"python" in path.read_bytes().split(b"\n", 1)[0]


# ------------------------------------------------------------------------------------------
# Python: paths derived from __file__
# ------------------------------------------------------------------------------------------


class _Climb(ast.NodeVisitor):
    """Steps up from this file a path expression takes: ``Path(__file__)`` is 0, its
    ``.parent`` 1, ``.parents[k]`` k + 1. The repository root is ``depth`` steps up."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.names: dict[str, int] = {}
        self.findings: list[tuple[int, str]] = []

    def steps(self, node: ast.AST) -> int | None:
        if isinstance(node, ast.Name):
            if node.id == "__file__":
                return 0
            return self.names.get(node.id)
        if isinstance(node, ast.Call):
            func = _dotted(node.func)
            if (
                func
                in {
                    "Path",
                    "pathlib.Path",
                    "PurePath",
                    "os.path.abspath",
                    "os.path.realpath",
                    "os.path.normpath",
                }
                and node.args
            ):
                base = self.steps(node.args[0])
                if base is not None:
                    return base + sum(_dotdots(a) or 0 for a in node.args[1:])
                return None
            if func == "os.path.dirname" and node.args:
                base = self.steps(node.args[0])
                return None if base is None else base + 1
            if func == "os.path.join" and node.args:
                base = self.steps(node.args[0])
                if base is None:
                    return None
                return base + sum(_dotdots(a) or 0 for a in node.args[1:])
            if isinstance(node.func, ast.Attribute) and node.func.attr in {
                "resolve",
                "absolute",
                "expanduser",
            }:
                return self.steps(node.func.value)
            return None
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            base = self.steps(node.value)
            return None if base is None else base + 1
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            base = self.steps(node.value.value)
            return None if base is None else base + node.slice.value + 1
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            base = self.steps(node.left)
            if base is None:
                return None
            up = _dotdots(node.right)
            return base + (up or 0)
        return None

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                value = self.steps(node.value)
                if value is not None:
                    self.names[target.id] = value
        if (
            isinstance(node, ast.Call)
            and _dotted(node.func) in {"Path", "pathlib.Path", "open"}
            and node.args
            and (_dotdots(node.args[0]) or 0) > 0
        ):
            self.findings.append(
                (
                    node.lineno,
                    "a path relative to the working directory climbs out of the repository root",
                )
            )
        value = self.steps(node) if isinstance(node, ast.expr) else None
        if value is not None and value > self.depth:
            self.findings.append(
                (
                    getattr(node, "lineno", 0),
                    f"climbs {value} levels from the file, {value - self.depth} above the"
                    " repository root",
                )
            )
            return  # report the outermost expression once
        super().generic_visit(node)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _dotdots(node: ast.AST) -> int | None:
    """Net levels a string literal like ``".."`` or ``"../x"`` climbs; None if not a literal."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return None
    level = up = 0
    for part in node.value.split("/"):
        if part == "..":
            level -= 1
            up = max(up, -level)
        elif part not in ("", "."):
            level += 1
    return up


def check_python(path: Path, rel: Path, source: str) -> list[tuple[int, str]]:
    try:
        tree = ast.parse(source, filename=str(rel))
    except SyntaxError as exc:
        return [(exc.lineno or 0, f"cannot parse: {exc.msg}")]
    climb = _Climb(depth=len(rel.parts))
    climb.visit(tree)
    return climb.findings


def check_shell(rel: Path, line: str) -> str | None:
    allowed_up = len(rel.parts) - 1  # from the script's folder to the repository root
    stripped = line
    for match in SHELL_SCRIPT_DIR.finditer(line):
        if match.group(1).count("..") > allowed_up:
            return "climbs above the repository root from the script's folder"
        stripped = stripped.replace(match.group(0), "")
    if SHELL_DOTDOT.search(stripped):
        return "a '..' path component (leaves the repository when run from its root)"
    return None


def check(root: Path) -> list[str]:
    findings: list[str] = []
    for path in files_in_scope(root):
        rel = path.relative_to(root)
        if rel == SELF:  # its docstring and patterns name what they look for
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines = source.splitlines()
        hits: list[tuple[int, str]] = []
        python = _is_python(path)
        for number, line in enumerate(lines, start=1):
            match = NAMED_OUTSIDE.search(line)
            if match:
                hits.append((number, f"names a path outside the repository ({match.group(0)!r})"))
            elif not python:
                reason = check_shell(rel, line.split("#", 1)[0] if rel.name != "Makefile" else line)
                if reason:
                    hits.append((number, reason))
        if python:
            hits.extend(check_python(path, rel, source))
        for number, reason in sorted(set(hits)):
            text = lines[number - 1] if 0 < number <= len(lines) else ""
            if PRAGMA in text:
                continue
            findings.append(f"{rel}:{number}: {reason}\n    {text.strip()}")
    return findings


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parents[1]
    findings = check(root)
    for finding in findings:
        print(finding, file=sys.stderr)
    if findings:
        print(
            f"\n{len(findings)} reference(s) outside the repository: the suite and the"
            " benchmarks must run from a fresh clone (documents go in tests/corpus).",
            file=sys.stderr,
        )
        return 1
    print(
        "self-contained: tests/, bench/, .ci/ and the Makefile read nothing outside the repository"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
