"""Alembic environment: runs with the connection handed over by service.migrate."""

from __future__ import annotations

from alembic import context

from service.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through service.migrate
    raise RuntimeError("run migrations with `pagelane db upgrade`")

if connection.dialect.name == "postgresql":
    # Never wait forever behind a long transaction of a running fleet: fail and retry instead.
    connection.exec_driver_sql("SET lock_timeout = '10s'")
    connection.exec_driver_sql("SET statement_timeout = '10min'")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables, Postgres ignores it.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
