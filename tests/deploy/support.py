"""Helpers for the deployment-file tests: strict YAML, the settings' env names, the `pagelane`
command tree, compose interpolation, a Dockerfile reader and a small kustomize resolver.

Everything here reads files; nothing touches the network or a container engine.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from service.cli import main as pagelane_cli
from service.settings import Settings
from tasks.app import celery_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The metric names the code exports (issue 6); alert rules and dashboards may use only these,
# plus Prometheus' own `up`.
METRICS = {
    "pagelane_http_requests_total": "counter",
    "pagelane_http_request_duration_seconds": "histogram",
    "pagelane_items_finished_total": "counter",
    "pagelane_pages_total": "counter",
    "pagelane_extraction_seconds": "histogram",
    "pagelane_queue_wait_seconds": "histogram",
    "pagelane_customer_running_items": "gauge",
    "pagelane_customer_concurrency_cap": "gauge",
    "pagelane_oldest_pending_item_age_seconds": "gauge",
    "pagelane_sweep_runs_total": "counter",
    "pagelane_sweep_last_success_timestamp_seconds": "gauge",
    "pagelane_sweep_items_total": "counter",
}


def allowed_series_names() -> set[str]:
    """Series names a query may select: gauges and counters as is, histograms' three series."""
    names = {"up"}
    for name, kind in METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def routed_queues() -> set[str]:
    """Every Celery queue the app sends to: the default queue, the task routes' queues and the
    queues beat's entries name (tasks/app.py). Each needs a worker that consumes it."""
    # The defaults, unvalidated: routing does not depend on the environment's settings.
    config = celery_config(Settings.model_construct(redis_url="redis://localhost:6379/0"))
    queues = {config["task_default_queue"]}
    queues |= {route["queue"] for route in config["task_routes"].values()}
    for entry in config["beat_schedule"].values():
        if "queue" in entry.get("options", {}):
            queues.add(entry["options"]["queue"])
    return queues


def worker_queues(args: list[str]) -> set[str]:
    """The queues `pagelane worker ARGS` consumes (the command's own default when not given)."""
    role, params = parse_pagelane_args(args)
    assert role == "worker", args
    return set(params["queues"].split(","))


# --- strict YAML --------------------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges are overridable by design
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=StrictLoader)


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=StrictLoader) if doc]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


# --- settings and the command line ---------------------------------------------------------------


def settings_env_names() -> set[str]:
    """PAGELANE_* names the settings object reads, derived from its fields."""
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "PAGELANE_", f"settings env prefix changed to {prefix!r}"
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def unknown_settings(names: set[str], known: set[str] | None = None) -> set[str]:
    known = settings_env_names() if known is None else known
    return {n for n in names if n.startswith("PAGELANE_") and n not in known}


