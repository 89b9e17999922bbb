"""Everything a process needs, built once from Settings by a factory and passed down.

The API keeps one in ``app.extensions["pagelane"]``; a worker builds one per process after fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory
from service.settings import Settings
from service.storage import BlobStore, make_blob_store

if TYPE_CHECKING:
    # Worker-side parts, built on first use (the API only publishes through the dispatcher).
    from tasks.dispatch import Dispatcher
    from tasks.items import LeaseKeeper


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    blob_store: BlobStore | None
    _celery: Celery | None = field(default=None, repr=False)

    @cached_property
    def redis(self) -> redis.Redis:
        """State Redis: semaphores and rate limits (the broker has its own connections)."""
        return redis.Redis.from_url(
            self.settings.require_redis(),
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=10,
            retry_on_timeout=True,
        )

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from tasks.app import make_celery

            self._celery = make_celery(self.settings)
        return self._celery

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from tasks.app import PROCESS_ITEM, QUEUE_ITEMS
        from tasks.dispatch import Dispatcher
        from tasks.semaphore import CustomerSemaphore

        celery = self.celery

        def publish(item_id: str) -> None:
            celery.send_task(PROCESS_ITEM, args=[item_id], queue=QUEUE_ITEMS)

        return Dispatcher(
            session_factory=self.session_factory,
            semaphore=CustomerSemaphore(self.redis),
            publish=publish,
            admission_lease_seconds=self.settings.admission_lease_seconds,
        )

    @cached_property
    def lease_keeper(self) -> LeaseKeeper:
        """Renews the leases of the items this process is extracting (one thread, started on
        first use)."""
        from tasks.items import LeaseKeeper

        return LeaseKeeper(self)

    def close(self) -> None:
        if "lease_keeper" in self.__dict__:
            self.lease_keeper.close()
        self.engine.dispose()
        if "redis" in self.__dict__:
            self.redis.close()


def make_context(settings: Settings, *, celery: Celery | None = None) -> ServiceContext:
    engine = make_engine(settings)
    return ServiceContext(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        blob_store=None if settings.blob_store == "none" else make_blob_store(settings),
        _celery=celery,
    )
