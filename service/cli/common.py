"""What every server command shares: settings read with a readable error."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

# Imports of the service stack (SQLAlchemy, pydantic-settings, Celery) happen inside the
# commands that need them: `pagelane --help` and the client commands share this entry point
# and should start in a fraction of a second.
if TYPE_CHECKING:
    from service.settings import Settings


def load(**overrides: object) -> Settings:
    """The settings from the environment, or a one-line error that names the variable."""
    from service.settings import SettingsError, load_settings

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def load_for_db() -> Settings:
    # Migrations and key management need only the database: do not insist on a secret or Redis.
    env_secret = os.environ.get("PAGELANE_SECRET_KEY") or "unused-by-this-command"
    return load(secret_key=env_secret)
