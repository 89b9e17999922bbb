"""deploy/k8s: schema-valid manifests, an overlay that resolves, and references that hold."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from service.settings import Settings, load_settings
from tasks.app import QUEUE_ITEMS, QUEUE_QUOTES, QUEUE_SWEEPS, QUEUE_WEBHOOKS
from tasks.webhooks import DELIVER_BUDGET_SECONDS
from tests.deploy.support import (
    K8S,
    KUSTOMIZATION_NAMES,
    Built,
    build,
    load_yaml,
    load_yaml_all,
    parse_pagelane_args,
    pod_spec,
    routed_queues,
    unknown_settings,
    worker_queues,
)

OVERLAY = K8S / "overlays" / "example"
COMPONENTS = K8S / "components"
SCHEMAS = Path(__file__).with_name("schemas")
# The oldest and newest Kubernetes minors kubernetes-validate bundles that we support.
K8S_VERSIONS = ("1.29", "1.37")
IMAGE = "registry.example.com/pagelane"
ROLES = {"api", "worker", "beat", "flower", "db upgrade"}


@pytest.fixture(scope="module")
def overlay() -> Built:
    return build(OVERLAY)


def kustomization_dirs() -> list[Path]:
    return sorted({p.parent for name in KUSTOMIZATION_NAMES for p in K8S.rglob(name)})


def workloads(built: Built) -> list[dict[str, Any]]:
    return [r for r in built.resources if pod_spec(r) is not None]


def pagelane_containers(built: Built) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = []
    for resource in workloads(built):
        spec = pod_spec(resource)
        assert spec is not None
        for container in spec["containers"]:
            if container["image"].split(":")[0] in (IMAGE, "pagelane"):
                found.append((resource, container))
    return found


def role_of(container: dict[str, Any]) -> str:
    return parse_pagelane_args(container["args"])[0]


def deployment_for_role(built: Built, role: str, queue: str | None = None) -> dict[str, Any]:
    """The one workload that runs `pagelane ROLE` (for workers: the one consuming QUEUE)."""
    matches = [
        r
        for r, c in pagelane_containers(built)
        if role_of(c) == role and (queue is None or queue in worker_queues(c["args"]))
    ]
    assert len(matches) == 1, f"{len(matches)} workloads run `pagelane {role}` ({queue})"
    return matches[0]


def extraction_worker(built: Built) -> dict[str, Any]:
    return deployment_for_role(built, "worker", QUEUE_ITEMS)


def webhooks_worker(built: Built) -> dict[str, Any]:
    return deployment_for_role(built, "worker", QUEUE_WEBHOOKS)


def clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "__source__"}


# --- schemas ------------------------------------------------------------------------------------


def validate_resource(resource: dict[str, Any]) -> None:
    resource = clean(resource)
    api_version = resource["apiVersion"]
    if api_version.startswith("keda.sh/"):
        schema_file = SCHEMAS / f"keda.sh_{api_version.split('/')[1]}_{resource['kind']}.json"
        assert schema_file.is_file(), f"no bundled schema for {api_version} {resource['kind']}"
        jsonschema.Draft202012Validator(json.loads(schema_file.read_text())).validate(resource)
        behavior = (
            resource["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        ).get("behavior")
        if behavior:
            # KEDA hands this to the HPA it creates: check it against Kubernetes' own schema.
            validate_resource(
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "keda-behavior"},
                    "spec": {
                        "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                        "maxReplicas": 2,
                        "behavior": behavior,
                    },
                }
            )
        return
    for version in K8S_VERSIONS:
        # strict: unknown fields are errors, as `kubectl apply --validate=strict` would say.
        kubernetes_validate.validate(resource, version, strict=True)


def manifest_files() -> list[Path]:
    """Every resource manifest under deploy/k8s (not kustomizations, not patches)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in KUSTOMIZATION_NAMES or "patch" in path.stem:
            continue
        files.append(path)
    return files


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    for resource in load_yaml_all(path):
        validate_resource(resource)


def test_rendered_overlay_matches_the_kubernetes_schema(overlay: Built) -> None:
    # After patches, generators, images, namespace and labels.
    assert len(overlay.resources) >= 15
    for resource in overlay.resources:
        validate_resource(resource)


