"""deploy/compose.yaml: schema-valid, starts in order, runs only real commands and settings."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings, load_settings
from tasks.app import QUEUE_ITEMS, QUEUE_QUOTES, QUEUE_SWEEPS, QUEUE_WEBHOOKS
from tasks.webhooks import DELIVER_BUDGET_SECONDS
from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    commented_env_keys,
    compose_variables,
    env_file_values,
    interpolate,
    load_yaml,
    parse_pagelane_args,
    routed_queues,
    settings_env_names,
    unknown_settings,
    worker_queues,
)

# What an operator puts in deploy/.env: the required secrets only.
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "FLOWER_BASIC_AUTH": "admin:flower-secret",
}
PAGELANE_SERVICES = {"migrate", "api", "worker", "webhooks", "beat", "flower"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    rendered = interpolate(raw, SECRETS)
    assert isinstance(rendered, dict)
    return rendered


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def pagelane_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = compose["x-pagelane"]["image"]
    return {name: s for name, s in services(compose).items() if s.get("image") == image}


def seconds(duration: str) -> float:
    """A compose duration (1h2m3s, 45s, 31m, 1.5s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- schema -------------------------------------------------------------------------------------


def check_compose_schema(path: Path) -> None:
    # check-jsonschema ships the compose-spec JSON schema (vendor.compose-spec): offline.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    check_compose_schema(COMPOSE_FILE)


def test_interpolated_compose_file_matches_the_compose_spec(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    rendered = tmp_path / "compose.json"
    rendered.write_text(json.dumps(compose))
    check_compose_schema(rendered)


def test_schema_check_catches_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n  api:\n    image: x\n    depends_on:\n      db:\n        condition: started\n"
    )
    with pytest.raises(AssertionError):
        check_compose_schema(broken)


# --- variables and secrets ----------------------------------------------------------------------


def test_secrets_are_required_and_documented() -> None:
    text = COMPOSE_FILE.read_text()
    variables = compose_variables(text)
    required = {name for name, op in variables.items() if op in (":?", "?")}
    assert required == set(SECRETS), required
    example = DEPLOY / ".env.example"
    listed = env_file_values(example)
    assert set(listed) == required, "the example lists exactly the required secrets"
    assert all(not value for value in listed.values()), "no default secrets in the example"
    documented = commented_env_keys(example) | set(listed)
    assert set(variables) <= documented, f"undocumented: {set(variables) - documented}"
    assert documented <= set(variables), f"documented but unused: {documented - set(variables)}"
    with pytest.raises(KeyError, match="is required"):
        interpolate(load_yaml(COMPOSE_FILE), {})


def test_secret_files_are_git_ignored() -> None:
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored


# --- the Pagelane services ----------------------------------------------------------------------


def test_every_role_runs_a_real_pagelane_command(compose: dict[str, Any]) -> None:
    ours = pagelane_services(compose)
    assert set(ours) == PAGELANE_SERVICES
    roles = {}
    for name, service in ours.items():
        assert "entrypoint" not in service, f"{name}: keep the image's `pagelane` entrypoint"
        roles[name], _ = parse_pagelane_args(service["command"])
    assert roles == {
        "migrate": "db upgrade",
        "api": "api",
        "worker": "worker",
        "webhooks": "worker",
        "beat": "beat",
        "flower": "flower",
    }


def test_pagelane_env_is_shared_and_known_to_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = pagelane_services(compose)
    shared = compose["x-pagelane-env"]
    pagelane_names = {k for k in shared if k.startswith("PAGELANE_")}
    assert len(pagelane_names) >= 8
    for name, service in ours.items():
        env = service["environment"]
        assert isinstance(env, dict), f"{name}: use the mapping form"
        assert {k: v for k, v in env.items() if k in shared} == shared, f"{name} drifts"
        assert not unknown_settings(set(env)), f"{name}: {unknown_settings(set(env))}"
    # The values make a configuration that loads (the same checks the processes run at boot).
    for key in [k for k in os.environ if k.startswith("PAGELANE_")]:
        monkeypatch.delenv(key)
    for key, value in shared.items():
        if key.startswith("PAGELANE_"):
            monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.blob_store == "s3" and settings.s3_bucket
    assert (
        settings.database_url.startswith("postgresql://")
        and "@postgres:5432/" in settings.database_url
    )
    assert settings.redis_url == "redis://:redis-secret@redis:6379/0"


def test_start_order(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            target = all_services[dependency]
            if condition == "service_healthy":
                healthcheck = target.get("healthcheck", {})
                assert healthcheck.get("test") and not healthcheck.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is one-shot: restart: 'no'"
            else:
                pytest.fail(f"{name} -> {dependency}: use a health or completion condition")
    migrate = all_services["migrate"]["depends_on"]
    assert migrate == {"postgres": {"condition": "service_healthy"}}
    for role in ("api", "worker", "webhooks", "beat"):
        deps = all_services[role]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["createbucket"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert all_services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_api_under_gunicorn_on_8080(compose: dict[str, Any]) -> None:
    api = services(compose)["api"]
    _, params = parse_pagelane_args(api["command"])
    assert params["host"] == "0.0.0.0" and params["port"] == 8080
    assert any(str(p).endswith(":8080") for p in api["ports"])
    # Only the public port is published; the metrics ports stay on the project network.
    assert not any("9807" in str(p) or "9808" in str(p) for p in api["ports"])
    assert api["environment"]["PAGELANE_METRICS_BIND"] == "0.0.0.0"
    assert api["healthcheck"]["test"][-3:] == ["api", "--port", "8080"]
    assert seconds(api["stop_grace_period"]) > 30  # gunicorn's --graceful-timeout


def test_workers_scale_and_shut_down_warm(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N"
    _, params = parse_pagelane_args(worker["command"])
    # Extraction, beat's sweeps and dry-run quotes; never the webhooks (their own service).
    assert worker_queues(worker["command"]) == {QUEUE_ITEMS, QUEUE_SWEEPS, QUEUE_QUOTES}
    limit = int(compose["x-pagelane-env"]["PAGELANE_TASK_TIME_LIMIT_SECONDS"])
    assert seconds(worker["stop_grace_period"]) >= limit + 60
    assert int(worker["deploy"]["resources"]["limits"]["cpus"]) == params["concurrency"]


def test_webhooks_worker_runs_apart_and_shuts_down_warm(compose: dict[str, Any]) -> None:
    webhooks = services(compose)["webhooks"]
    assert "container_name" not in webhooks and "ports" not in webhooks, "--scale webhooks=N"
    _, params = parse_pagelane_args(webhooks["command"])
    assert worker_queues(webhooks["command"]) == {QUEUE_WEBHOOKS}
    # I/O-bound: more children than its CPU limit.
    assert params["concurrency"] > float(webhooks["deploy"]["resources"]["limits"]["cpus"])
    # Its own Celery node name (as `pagelane up`), which the healthcheck reads from PID 1.
    assert params["hostname"] == "webhooks@%h"
    assert webhooks["healthcheck"]["test"][3] == "worker"
    # No metrics endpoint: the pagelane-worker scrape job and its alerts are the extraction
    # workers'.
    assert webhooks["environment"]["PAGELANE_WORKER_METRICS_PORT"] == "0"
    # A sender runs for its budget plus one attempt's timeout before it stops.
    timeout = float(
        compose["x-pagelane-env"].get(
            "PAGELANE_WEBHOOK_TIMEOUT_SECONDS",
            Settings.model_fields["webhook_timeout_seconds"].default,
        )
    )
    assert seconds(webhooks["stop_grace_period"]) >= DELIVER_BUDGET_SECONDS + timeout + 10


def test_every_routed_queue_has_a_consumer(compose: dict[str, Any]) -> None:
    routed = routed_queues()
    assert routed == {QUEUE_ITEMS, QUEUE_SWEEPS, QUEUE_QUOTES, QUEUE_WEBHOOKS}
    consumed: dict[str, set[str]] = {}
    for name, service in pagelane_services(compose).items():
        if parse_pagelane_args(service["command"])[0] == "worker":
            consumed[name] = worker_queues(service["command"])
    missing = routed - set().union(*consumed.values())
    assert not missing, f"no worker consumes {missing}"
    # Webhook deliveries never share a worker with extraction.
    for name, queues in consumed.items():
        assert not (QUEUE_WEBHOOKS in queues and QUEUE_ITEMS in queues), name


def test_exactly_one_beat(compose: dict[str, Any]) -> None:
    beats = [
        name
        for name, service in pagelane_services(compose).items()
        if parse_pagelane_args(service["command"])[0] == "beat"
    ]
    assert beats == ["beat"]
    beat = services(compose)["beat"]
    assert beat.get("container_name"), "a fixed container_name makes --scale beat=2 fail"
    assert beat.get("deploy", {}).get("replicas", 1) == 1


def test_flower_behind_basic_auth_on_loopback(compose: dict[str, Any], raw: dict[str, Any]) -> None:
    flower = services(compose)["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert "${FLOWER_BASIC_AUTH:?" in raw["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])


def test_redis_keeps_its_data_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["image"].startswith("redis:7")
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_postgres(compose: dict[str, Any]) -> None:
    postgres = services(compose)["postgres"]
    assert re.match(r"postgres:1[56]\b", postgres["image"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


def test_bucket_with_lifecycle_backstop(compose: dict[str, Any]) -> None:
    create = services(compose)["createbucket"]
    script = create["command"][0]
    env = create["environment"]
    assert 'mc mb --ignore-existing "local/$BUCKET"' in script
    assert 'mc ilm rule add --expire-days "$EXPIRE_DAYS" "local/$BUCKET"' in script
    assert env["BUCKET"] == compose["x-pagelane-env"]["PAGELANE_S3_BUCKET"]
    retention_hours = int(compose["x-pagelane-env"]["PAGELANE_RETENTION_HOURS"])
    assert int(env["EXPIRE_DAYS"]) == 1
    assert int(env["EXPIRE_DAYS"]) >= math.ceil(retention_hours / 24)


def test_healthchecks_use_the_script_the_image_ships(compose: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "/opt/pagelane/healthcheck.py" in dockerfile
    for name, service in pagelane_services(compose).items():
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[:3] == ["CMD", "/opt/venv/bin/python", "/opt/pagelane/healthcheck.py"]
            assert test[3] in ("api", "worker", "flower"), name


def test_settings_names_cover_the_compose_file(compose: dict[str, Any]) -> None:
    # Any PAGELANE_* anywhere in the file (not only in the anchor) must be a setting.
    found = set(re.findall(r"\bPAGELANE_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    assert found <= settings_env_names(), found - settings_env_names()
