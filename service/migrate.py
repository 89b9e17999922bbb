"""Schema migrations: `pagelane db upgrade` applies them; services refuse to run behind."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaBehindError(Exception):
    """The database is older than this code; run `pagelane db upgrade` first."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema_current(engine: Engine) -> None:
    """Refuse a database older than this code. One *newer* than this code (a revision we do
    not know) is accepted: migrations are applied before a rollout, so old pods restarting
    mid-rollout must keep working (our migrations are additive)."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    known = {
        script.revision
        for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()
    }
    if current is None or current in known:
        raise SchemaBehindError(
            f"database schema is at {current or 'nothing'} but this code needs {head}: "
            "run `pagelane db upgrade`"
        )