def command_paths(group: click.Group = pagelane_cli, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every runnable `pagelane` command, as space-joined paths ("api", "db upgrade", ...)."""
    paths: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths |= command_paths(command, (*prefix, name))
        else:
            paths.add(" ".join((*prefix, name)))
    return paths


def parse_pagelane_args(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `pagelane ARGS` with the real click commands, without running anything.

    Returns the command path and its parsed parameters; raises ValueError for an unknown
    command, an unknown option or a bad option value.
    """
    command: click.Command = pagelane_cli
    rest = list(args)
    path: list[str] = []
    while isinstance(command, click.Group):
        if not rest:
            raise ValueError(f"`pagelane {' '.join(path)}` needs a subcommand")
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            raise ValueError(f"`pagelane {' '.join([*path, name])}` is not a command")
        path.append(name)
        command = sub
    try:
        ctx = command.make_context(" ".join(["pagelane", *path]), rest)
    except click.ClickException as exc:
        raise ValueError(f"`pagelane {' '.join(args)}`: {exc.format_message()}") from exc
    return " ".join(path), dict(ctx.params)


# --- compose ------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg")
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if not current:
                raise KeyError(f"${{{name}}} is required: {arg}")
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def compose_variables(text: str) -> dict[str, str]:
    """Every ${VAR...} the compose file interpolates, with its operator."""
    return {
        m.group("name"): (m.group("op") or "")
        for m in _INTERPOLATION.finditer(text)
        if m.group(0) != "$$"
    }


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blanks skipped, `# KEY=...` ignored)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def commented_env_keys(path: Path) -> set[str]:
    """Keys that an env file documents as commented-out `# KEY=value` lines."""
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        try:
            parsed = json.loads(self.value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def read_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; comments dropped, continuations joined."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments, also inside continued instructions, are removed by Docker
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, value = text.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), start)
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key] = default
        else:
            assert stages, f"line {start}: {keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert not pending, "Dockerfile ends inside a continued instruction"
    return args, stages


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """ENV key=value pairs (the modern form; `ENV key value` is not used here)."""
    pairs: dict[str, str] = {}
    for token in shlex.split(instruction.value):
        key, sep, value = token.partition("=")
        assert sep, f"line {instruction.line}: use ENV key=value"
        pairs[key] = value
    return pairs


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Whether a context path survives a .dockerignore.

    Docker's rule (moby/patternmatcher MatchesOrParentMatches): a pattern applies to a path when
    it matches the path or one of its parent directories; the last pattern that applies wins,
    and `!` re-includes.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = (pattern[1:] if negate else pattern).strip("/")
        if any(_ignore_match(body, prefix) for prefix in prefixes):
            excluded = not negate
    return not excluded


def _ignore_match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        segments = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(segments[i:]), tail) for i in range(len(segments)))
    return fnmatch.fnmatchcase(path, pattern)


def read_dockerignore(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


# --- kustomize ----------------------------------------------------------------------------------

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonAnnotations",
    "resources",
    "components",
    "patches",
    "images",
    "replicas",
    "secretGenerator",
    "configMapGenerator",
    "generatorOptions",
}


@dataclass
class Built:
    """What a kustomization renders to, and the files it read."""

    resources: list[dict[str, Any]]
    files: set[Path]
    components: list[Path]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        for resource in self.resources:
            if resource.get("kind") == kind and resource["metadata"].get("name") == name:
                return resource
        return None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r.get("kind") == kind]


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no kustomization.yaml")


def generator_source(path: Path) -> Path:
    """A generator's env file, or its committed `.example` when the real one is git-ignored."""
    if path.is_file():
        return path
    example = path.with_name(path.name + ".example")
    if example.is_file():
        return example
    raise FileNotFoundError(f"{path} (nor {example.name}) does not exist")


