"""Real worker and beat processes for integration and fault tests.

They are `pagelane worker` / `pagelane beat` subprocesses with the test's settings in their
environment, so they exercise exactly what production runs. Each is stopped by the process id
it was started with; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SANDBOX_CHILD = b"import ocr.sandbox"  # the start of a sandbox child's `python -c` program


def settings_env(settings: Settings) -> dict[str, str]:
    """The PAGELANE_* environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELANE_")}
    for name, value in settings.model_dump().items():
        if value is None or value == "":
            continue
        env[f"PAGELANE_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_THREAD_LIMIT", "1")
    return env


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A new session so kill -9 of the group takes the prefork children with it.
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[int]:
        """Pids of the prefork pool's children."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def sandbox_children(self) -> dict[int, int]:
        """How many sandbox children (ocr/sandbox.py) each pool child has, by its pid: one once
        it has extracted (the sandbox starts with the first extraction and stays warm)."""
        counts: dict[int, int] = {}
        for pool_child in self.children():
            try:
                kids = Path(f"/proc/{pool_child}/task/{pool_child}/children").read_text().split()
                counts[pool_child] = sum(
                    SANDBOX_CHILD in Path(f"/proc/{kid}/cmdline").read_bytes() for kid in kids
                )
            except (FileNotFoundError, ProcessLookupError):
                continue  # the pool child (or its child) exited meanwhile
        return counts

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """kill -9 the whole process group (the worker and its pool)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    settings: Settings,
    tmp: Path,
    *,
    concurrency: int = 2,
    queues: str = "items,sweeps",
    faults: dict[str, str] | None = None,
    module: str | None = None,
) -> Proc:
    """A real worker; with ``faults`` it is tests.support.fault_worker's engine-faulty one.
    ``module``: another entry point that takes pagelane's worker arguments (bench/inprocess.py).
    """
    name = f"w{uuid.uuid4().hex[:6]}@test"
    env = {**settings_env(settings), **(faults or {})}
    module = module or ("tests.support.fault_worker" if faults else "service.cli")
    argv = [
        sys.executable,
        "-m",
        module,
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--hostname={name}",
        "--loglevel=INFO",
    ]
    return Proc(argv, env, tmp / f"worker-{name}.log")


def start_beat(settings: Settings, tmp: Path) -> Proc:
    argv = [sys.executable, "-m", "service.cli", "beat", "--loglevel", "INFO"]
    return Proc(argv, settings_env(settings), tmp / "beat.log")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")
