"""The bucket lets the web console's origin PUT uploads and GET results (CORS), in compose
(MinIO's server-wide setting) and on Kubernetes (the bucket's CORS rules, applied by a Job)."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.support import COMPOSE_FILE, K8S, Built, build, interpolate, load_yaml

SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "FLOWER_BASIC_AUTH": "admin:flower-secret",
}


def test_compose_minio_allows_exactly_the_console_origin() -> None:
    raw = load_yaml(COMPOSE_FILE)
    for env, expected in (
        ({}, "http://localhost:8080"),
        ({"PAGELANE_PUBLIC_URL": "https://docs.example.org"}, "https://docs.example.org"),
    ):
        compose: Any = interpolate(raw, {**SECRETS, **env})
        minio = compose["services"]["minio"]["environment"]
        api = compose["services"]["api"]["environment"]
        assert minio["MINIO_API_CORS_ALLOW_ORIGIN"] == expected
        # The console is served by the API at its public URL: the same origin.
        assert api["PAGELANE_PUBLIC_URL"] == expected


def cors_rules(built: Built) -> list[dict[str, Any]]:
    config = built.find("ConfigMap", "pagelane-s3-cors")
    assert config is not None
    return json.loads(config["data"]["cors.json"])["CORSRules"]


def test_k8s_bucket_cors_names_the_public_url() -> None:
    overlay = build(K8S / "overlays" / "example")
    settings = overlay.find("ConfigMap", "pagelane-config")
    assert settings is not None
    (rule,) = cors_rules(overlay)
    assert rule["AllowedOrigins"] == [settings["data"]["PAGELANE_PUBLIC_URL"]]
    assert set(rule["AllowedMethods"]) == {"PUT", "GET"}
    assert [h.lower() for h in rule["AllowedHeaders"]] == ["content-type"]
    assert "*" not in json.dumps(rule)


def test_k8s_job_applies_the_rules_with_pagelane_s3_settings() -> None:
    overlay = build(K8S / "overlays" / "example")
    job = overlay.find("Job", "pagelane-s3-cors")
    assert job is not None
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    script = container["args"][0]
    assert "put-bucket-cors" in script and "$PAGELANE_S3_BUCKET" in script
    assert "file:///etc/pagelane-s3-cors/cors.json" in script
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"pagelane-config", "pagelane-secrets"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cors"]["configMap"]["name"] == "pagelane-s3-cors"
    assert container["image"].split(":")[1], "pin the image"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
