"""Engine and session factories (no module-level engine: each process builds its own).

Sessions are short: the API opens one per request, a worker one per state change, never one
around extraction (ARCHITECTURE decision 5).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
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
        database = engine.url.database
        on_disk = bool(database) and database != ":memory:"
        SqliteWriterLock(f"{database}.writer-lock" if on_disk else None).install(engine)
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


# The execution option that `transaction` sets on its connection: a unit of work that may write.
WRITES = "pagelane_writes"


class SqliteWriterLock:
    """Writers on one SQLite file take turns through an OS file lock; readers take none.

    pysqlite defers BEGIN past the first SELECT, which breaks read-then-write locking, so a
    transaction that may write (`transaction` marks its connection) starts with
    ``BEGIN IMMEDIATE``. Two processes asking for the write lock at once would then meet
    SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between tries: measured, the worker
    children of one machine spent 7 ms an item asleep there while the lock was free again after
    0.3 ms. A blocking ``flock`` taken before BEGIN wakes the next writer the moment the last
    one commits, so SQLite never sees two writers of ours at once.

    Read-only sessions (every session not opened by `transaction`; nothing else commits) begin
    a plain deferred transaction: a WAL snapshot that neither waits for writers nor holds them
    up, so polls and downloads do not queue behind the workers.

    ``flock`` belongs to an open file, so each write transaction opens the lock file afresh:
    two threads of one process exclude each other too. A thread that begins a second write
    transaction while holding one would wait for itself forever; that raises instead.
    An in-memory database (``path`` None) lives in one process: no file lock, same BEGINs.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._thread = threading.local()

    def install(self, engine: Engine) -> None:
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)

    def _begin(self, conn: Connection) -> None:
        if not conn.get_execution_options().get(WRITES):
            conn.exec_driver_sql("BEGIN")
            return
        if self._path is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        if getattr(self._thread, "writing", False):
            raise RuntimeError("a second SQLite write transaction in a thread that holds one")
        conn.info[_LOCK_FD] = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread.writing = True
        try:
            fcntl.flock(conn.info[_LOCK_FD], fcntl.LOCK_EX)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._release(conn)
            raise

    def _commit(self, conn: Connection) -> None:
        # Committed here, before SQLAlchemy's own commit (a no-op once no transaction is
        # open), so that the lock is released after the commit, not before it.
        try:
            conn.exec_driver_sql("COMMIT")
        finally:
            self._release(conn)

    def _rollback(self, conn: Connection) -> None:
        try:
            dbapi_connection = conn.connection.dbapi_connection
            if dbapi_connection is not None and dbapi_connection.in_transaction:
                conn.exec_driver_sql("ROLLBACK")
        finally:
            self._release(conn)

    def _release(self, conn: Connection) -> None:
        fd = conn.info.pop(_LOCK_FD, None)
        if fd is not None:
            self._thread.writing = False
            os.close(fd)  # closing the last descriptor of the open file drops its flock


_LOCK_FD = "pagelane_writer_lock_fd"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short unit of work: commit on success, roll back on any exception.

    The only way to write: a session from ``session_factory()`` alone is never committed.
    Its connection is marked as writing (on SQLite, it takes the writer lock)."""
    with session_factory() as session, session.begin():
        session.connection(execution_options={WRITES: True})
        yield session
