"""Every deployment YAML parses strictly, and the checkers the other tests rely on bite."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    StrictLoader,
    command_paths,
    load_yaml_all,
    parse_pagelane_args,
    settings_env_names,
    unknown_settings,
    yaml_files,
)


def test_every_yaml_file_parses_without_duplicate_keys() -> None:
    files = yaml_files()
    # compose, k8s base/components/overlay, alert rules and their tests, prometheus.yml
    assert len(files) >= 20, [str(f) for f in files]
    for path in files:
        docs = load_yaml_all(path)
        assert docs, f"{path.relative_to(DEPLOY)} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.relative_to(DEPLOY)}: a document is not a mapping"


def test_strict_loader_rejects_duplicate_keys_but_allows_merge_overrides() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a'"):
        yaml.load("a: 1\nb: 2\na: 3\n", Loader=StrictLoader)
    merged = yaml.load("x: &x {a: 1, b: 2}\ny:\n  <<: *x\n  a: 3\n", Loader=StrictLoader)
    assert merged["y"] == {"a": 3, "b": 2}


def test_settings_names_come_from_the_settings_fields() -> None:
    names = settings_env_names()
    assert {"PAGELANE_DATABASE_URL", "PAGELANE_REDIS_URL", "PAGELANE_S3_BUCKET"} <= names


def test_a_renamed_setting_is_reported() -> None:
    # What the env-var checks do when a field is renamed: the old name becomes unknown.
    known = settings_env_names() - {"PAGELANE_REDIS_URL"} | {"PAGELANE_BROKER_URL"}
    assert unknown_settings({"PAGELANE_REDIS_URL", "OMP_THREAD_LIMIT"}, known) == {
        "PAGELANE_REDIS_URL"
    }


def test_command_paths_come_from_the_cli() -> None:
    paths = command_paths()
    assert {"api", "worker", "beat", "flower", "db upgrade", "keys create", "up"} <= paths


@pytest.mark.parametrize(
    "args",
    [
        ["apii"],
        ["db"],
        ["db", "downgrade"],
        ["api", "--port", "eighty"],
        ["worker", "--no-such-option"],
    ],
)
def test_bad_command_lines_are_rejected(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_pagelane_args(args)


def test_good_command_lines_parse() -> None:
    path, params = parse_pagelane_args(["api", "--host", "0.0.0.0", "--port", "8080"])
    assert path == "api" and params["port"] == 8080
    assert parse_pagelane_args(["db", "upgrade"])[0] == "db upgrade"
