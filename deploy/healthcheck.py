"""Container health check for the one Pagelane image, whatever role the container runs.

The image's HEALTHCHECK runs this with no argument: the role is read from the container's main
command line (/proc/1/cmdline), so `docker run pagelane worker` is checked as a worker and
`docker run pagelane api` as an API. A role can also be named: `healthcheck.py worker`.

    api     GET http://127.0.0.1:<port>/healthz answers 200 (liveness only: a database outage
            must not make the orchestrator restart the API; /readyz is for load balancers)
    flower  GET http://127.0.0.1:<port>/healthcheck answers 200
    worker  this worker's Celery node answers a ping through the broker
    other   (beat, db upgrade, keys ...) healthy while the process runs

Exit status 0 is healthy, 1 unhealthy (Docker's convention). Standard library only, except the
worker ping, which uses Pagelane's own settings and Celery app.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("api", "worker", "flower", "none")
HTTP_PATHS = {"api": "/healthz", "flower": "/healthcheck"}
DEFAULT_PORTS = {"api": 8080, "flower": 5555}


@dataclass(frozen=True)
class Target:
    role: str
    port: int | None = None
    node: str | None = None  # Celery node name of a worker


def _option(args: Sequence[str], *names: str) -> str | None:
    """The value of `--name value`, `--name=value` or `-n value` in a command line."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _node_name(hostname: str | None) -> str:
    # Celery's default node name is celery@<host name>; %h in -n expands to the host name.
    host = socket.gethostname()
    if not hostname:
        return f"celery@{host}"
    name = hostname.replace("%h", host)
    return name if "@" in name else f"celery@{name}"


def detect(argv: Sequence[str]) -> Target:
    """What the container's main process is, from its command line."""
    names = [os.path.basename(a) for a in argv]
    if "gunicorn" in names or "gunicorn" in argv:
        # `pagelane api` execs gunicorn; its --bind holds the port.
        bind = _option(argv, "--bind", "-b") or ""
        port = bind.rsplit(":", 1)[-1]
        return Target("api", int(port) if port.isdigit() else DEFAULT_PORTS["api"])
    if "pagelane" not in names:
        return Target("none")
    rest = list(argv[names.index("pagelane") + 1 :])
    role = rest[0] if rest else ""
    if role in ("api", "flower"):
        option = _option(rest, "--port")
        return Target(role, int(option) if option else DEFAULT_PORTS[role])
    if role == "worker":
        return Target("worker", node=_node_name(_option(rest, "--hostname", "-n")))
    return Target("none")


def main_cmdline() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def check_http(port: int, path: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_worker(node: str, timeout: float) -> bool:
    from service.settings import load_settings
    from tasks.app import make_celery

    app = make_celery(load_settings())
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    finally:
        app.close()
    return any(node in reply for reply in replies)


def run(target: Target, timeout: float) -> bool:
    if target.role in HTTP_PATHS:
        port = target.port or DEFAULT_PORTS[target.role]
        return check_http(port, HTTP_PATHS[target.role], timeout)
    if target.role == "worker":
        return check_worker(target.node or _node_name(None), timeout)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=ROLES, help="default: from /proc/1/cmdline")
    parser.add_argument("--port", type=int, help="API or Flower port (default: detected)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    detected = detect(main_cmdline())
    if args.role is None:
        target = detected
    elif args.role == "worker":
        target = Target("worker", node=detected.node or _node_name(None))
    else:
        target = Target(args.role, args.port or detected.port)
    if args.port and target.role in HTTP_PATHS:
        target = Target(target.role, args.port)
    healthy = run(target, args.timeout)
    if not healthy:
        print(f"unhealthy: {target.role}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
