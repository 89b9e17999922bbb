"""`pip install pagelane` without extras, in a fresh virtualenv: the SDK and the client commands
with light dependencies; the server's commands are there but say which extra they need.

Installs from PyPI (httpx, pydantic, click, rich and the build backend): a minute or two."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import REPO

pytestmark = pytest.mark.slow

# What the wheel is built from (as deploy/Dockerfile copies it).
SOURCES = ["pyproject.toml", "README.md", "pagelane", "service", "tasks", "ocr"]
SERVER_ONLY = ["celery", "pypdfium2", "flask", "sqlalchemy", "boto3", "redis", "pydantic_settings"]


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdk-install")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copyfile(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
        env=clean_env(),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def clean_env() -> dict[str, str]:
    """The environment without this checkout on sys.path (PYTHONPATH) or a venv of its own."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PAGELANE_")}


def run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        env=clean_env(),
        cwd=venv.parent,  # not the checkout: its packages must not be importable from cwd
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_sdk_imports_without_the_server_packages(sdk_venv: Path) -> None:
    probe = (
        "import importlib.util, pagelane\n"
        "from pagelane import AsyncClient, Client\n"
        "print(pagelane.__file__)\n"
        f"print([m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is not None])\n"
    )
    done = run(sdk_venv, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    location, importable = done.stdout.splitlines()
    assert location.startswith(str(sdk_venv)), location  # the installed copy, not the checkout
    assert importable == "[]"


def test_the_client_commands_run_and_the_server_ones_name_the_extra(sdk_venv: Path) -> None:
    listing = run(sdk_venv, "pagelane", "--help")
    assert listing.returncode == 0, listing.stderr
    for command in ("run", "submit", "status", "wait", "download", "cancel", "up", "worker", "db"):
        assert f"  {command} " in listing.stdout, listing.stdout

    # A client command works (here: it reaches the point of needing an API key).
    status = run(sdk_venv, "pagelane", "status", "batch_x")
    assert status.returncode == 1
    assert "Traceback" not in status.stderr
    assert "API key" in status.stderr or "PAGELANE_API_KEY" in status.stderr, status.stderr

    for argv in (["up"], ["worker"], ["db", "upgrade"]):
        refused = run(sdk_venv, "pagelane", *argv)
        assert refused.returncode != 0, argv
        assert "pip install 'pagelane[server]'" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
