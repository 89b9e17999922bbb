"""The server side of the `pagelane` command: run each role, manage keys, or everything at once
with `up`. One module per job: ``admin`` (schema, keys, customers), ``roles`` (api, worker, beat,
flower), ``supervisor`` (up).

`python -m service.cli ...` runs these commands alone (how `up` starts its roles); the
`pagelane` command is the SDK's, which plugs them in through the ``pagelane.commands`` entry
point (:func:`register`).
"""

from __future__ import annotations

import click

from service.cli.admin import customers, db, keys
from service.cli.roles import api, beat, flower, worker
from service.cli.supervisor import up

COMMANDS: tuple[click.Command, ...] = (db, keys, customers, api, worker, beat, flower, up)


@click.group()
def main() -> None:
    """Pagelane: a self-hosted async batch lane for document extraction."""


def register(group: click.Group) -> None:
    """Add the server commands to ``group`` (the SDK's `pagelane` command)."""
    for command in COMMANDS:
        group.add_command(command)


register(main)
