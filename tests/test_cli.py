"""The `pagelane` command, run as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CORPUS
from tests.support.stack import REPO, free_port, settings_env, wait_for


def pagelane(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELANE_")}
    env.update(PAGELANE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    return env


def test_db_upgrade_keys_and_customers(cli_env: dict[str, str]) -> None:
    upgraded = pagelane("db", "upgrade", env=cli_env)
    assert "database at revision" in upgraded.stdout

    created = pagelane(
        "keys",
        "create",
        "--customer",
        "acme",
        "--quota-pages",
        "500",
        "--concurrency",
        "3",
        env=cli_env,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pl_") and len(key) > 30
    second = pagelane("keys", "create", "--customer", "acme", env=cli_env)
    assert second.stdout.strip().splitlines()[-1] != key

    listing = pagelane("customers", "list", env=cli_env).stdout
    row = next(line for line in listing.splitlines() if " acme " in line)
    assert row.split()[-4:] == ["500", "0", "3", "2"]

    revoked = pagelane("keys", "revoke", key[:10], env=cli_env)
    assert "revoked key_" in revoked.stdout
    listing = pagelane("customers", "list", env=cli_env).stdout
    assert next(line for line in listing.splitlines() if " acme " in line).split()[-1] == "1"
    again = pagelane("keys", "revoke", key[:10], env=cli_env, check=False)
    assert again.returncode != 0 and "0 active keys" in again.stderr


def test_keys_create_keeps_an_existing_quota_unless_the_flag_is_given(
    cli_env: dict[str, str],
) -> None:
    env = {**cli_env, "PAGELANE_DEFAULT_QUOTA_PAGES": "100"}
    pagelane("db", "upgrade", env=env)

    def quota(name: str) -> str:
        listing = pagelane("customers", "list", env=env).stdout
        return next(line for line in listing.splitlines() if f" {name} " in line).split()[-4]

    pagelane("keys", "create", "--customer", "newco", env=env)
    assert quota("newco") == "100"  # a new customer gets the default
    pagelane("keys", "create", "--customer", "bigco", "--quota-pages", "5000", env=env)
    pagelane("keys", "create", "--customer", "bigco", env=env)
    assert quota("bigco") == "5000"  # omitted flag: unchanged, not reset to the default
    pagelane("keys", "create", "--customer", "bigco", "--quota-pages", "7", env=env)
    assert quota("bigco") == "7"  # an explicit flag changes it


def test_bad_configuration_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = pagelane("worker", env={**cli_env, "PAGELANE_BLOB_STORE": "s3"}, check=False)
    assert result.returncode != 0
    assert "PAGELANE_S3_BUCKET" in result.stderr


def _start_up(cli_env: dict[str, str], port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--workers", "1", *extra],
        env=cli_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (each role runs in its own process group): pid -> argv."""
    found: dict[int, str] = {}
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            found[child] = argv.replace(b"\0", b" ").decode()
            pending.append(child)
    return found


def _alive(pids: dict[int, str]) -> dict[int, str]:
    alive = {}
    for pid, argv in pids.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive[pid] = argv
    return alive


def _stopped(process: subprocess.Popen[str], started: dict[int, str], timeout: float) -> str:
    """``up``'s output once it has exited; fails, naming what still runs, if it does not."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        left = _alive(started)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        tail = (exc.output or b"")[-3000:]
        pytest.fail(f"up did not stop within {timeout} s; still running: {left}\n{tail!r}")
    return output


@pytest.mark.slow
def test_up_serves_a_batch_and_stops_cleanly(cli_env: dict[str, str], tmp_path: Path) -> None:
    """`make run`'s command: embedded Redis, SQLite, local blobs, API, worker and beat."""
    port = free_port()
    process = _start_up(cli_env, port)
    api = f"http://127.0.0.1:{port}"
    started: dict[int, str] = {}
    try:
        wait_for(lambda: _ready(api), 90, 0.5, "pagelane up to be ready")
        key = (tmp_path / "data" / "dev_api_key").read_text().strip()
        headers = {"X-API-KEY": key}
        data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
        created = httpx.post(
            f"{api}/v1/files", json={"size_bytes": len(data)}, headers=headers
        ).json()
        upload = created["upload"]
        assert httpx.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
        batch = httpx.post(
            f"{api}/v1/batches", json={"file_ids": [created["id"]]}, headers=headers
        ).json()

        def finished() -> dict | None:
            body = httpx.get(f"{api}/v1/batches/{batch['id']}", headers=headers).json()
            return body if body["status"] == "completed" else None

        done = wait_for(finished, 60, 0.5, "the batch to complete")
        item = done["items"][-1]
        result = httpx.get(
            f"{api}{item['result_url']}", headers=headers, follow_redirects=True
        ).json()
        assert "The Crazy Ones" in " ".join(c["page_content"] for c in result["chunks"])
    finally:
        started = _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        output = _stopped(process, started, timeout=60)
    assert "Pagelane is up." in output and "dev key:" in output
    # Redis, gunicorn and its workers, the worker and its pool, beat.
    assert len(started) >= 7, started
    assert _alive(started) == {}


