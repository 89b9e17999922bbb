"""The embedded database's locking: writers take turns through a file lock, readers wait for
nobody (service.db.SqliteWriterLock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory, transaction
from service.models import Customer
from service.settings import Settings
from tests.conftest import build_context, new_customer_key


@pytest.fixture
def session_factory(
    sqlite_local_settings: Settings, flush_redis: None
) -> Iterator[sessionmaker[Session]]:
    ctx = build_context(sqlite_local_settings)
    new_customer_key(ctx, "locking")
    ctx.close()
    engine = make_engine(sqlite_local_settings)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_read_does_not_wait_for_a_write_in_progress(
    session_factory: sessionmaker[Session],
) -> None:
    """A poll while a worker holds the write lock reads the last committed state at once (it
    used to BEGIN IMMEDIATE too, and wait for the writer to finish)."""
    written, release = threading.Event(), threading.Event()

    def writer() -> None:
        with transaction(session_factory) as session:
            session.execute(update(Customer).values(pages_used=7))
            written.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert written.wait(10)
        started = time.monotonic()
        with session_factory() as session:
            used = session.scalar(select(func.max(Customer.pages_used)))
        assert time.monotonic() - started < 1.0
        assert used == 0  # the committed state, not the writer's
    finally:
        release.set()
        thread.join()
    with session_factory() as session:
        assert session.scalar(select(func.max(Customer.pages_used))) == 7


def test_writers_take_turns_and_the_next_starts_when_the_last_commits(
    session_factory: sessionmaker[Session],
) -> None:
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with transaction(session_factory) as session:
            session.execute(update(Customer).values(pages_used=Customer.pages_used + 1))
            first_in.set()
            time.sleep(0.3)
            order.append("first commits")

    def second() -> None:
        first_in.wait(10)
        with transaction(session_factory) as session:
            order.append("second begins")
            session.execute(update(Customer).values(pages_used=Customer.pages_used + 1))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["first commits", "second begins"]
    with session_factory() as session:
        assert session.scalar(select(func.max(Customer.pages_used))) == 2


def test_a_nested_write_transaction_in_one_thread_raises_instead_of_hanging(
    session_factory: sessionmaker[Session],
) -> None:
    with transaction(session_factory) as session:
        session.execute(update(Customer).values(pages_used=1))
        with (
            pytest.raises(RuntimeError, match="second SQLite write transaction"),
            transaction(session_factory) as inner,
        ):
            inner.execute(update(Customer).values(pages_used=2))
    with session_factory() as session:
        assert session.scalar(select(func.max(Customer.pages_used))) == 1
