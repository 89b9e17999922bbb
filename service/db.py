"""Engine and session factories (no module-level engine: each process builds its own).

Sessions are short: the API opens one per request, a worker one per state change, never one
around extraction (ARCHITECTURE decision 5).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings


def normalise_database_url(url: str) -> str:
    # psycopg 3 is the driver we ship; accept the plain URLs people paste from elsewhere.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def make_engine(settings: Settings) -> Engine:
    url = normalise_database_url(settings.resolved_database_url)
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN past the first SELECT, which breaks
        # read-then-write locking; we issue BEGIN IMMEDIATE ourselves (SQLAlchemy's recipe).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    return create_engine(
        url,
        # A worker process needs one or two connections; the API one per concurrent request.
        pool_size=5,
        max_overflow=10,
        pool_pre_ping=True,
        pool_recycle=1800,
        # A stuck lock must surface as an error, not a hung request or task.
        connect_args={"options": "-c lock_timeout=10000 -c statement_timeout=60000"},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (polls) proceed while a worker writes; isolation_level=None hands
    # transaction control to SQLAlchemy's "begin" hook above.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short unit of work: commit on success, roll back on any exception."""
    with session_factory() as session, session.begin():
        yield session


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