@pytest.mark.slow
def test_a_second_ctrl_c_kills_what_the_first_is_waiting_for(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    process = _start_up(cli_env, port)
    started: dict[int, str] = {}
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), 90, 0.5, "pagelane up to be ready")
        started = _descendants(process.pid)
        (beat,) = [pid for pid, argv in started.items() if "service.cli beat" in argv]
        # A role that does not stop: the first Ctrl-C would give it its 30 s grace.
        os.kill(beat, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        begun = time.monotonic()
        process.send_signal(signal.SIGINT)
    finally:
        output = _stopped(process, started, timeout=60)
    assert time.monotonic() - begun < 10
    assert "killing..." in output
    assert _alive(started) == {}


def _role_pid(up: subprocess.Popen[str], role: str) -> int | None:
    """The pid of ``role``'s main process: a direct child of `up` (the worker's pool children
    carry the same command line one level below)."""
    try:
        children = Path(f"/proc/{up.pid}/task/{up.pid}/children").read_text().split()
    except OSError:
        return None
    for pid in map(int, children):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            # `api` execs gunicorn; redis-server sets its own process title.
            marker = {"api": "gunicorn", "redis": "redis-server"}.get(role, f"service.cli {role}")
            if marker in argv:
                return pid
    return None


def _embedded_redis_url(up: subprocess.Popen[str], data_dir: Path, password: bool) -> str:
    pid = _role_pid(up, "redis")
    assert pid is not None
    # redis-server sets its process title to "redis-server 127.0.0.1:<port>".
    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    found = re.search(r"127\.0\.0\.1:(\d+)", title)
    assert found, title
    port = int(found.group(1))
    secret = (data_dir / "redis_password").read_text().strip() if password else ""
    return f"redis://:{secret}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_up_keeps_secrets_private_and_redis_behind_a_password(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    import redis

    port = free_port()
    process = _start_up(cli_env, port)
    data_dir = tmp_path / "data"
    started: dict[int, str] = {}
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), 90, 0.5, "pagelane up to be ready")
        started = _descendants(process.pid)
        assert _mode(data_dir) == 0o700
        for name in ("secret_key", "dev_api_key", "redis_password"):
            assert _mode(data_dir / name) == 0o600, name
        redis_pid = _role_pid(process, "redis")
        assert redis_pid is not None
        # The password is not on the command line, which every local user can read.
        secret = (data_dir / "redis_password").read_text().strip()
        assert secret.encode() not in Path(f"/proc/{redis_pid}/cmdline").read_bytes()
        anonymous = redis.Redis.from_url(_embedded_redis_url(process, data_dir, password=False))
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError):
            anonymous.keys("*")
        anonymous.close()
        authed = redis.Redis.from_url(_embedded_redis_url(process, data_dir, password=True))
        assert authed.ping()
        authed.close()
    finally:
        started = started or _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        output = _stopped(process, started, timeout=60)
    assert secret not in output  # the banner shows the Redis URL without its password
    assert _alive(started) == {}


