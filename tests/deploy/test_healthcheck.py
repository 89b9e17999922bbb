"""deploy/healthcheck.py: the image's role-aware health check, against real local HTTP servers."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest

from tests.deploy.support import DEPLOY


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pagelane_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules: register before executing.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Handler(BaseHTTPRequestHandler):
    statuses: dict[str, int] = {}

    def do_GET(self) -> None:
        status = self.statuses.get(self.path, 404)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, dict[str, int]]]:
    statuses: dict[str, int] = {}
    handler = type("Handler", (_Handler,), {"statuses": statuses})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], statuses
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("cmdline", "role", "port"),
    [
        # `pagelane api` execs gunicorn: PID 1's command line is gunicorn's.
        (
            ["/opt/venv/bin/python", "-m", "gunicorn", "--bind", "0.0.0.0:8081", "x:app"],
            "api",
            8081,
        ),
        (["/opt/venv/bin/python", "/opt/venv/bin/pagelane", "api", "--port", "9000"], "api", 9000),
        # compose's `init: true`: docker-init is PID 1 and keeps the command in its arguments.
        (["/sbin/docker-init", "--", "pagelane", "flower", "--port=5556"], "flower", 5556),
        (["/opt/venv/bin/python", "/opt/venv/bin/pagelane", "flower"], "flower", 5555),
        (["/opt/venv/bin/python", "/opt/venv/bin/pagelane", "worker", "-c", "2"], "worker", None),
        (["/opt/venv/bin/python", "/opt/venv/bin/pagelane", "beat"], "none", None),
        (["/opt/venv/bin/python", "/opt/venv/bin/pagelane", "db", "upgrade"], "none", None),
        ([], "none", None),
    ],
)
def test_detects_the_role(
    healthcheck: ModuleType, cmdline: list[str], role: str, port: int | None
) -> None:
    target = healthcheck.detect(cmdline)
    assert target.role == role
    if port is not None:
        assert target.port == port


def test_worker_node_name(healthcheck: ModuleType) -> None:
    host = healthcheck.socket.gethostname()
    default = healthcheck.detect(["pagelane", "worker"])
    assert default.node == f"celery@{host}"
    named = healthcheck.detect(["pagelane", "worker", "--hostname", "w1@%h"])
    assert named.node == f"w1@{host}"


def test_api_and_flower_checks_over_http(
    healthcheck: ModuleType, server: tuple[int, dict[str, int]]
) -> None:
    port, statuses = server
    statuses["/healthz"] = 200
    assert healthcheck.main(["api", "--port", str(port)]) == 0
    statuses["/healthz"] = 503
    assert healthcheck.main(["api", "--port", str(port)]) == 1
    assert healthcheck.main(["flower", "--port", str(port)]) == 1  # /healthcheck: 404
    statuses["/healthcheck"] = 200
    assert healthcheck.main(["flower", "--port", str(port)]) == 0


def test_nothing_listening_is_unhealthy(healthcheck: ModuleType) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert healthcheck.main(["api", "--port", str(port), "--timeout", "1"]) == 1


def test_roles_without_an_endpoint_are_healthy(healthcheck: ModuleType) -> None:
    assert healthcheck.main(["none"]) == 0


def test_worker_check_uses_real_pagelane_entry_points(healthcheck: ModuleType) -> None:
    # The worker ping imports these lazily inside the container: they must exist.
    import inspect

    from service.settings import load_settings
    from tasks.app import make_celery

    source = inspect.getsource(healthcheck.check_worker)
    assert "from service.settings import load_settings" in source
    assert "from tasks.app import make_celery" in source
    assert callable(load_settings) and callable(make_celery)
