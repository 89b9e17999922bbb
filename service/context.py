"""The core parts every process needs, built once from Settings by a factory and passed down.

Only the core lives here: settings, the database and the blob store. Each composition root adds
its own parts on top — the API (``service.api.context.ApiContext``: Redis, the dispatcher, the
rate limiter) and the worker (``tasks.context.TaskContext``: Redis, the dispatcher, the lease
keeper) — so the core never reaches up into the layers that use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory
from service.settings import Settings
from service.storage import BlobStore, make_blob_store


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    blob_store: BlobStore | None

    def core_parts(self) -> dict[str, Any]:
        """The core fields, for a composition root that builds its own context on top of them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ServiceContext)}

    def close(self) -> None:
        self.engine.dispose()


def make_context(settings: Settings) -> ServiceContext:
    engine = make_engine(settings)
    return ServiceContext(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        blob_store=None if settings.blob_store == "none" else make_blob_store(settings),
    )