@pytest.mark.slow
def test_up_restarts_dead_roles_and_a_batch_survives_a_worker_kill(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 of the worker's main process mid-batch, then of gunicorn's master and beat:
    each is restarted, and every item of the batch completes."""
    # A short lease: the item the dead worker held is requeued seconds after its death.
    env = {**cli_env, "PAGELANE_LEASE_SECONDS": "5", "PAGELANE_WORKER_METRICS_PORT": "0"}
    port = free_port()
    process = _start_up(env, port)
    api = f"http://127.0.0.1:{port}"
    started: dict[int, str] = {}
    try:
        wait_for(lambda: _ready(api), 90, 0.5, "pagelane up to be ready")
        key = (tmp_path / "data" / "dev_api_key").read_text().strip()
        headers = {"X-API-KEY": key}
        scan = (CORPUS / "scan-generated-multipage-3p.pdf").read_bytes()  # OCR: seconds an item
        file_ids = []
        for n in range(4):
            data = scan + b"\n%" + str(n).encode() + b"\n"
            created = httpx.post(
                f"{api}/v1/files", json={"size_bytes": len(data)}, headers=headers
            ).json()
            upload = created["upload"]
            put = httpx.put(upload["url"], content=data, headers=upload["headers"])
            assert put.status_code == 200
            file_ids.append(created["id"])
        batch = httpx.post(f"{api}/v1/batches", json={"file_ids": file_ids}, headers=headers)
        batch_id = batch.json()["id"]

        def counts() -> dict[str, int]:
            try:
                body = httpx.get(f"{api}/v1/batches/{batch_id}", headers=headers, timeout=5)
                return dict(body.json()["counts"]) if body.status_code == 200 else {}
            except httpx.HTTPError:
                return {}

        wait_for(lambda: counts().get("running"), 60, 0.2, "an item to be running")
        for role in ("worker", "api", "beat"):
            pid = _role_pid(process, role)
            assert pid is not None, role
            os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda role=role, pid=pid: _role_pid(process, role) not in (None, pid),
                30,
                0.2,
                f"{role} to be restarted",
            )
        wait_for(lambda: _ready(api), 60, 0.5, "the API to be back")
        done = wait_for(
            lambda: counts().get("succeeded") == len(file_ids) and counts(),
            180,
            1,
            "every item of the batch to succeed",
        )
        assert done.get("failed", 0) == 0
        started = _descendants(process.pid)
    finally:
        started = started or _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        output = _stopped(process, started, timeout=60)
    for role in ("worker", "api", "beat"):
        assert f"pagelane up: {role} (pid" in output and f"pagelane up: {role} restarted" in output
    assert _alive(started) == {}


@pytest.mark.slow
def test_up_gives_up_on_a_role_that_keeps_crashing(cli_env: dict[str, str], tmp_path: Path) -> None:
    import redis

    port = free_port()
    process = _start_up(cli_env, port, "--max-restarts", "3", "--restart-window", "120")
    started: dict[int, str] = {}
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), 90, 0.5, "pagelane up to be ready")
        started = _descendants(process.pid)
        # Another beat's lease: every restarted beat refuses to start, exiting non-zero.
        client = redis.Redis.from_url(_embedded_redis_url(process, tmp_path / "data", True))
        client.set("pagelane:beat:lock", "elsewhere:1", px=600_000)
        client.close()
        beat = _role_pid(process, "beat")
        assert beat is not None
        os.kill(beat, signal.SIGKILL)
        # 3 crashes: the kill, then two refused restarts (1 s and 2 s of backoff).
        output = _stopped(process, started, timeout=90)
    finally:
        if process.poll() is None:
            _stopped(process, started, timeout=60)
    assert process.returncode != 0
    assert "pagelane up: beat (pid" in output
    assert "beat exited (code 1) 3 times within 120 s" in output
    assert "everything is stopped" in output
    assert _alive(started) == {}


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_second_beat_refuses_to_start(make_settings, tmp_path: Path, flush_redis) -> None:
    from tests.support.stack import start_beat

    settings = make_settings(blob_store="local")
    first = start_beat(settings, tmp_path)
    try:
        wait_for(lambda: "beat: Starting" in first.log() or "is starting" in first.log(), 30)
        second = subprocess.run(
            [sys.executable, "-m", "service.cli", "beat"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=settings_env(settings),
        )
        assert second.returncode != 0
        assert "another beat holds the lock" in second.stderr
        assert first.alive()
    finally:
        first.stop()