def build(directory: Path) -> Built:
    """Render a kustomization far enough to check it: resources, components, generators,
    patches, images, namespace and labels. Not a full kustomize; enough for these files.
    """
    kfile = kustomization_file(directory)
    spec = load_yaml(kfile)
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, f"{kfile}: fields this repo does not use/know: {sorted(unknown)}"
    built = Built([], {kfile}, [])

    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            inner = build(target)
            built.resources += inner.resources
            built.files |= inner.files
            built.components += inner.components
        elif target.is_file():
            built.files.add(target)
            built.resources += [_tag(doc, target) for doc in load_yaml_all(target)]
        else:
            raise FileNotFoundError(f"{kfile}: resource {entry} does not exist")

    for entry in spec.get("components", []):
        target = (directory / entry).resolve()
        component = kustomization_file(target)
        component_spec = load_yaml(component)
        assert component_spec.get("kind") == "Component", f"{component} is not a Component"
        inner = build(target)
        built.resources += inner.resources
        built.files |= inner.files
        built.components.append(target)

    options = spec.get("generatorOptions", {})
    for kind, key in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for generator in spec.get(key, []):
            data: dict[str, str] = {}
            for env in generator.get("envs", []):
                source = generator_source(directory / env)
                built.files.add(source)
                data.update(env_file_values(source))
            for literal in generator.get("literals", []):
                name, _, value = literal.partition("=")
                data[name] = value
            for file_entry in generator.get("files", []):
                name, _, rel = file_entry.rpartition("=")
                source = directory / (rel or file_entry)
                assert source.is_file(), f"{kfile}: {source} does not exist"
                data[name or source.name] = source.read_text()
            name = generator["name"]
            if not options.get("disableNameSuffixHash"):
                name += "-<hash>"
            generated: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": name},
                "data" if kind == "ConfigMap" else "stringData": data,
            }
            built.resources.append(_tag(generated, kfile))

    for patch in spec.get("patches", []):
        _apply_patch(built, directory, kfile, patch)

    for image in spec.get("images", []):
        for container in _containers(built.resources):
            if container.get("image", "").split(":")[0] == image["name"]:
                repo = image.get("newName", image["name"])
                container["image"] = f"{repo}:{image['newTag']}" if "newTag" in image else repo

    if "namespace" in spec:
        for resource in built.resources:
            if resource.get("kind") != "Namespace":
                resource["metadata"]["namespace"] = spec["namespace"]

    for label_set in spec.get("labels", []):
        for resource in built.resources:
            resource["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    return built


def _tag(resource: dict[str, Any], source: Path) -> dict[str, Any]:
    resource = copy.deepcopy(resource)
    resource.setdefault("metadata", {})
    resource["__source__"] = str(source)
    return resource


def _containers(resources: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        pod = pod_spec(resource)
        if pod:
            yield from pod.get("initContainers", [])
            yield from pod.get("containers", [])


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    kind = resource.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return resource["spec"]["template"]["spec"]
    if kind == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return resource["spec"]
    return None


def _apply_patch(built: Built, directory: Path, kfile: Path, patch: dict[str, Any]) -> None:
    if "path" in patch:
        source = directory / patch["path"]
        assert source.is_file(), f"{kfile}: patch {patch['path']} does not exist"
        built.files.add(source)
        body_text = source.read_text()
    else:
        body_text = patch["patch"]
    body = yaml.load(body_text, Loader=StrictLoader)
    target = patch.get("target")
    if isinstance(body, list):  # JSON 6902
        assert target, f"{kfile}: a JSON patch needs a target"
        matches = [
            r
            for r in built.resources
            if r.get("kind") == target["kind"] and r["metadata"].get("name") == target["name"]
        ]
        assert matches, f"{kfile}: patch target {target} matches no resource"
        for resource in matches:
            if "group" in target:
                assert resource["apiVersion"].startswith(target["group"] + "/"), target
            for op in body:
                json_patch(resource, op)
        return
    kind, name = body["kind"], body["metadata"]["name"]
    found = built.find(kind, name)
    assert found is not None, f"{kfile}: patch {kind}/{name} matches no resource"
    strategic_merge(found, body)


def json_patch(document: Any, op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if op["op"] in ("replace", "remove"):
        # Both need the path to exist: a typo must fail here, not silently add a field.
        if isinstance(parent, list):
            assert int(last) < len(parent), f"{op['path']} does not exist"
        else:
            assert last in parent, f"{op['path']} does not exist"
    if op["op"] == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif op["op"] in ("replace", "add"):
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            else:
                parent[index] = op["value"]
        else:
            parent[last] = op["value"]
    else:
        raise AssertionError(f"unsupported JSON patch op {op['op']}")


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Deep merge; lists of named objects merge by name (containers, env, ports, volumes)."""
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            strategic_merge(current, value)
        elif (
            isinstance(value, list)
            and isinstance(current, list)
            and all(isinstance(v, dict) and "name" in v for v in value + current)
        ):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    strategic_merge(by_name[item["name"]], item)
                else:
                    current.append(item)
        else:
            target[key] = copy.deepcopy(value)
