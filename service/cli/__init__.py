"""The server side of the `pagelane` command: run each role, manage keys, or everything at once
with `up`. One module per job: ``admin`` (schema, keys, customers), ``roles`` (api, worker, beat,
flower), ``supervisor`` (up).

`python -m service.cli ...` runs these commands alone (how `up` starts its roles). The `pagelane`
command is the SDK's (``pagelane.cli:main``); it plugs these in through the ``pagelane.commands``
entry point (:func:`register`), which is all that links the two: the SDK imports nothing of ours.
Importing this package loads only click and the standard library, so a plain `pip install
pagelane` lists the server commands and each says which extra to install.
"""

from __future__ import annotations

import copy
import functools
import importlib.util

import click

from service.cli.admin import customers, db, keys
from service.cli.roles import api, beat, flower, worker
from service.cli.supervisor import up

COMMANDS: tuple[click.Command, ...] = (db, keys, customers, api, worker, beat, flower, up)
# What the server commands cannot run without; a plain `pip install pagelane` (the SDK) has none.
SERVER_MODULES = ("flask", "celery", "sqlalchemy")


@click.group()
def main() -> None:
    """Pagelane: a self-hosted async batch lane for document extraction."""


for _command in COMMANDS:
    main.add_command(_command)


def register(group: click.Group) -> None:
    """Add the server's commands to ``group``, each checking first that the server extra is
    installed (the ``pagelane.commands`` entry point in pyproject.toml)."""
    for command in COMMANDS:
        group.add_command(_checking_server_extra(command))


def require_server_extra() -> None:
    """A ClickException naming the extra to install when the server's packages are missing."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"this command runs the Pagelane server, which is not installed here (no "
            f"{', '.join(missing)}): pip install 'pagelane[server]'"
        )


def _checking_server_extra(command: click.Command) -> click.Command:
    """A copy of ``command`` whose callback checks for the server extra first (for a group, its
    callback runs before any subcommand's)."""
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
