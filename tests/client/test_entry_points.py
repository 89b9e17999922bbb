"""How `pagelane` gets the server's commands: `pagelane.cli:main` calls every entry point of
the `pagelane.commands` group with its click group; `service.cli.register` is the server's, and
its commands stop at once, naming the extra, when the server's packages are missing."""

from __future__ import annotations

import importlib.util
from importlib.metadata import EntryPoint
from typing import Any

import click
import pytest
from click.testing import CliRunner

import pagelane.cli
import service.cli

SERVER_COMMANDS = {"db", "keys", "customers", "api", "worker", "beat", "flower", "up"}
CLIENT_COMMANDS = {"run", "submit", "status", "wait", "download", "cancel", "retry"}


def fresh_group() -> click.Group:
    group = click.Group("pagelane")
    for name, command in pagelane.cli.cli.commands.items():
        group.add_command(command, name)
    return group


def test_the_server_entry_point_adds_the_server_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    server = EntryPoint("server", "service.cli:register", pagelane.cli.COMMANDS_ENTRY_POINT_GROUP)
    monkeypatch.setattr(pagelane.cli, "entry_points", lambda group: [server])
    group = fresh_group()
    pagelane.cli.load_plugin_commands(group)
    assert set(group.commands) == SERVER_COMMANDS | CLIENT_COMMANDS
    # The commands of `python -m service.cli` are left as they are.
    assert set(service.cli.main.commands) == SERVER_COMMANDS


def test_an_entry_point_that_does_not_load_leaves_the_client_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = EntryPoint("broken", "no_such_module:register", "pagelane.commands")
    monkeypatch.setattr(pagelane.cli, "entry_points", lambda group: [broken])
    group = fresh_group()
    pagelane.cli.load_plugin_commands(group)
    assert set(group.commands) == CLIENT_COMMANDS
    assert "'broken' commands (no_such_module:register) did not load" in capsys.readouterr().err


def test_server_commands_name_the_extra_when_its_packages_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = fresh_group()
    service.cli.register(group)
    real_find_spec = importlib.util.find_spec

    def without_celery(name: str, *args: Any) -> Any:
        return None if name == "celery" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_celery)
    for argv in (["up"], ["worker"], ["db", "upgrade"], ["keys", "create", "--customer", "x"]):
        result = CliRunner().invoke(group, argv)
        assert result.exit_code == 1, (argv, result.output)
        assert "no celery" in result.output
        assert "pip install 'pagelane[server]'" in result.output
    # Help needs nothing.
    assert CliRunner().invoke(group, ["up", "--help"]).exit_code == 0