def test_schema_validation_catches_mistakes() -> None:
    deployment = clean(load_yaml(K8S / "base" / "beat-deployment.yaml"))
    deployment["spec"]["template"]["spec"]["containers"][0]["argz"] = ["beat"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_resource(deployment)
    scaled = load_yaml(COMPONENTS / "worker-keda" / "scaledobject.yaml")
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 2  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate_resource(scaled)


# --- kustomize ----------------------------------------------------------------------------------


def test_every_kustomization_resolves_to_existing_files() -> None:
    referenced: set[Path] = set()
    for directory in kustomization_dirs():
        referenced |= {p.resolve() for p in build(directory).files}
    on_disk = {p.resolve() for p in K8S.rglob("*") if p.is_file() and p.name != ".gitignore"}
    # Every file belongs to some kustomization: nothing is silently left out of a deployment.
    assert on_disk - referenced == set(), sorted(str(p) for p in on_disk - referenced)


def test_overlay_picks_exactly_one_worker_autoscaler(overlay: Built) -> None:
    picked = {p.name for p in overlay.components}
    assert len(picked & {"worker-keda", "worker-hpa"}) == 1, picked
    scalers = [
        r
        for r in overlay.resources
        if r["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        and r["spec"]["scaleTargetRef"]["name"] == "pagelane-worker"
    ]
    assert len(scalers) == 1, [r["kind"] for r in scalers]
    for alternative in ("worker-keda", "worker-hpa"):
        inner = build(COMPONENTS / alternative)
        assert any(
            r["spec"]["scaleTargetRef"]["name"] == "pagelane-worker" for r in inner.resources
        )


def test_overlay_sets_namespace_and_image(overlay: Built) -> None:
    namespaces = overlay.of_kind("Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == ["pagelane"]
    for resource in overlay.resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "pagelane", resource["metadata"]["name"]
    images = {c["image"] for _, c in pagelane_containers(overlay)}
    assert len(images) == 1 and next(iter(images)).startswith(IMAGE + ":"), images


def test_secret_files_are_examples_and_git_ignored() -> None:
    ignore = (K8S.parent / ".gitignore").read_text().split()
    spec = load_yaml(OVERLAY / "kustomization.yaml")
    for generator in spec["secretGenerator"]:
        for env in generator["envs"]:
            assert (OVERLAY / f"{env}.example").is_file()
            assert f"k8s/overlays/*/{env}" in ignore, f"{env} is not git-ignored"


# --- settings and commands ----------------------------------------------------------------------


def test_every_role_runs_a_real_pagelane_command(overlay: Built) -> None:
    roles = set()
    for resource, container in pagelane_containers(overlay):
        name = resource["metadata"]["name"]
        assert "command" not in container, f"{name}: keep the image's `pagelane` entrypoint"
        roles.add(role_of(container))
    assert roles == ROLES


def test_env_names_are_settings_and_the_values_load(
    overlay: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: set[str] = set()
    for resource in overlay.of_kind("ConfigMap") + overlay.of_kind("Secret"):
        names |= set(resource.get("data", {})) | set(resource.get("stringData", {}))
    for _, container in pagelane_containers(overlay):
        names |= {e["name"] for e in container.get("env", [])}
    pagelane_names = {n for n in names if n.startswith("PAGELANE_")}
    assert len(pagelane_names) >= 10, pagelane_names
    assert not unknown_settings(names), unknown_settings(names)

    # What the API pod sees (ConfigMap + Secret, example values) loads as settings.
    api = deployment_for_role(overlay, "api")
    env = container_environment(overlay, pod_spec(api)["containers"][0])  # type: ignore[index]
    for key in [k for k in os.environ if k.startswith("PAGELANE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("PAGELANE_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.blob_store == "s3" and settings.s3_bucket == "pagelane-prod"
    assert settings.database_url.startswith("postgresql://")
    assert settings.redis_url.startswith("redis://")


def container_environment(built: Built, container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config = built.find("ConfigMap", source["configMapRef"]["name"])
            assert config is not None
            env.update(config["data"])
        if "secretRef" in source:
            secret = built.find("Secret", source["secretRef"]["name"])
            assert secret is not None
            env.update(secret["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def test_references_resolve(overlay: Built) -> None:
    for resource in workloads(overlay):
        spec = pod_spec(resource)
        assert spec is not None
        assert overlay.find("ServiceAccount", spec.get("serviceAccountName", "default"))
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        assert overlay.find(kind, source[key]["name"]), source
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = overlay.find("Secret", ref["name"])
                    assert secret and ref["key"] in secret["stringData"], ref
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in ports, f"{probe} uses unknown port {port}"
    for auth in overlay.of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            secret = overlay.find("Secret", ref["name"])
            assert secret and ref["key"] in secret["stringData"], ref
    for scaled in overlay.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if "authenticationRef" in trigger:
                assert overlay.find("TriggerAuthentication", trigger["authenticationRef"]["name"])


def pods_selected(built: Built, selector: dict[str, str]) -> list[dict[str, Any]]:
    return [
        r
        for r in workloads(built)
        if r["kind"] != "Job"
        and selector.items() <= r["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_services_pdbs_and_autoscalers_target_real_workloads(overlay: Built) -> None:
    for service in overlay.of_kind("Service"):
        selected = pods_selected(overlay, service["spec"]["selector"])
        assert len(selected) == 1, service["metadata"]["name"]
        ports = {
            p["name"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    for deployment in overlay.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for pdb in overlay.of_kind("PodDisruptionBudget"):
        assert len(pods_selected(overlay, pdb["spec"]["selector"]["matchLabels"])) == 1
    for scaler in overlay.of_kind("HorizontalPodAutoscaler") + overlay.of_kind("ScaledObject"):
        target = overlay.find("Deployment", scaler["spec"]["scaleTargetRef"]["name"])
        assert target is not None
        # A fixed replica count would fight the autoscaler on every apply.
        assert "replicas" not in target["spec"], target["metadata"]["name"]
    for ingress in overlay.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                target = overlay.find("Service", backend["name"])
                assert target is not None
                assert backend["port"]["name"] in {p["name"] for p in target["spec"]["ports"]}


# --- the roles ----------------------------------------------------------------------------------


def test_api_probes_and_drain(overlay: Built) -> None:
    api = deployment_for_role(overlay, "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    _, params = parse_pagelane_args(container["args"])
    assert params["host"] == "0.0.0.0"
    assert container["ports"][0]["containerPort"] == params["port"]
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 30 + 5, "gunicorn's 30 s graceful timeout plus the preStop sleep"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = overlay.find("HorizontalPodAutoscaler", api["metadata"]["name"])
    assert hpa is not None and hpa["spec"]["minReplicas"] >= 2
    pdb = overlay.find("PodDisruptionBudget", api["metadata"]["name"])
    assert pdb is not None and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_worker_grace_period_covers_an_item(overlay: Built) -> None:
    worker = extraction_worker(overlay)
    config = overlay.find("ConfigMap", "pagelane-config")
    assert config is not None
    limit = int(config["data"]["PAGELANE_TASK_TIME_LIMIT_SECONDS"])
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= limit + 60, f"{grace} s < task hard limit {limit} s + 60 s"


def test_worker_consumes_its_three_queues_one_child_per_core(overlay: Built) -> None:
    worker = extraction_worker(overlay)
    container = worker["spec"]["template"]["spec"]["containers"][0]
    _, params = parse_pagelane_args(container["args"])
    # Extraction, beat's sweeps and dry-run quotes; never the webhooks (their own deployment).
    assert worker_queues(container["args"]) == {QUEUE_ITEMS, QUEUE_SWEEPS, QUEUE_QUOTES}
    assert cpu_cores(container["resources"]["requests"]["cpu"]) == params["concurrency"]
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:3] == ["/opt/venv/bin/python", "/opt/pagelane/healthcheck.py", "worker"]
    # Ten minutes of failed pings before a restart: a short Redis blip restarts nothing.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 600


def test_webhooks_worker_consumes_only_webhooks(overlay: Built) -> None:
    webhooks = webhooks_worker(overlay)
    spec = webhooks["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    _, params = parse_pagelane_args(container["args"])
    assert worker_queues(container["args"]) == {QUEUE_WEBHOOKS}
    # Its own component: nothing that selects the extraction workers selects these pods.
    labels = webhooks["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "webhooks"
    worker_labels = extraction_worker(overlay)["spec"]["selector"]["matchLabels"]
    assert not worker_labels.items() <= labels.items()
    # I/O-bound: more children than the (small) CPU request.
    assert cpu_cores(container["resources"]["requests"]["cpu"]) < params["concurrency"]
    assert cpu_cores(container["resources"]["requests"]["cpu"]) <= 0.5
    assert params["hostname"] == "webhooks@%h"
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:3] == ["/opt/venv/bin/python", "/opt/pagelane/healthcheck.py", "worker"]
    env = container_environment(overlay, container)
    assert env["PAGELANE_WORKER_METRICS_PORT"] == "0"
    assert "prometheus.io/scrape" not in webhooks["spec"]["template"]["metadata"].get(
        "annotations", {}
    )
    # Warm shutdown covers a sender: its budget plus one attempt's timeout, plus a margin.
    timeout = float(
        env.get(
            "PAGELANE_WEBHOOK_TIMEOUT_SECONDS",
            Settings.model_fields["webhook_timeout_seconds"].default,
        )
    )
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= DELIVER_BUDGET_SECONDS + timeout + 10, grace
    # Its own disruption budget, which never blocks a drain.
    pdb = overlay.find("PodDisruptionBudget", webhooks["metadata"]["name"])
    assert pdb is not None
    assert pdb["spec"]["selector"]["matchLabels"] == webhooks["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] >= 1


def test_every_routed_queue_has_a_consumer(overlay: Built) -> None:
    routed = routed_queues()
    assert routed == {QUEUE_ITEMS, QUEUE_SWEEPS, QUEUE_QUOTES, QUEUE_WEBHOOKS}
    consumed: set[str] = set()
    for resource, container in pagelane_containers(overlay):
        if role_of(container) == "worker":
            queues = worker_queues(container["args"])
            consumed |= queues
            name = resource["metadata"]["name"]
            # Webhook deliveries never share a worker with extraction.
            assert not (QUEUE_WEBHOOKS in queues and QUEUE_ITEMS in queues), name
    assert not routed - consumed, f"no worker consumes {routed - consumed}"


@pytest.mark.parametrize("component", ["worker-keda", "worker-hpa"])
def test_the_items_autoscaler_scales_only_the_extraction_worker(component: str) -> None:
    built = build(OVERLAY)
    # Swap the overlay's autoscaler for this one, so both alternatives are checked.
    built.resources = [
        r
        for r in built.resources
        if r["kind"] not in ("HorizontalPodAutoscaler", "ScaledObject")
        or r["spec"]["scaleTargetRef"]["name"] != "pagelane-worker"
    ] + [
        r
        for r in build(COMPONENTS / component).resources
        if r["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ]
    webhooks = webhooks_worker(built)
    scalers = [
        r
        for r in built.of_kind("HorizontalPodAutoscaler") + built.of_kind("ScaledObject")
        if r["spec"]["scaleTargetRef"]["name"] != "pagelane-api"
    ]
    assert scalers, component
    for scaler in scalers:
        assert scaler["spec"]["scaleTargetRef"]["name"] != webhooks["metadata"]["name"]
        target = built.find("Deployment", scaler["spec"]["scaleTargetRef"]["name"])
        assert target is not None
        (container,) = target["spec"]["template"]["spec"]["containers"]
        assert QUEUE_ITEMS in worker_queues(container["args"])
        assert QUEUE_WEBHOOKS not in worker_queues(container["args"])
    # Not autoscaled: a fixed replica count, at least one.
    assert webhooks["spec"]["replicas"] >= 1


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_keda_scales_on_the_celery_items_list(overlay: Built) -> None:
    (scaled,) = overlay.of_kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == QUEUE_ITEMS == "items"
    # Never to zero: the sweeps run on workers.
    assert scaled["spec"]["minReplicaCount"] >= 1
    # The address and database are those of PAGELANE_REDIS_URL.
    secret = overlay.find("Secret", "pagelane-secrets")
    assert secret is not None
    url = urlsplit(secret["stringData"]["PAGELANE_REDIS_URL"])
    assert metadata["address"] == f"{url.hostname}:{url.port}"
    assert metadata["databaseIndex"] == (url.path.strip("/") or "0")
    hpa_alternative = load_yaml(COMPONENTS / "worker-hpa" / "hpa.yaml")
    assert hpa_alternative["spec"]["minReplicas"] >= 1


def test_exactly_one_beat(overlay: Built) -> None:
    beat = deployment_for_role(overlay, "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    name = beat["metadata"]["name"]
    for scaler in overlay.of_kind("HorizontalPodAutoscaler") + overlay.of_kind("ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] != name


def test_flower_uses_basic_auth_from_a_secret(overlay: Built) -> None:
    flower = deployment_for_role(overlay, "flower")
    container = flower["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "FLOWER_BASIC_AUTH"
    assert "--basic-auth" not in container["args"], "credentials would show in the pod spec"
    assert overlay.find("Service", flower["metadata"]["name"])


def test_migration_job(overlay: Built) -> None:
    job = deployment_for_role(overlay, "db upgrade")
    assert job["kind"] == "Job"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_resources_and_security(overlay: Built) -> None:
    dockerfile = (K8S.parent / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", dockerfile, flags=re.M)[-1])
    for resource, container in pagelane_containers(overlay):
        name = f"{resource['metadata']['name']}/{container['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), name
        spec = pod_spec(resource)
        assert spec is not None
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid, name
        assert spec["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"


def test_singletons_have_no_disruption_budget(overlay: Built) -> None:
    guarded = {
        json.dumps(p["spec"]["selector"]["matchLabels"], sort_keys=True)
        for p in overlay.of_kind("PodDisruptionBudget")
    }
    for role in ("beat", "flower"):
        labels = deployment_for_role(overlay, role)["spec"]["selector"]["matchLabels"]
        assert json.dumps(labels, sort_keys=True) not in guarded, f"{role}: it would block drains"
    for deployment in (
        deployment_for_role(overlay, "api"),
        extraction_worker(overlay),
        webhooks_worker(overlay),
    ):
        labels = deployment["spec"]["selector"]["matchLabels"]
        name = deployment["metadata"]["name"]
        assert json.dumps(labels, sort_keys=True) in guarded, f"{name} needs a budget"
