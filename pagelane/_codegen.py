"""Generate the blocking client from the asyncio one: ``python -m pagelane._codegen``.

``pagelane/_async/client.py`` is the source; ``pagelane/_sync/client.py`` is written from it
with unasync (``async``/``await`` dropped, the names below replaced), then tidied by ruff
(import order, imports left unused, ``yield from``) and formatted. ``--check`` writes nothing
and exits 1 when the committed file differs from what would be generated (`make check` runs
it). A development tool: it needs the dev extra (unasync, ruff); nothing imports it at runtime.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
SOURCE = PACKAGE / "_async" / "client.py"
TARGET = PACKAGE / "_sync" / "client.py"
HEADER = (
    "# Generated from pagelane/_async/client.py by `python -m pagelane._codegen` (unasync);\n"
    "# do not edit: change the async file and regenerate (`make check` fails when they drift).\n"
)

# Names replaced, on top of unasync's own (__aenter__ → __enter__, __aiter__ → __iter__,
# __anext__ → __next__, AsyncIterator → Iterator, ...).
NAMES = {
    "AsyncClient": "Client",
    "AsyncFiles": "Files",
    "AsyncBatches": "Batches",
    "AsyncChangeFeed": "ChangeFeed",
    "AsyncResults": "Results",
    "AsyncQuotes": "Quotes",
    "AsyncEventStream": "EventStream",
    "AsyncBaseTransport": "BaseTransport",  # httpx
    "aclose": "close",
    "aread": "read",
    "aiter_bytes": "iter_bytes",
    "aiter_lines": "iter_lines",
    "asyncio": "time",  # asyncio.sleep → time.sleep
}
# What is not a name, applied to the source before the names: (pattern, replacement).
SUBS = [
    (r"^import asyncio\n", ""),  # `time` is imported already
    (r"Awaitable\[([\w.]+)\]", r"\1"),  # Callable[..., Awaitable[X]] → Callable[..., X]
    (r"AsyncGenerator\[(\w+), None\]", r"Generator[\1, None, None]"),  # 3 parameters
]
RUFF_FIXES = "I,F401,UP028"  # import order, imports left unused, `for x in y: yield x`


def generate(source: str) -> str:
    """The sync module for the async module's text ``source``."""
    import tokenize_rt  # dev dependencies, imported here: nothing else needs them
    import unasync

    for pattern, replacement in SUBS:
        source = re.sub(pattern, replacement, source, flags=re.MULTILINE)
    rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=NAMES)
    tokens = tokenize_rt.src_to_tokens(source)
    text = tokenize_rt.tokens_to_src(list(rule._unasync_tokens(tokens)))
    # Formatted with the project's settings (pyproject.toml), as the file it becomes.
    name = str(TARGET.relative_to(ROOT))
    text = _ruff(["check", "--fix-only", "--unsafe-fixes", "--select", RUFF_FIXES], name, text)
    text = _ruff(["format"], name, text)
    return HEADER + text


def _ruff(args: list[str], filename: str, text: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--quiet", "--stdin-filename", filename, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {args[0]} failed on the generated code:\n{done.stderr}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagelane._codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a drift")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the async module")
    parser.add_argument("--target", type=Path, default=TARGET, help="the generated sync module")
    args = parser.parse_args(argv)
    expected = generate(args.source.read_text(encoding="utf-8"))
    current = args.target.read_text(encoding="utf-8") if args.target.exists() else ""
    if not args.check:
        if current != expected:
            args.target.write_text(expected, encoding="utf-8")
            print(f"wrote {args.target}")
        return 0
    if current == expected:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        f"{args.target} (committed)",
        f"{args.target} (generated from {args.source})",
    )
    sys.stderr.writelines(diff)
    print(
        f"\n{args.target} is not what {args.source} generates: edit the async file and run "
        "`python -m pagelane._codegen` (the sync file is never edited by hand)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
