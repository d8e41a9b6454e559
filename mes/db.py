"""Engine and session factories, built at a boundary (lifespan, CLI, test), never at import.

SQLite runs in WAL with ``synchronous=FULL`` (a committed write survives power loss) and every
transaction starts with ``BEGIN IMMEDIATE``: writers are serialised up front, so the audit hash
chain cannot fork and no transaction fails late on a snapshot upgrade.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Async engine for ``sqlite+aiosqlite`` or ``postgresql+asyncpg`` URLs."""
    if url.startswith("sqlite"):
        _prepare_sqlite_path(url)
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the driver so BEGIN IMMEDIATE below is ours.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_pre_ping", True)
        # Short OLTP statements: JIT compilation costs more than it saves (it was measured
        # taking most of a genealogy trace's time).
        kwargs.setdefault("connect_args", {"server_settings": {"jit": "off"}})
        return create_async_engine(url, **kwargs)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@dataclass
class Database:
    """The engine and session factory of one running process."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    @classmethod
    def from_url(cls, url: str) -> Database:
        engine = create_engine(url)
        return cls(engine=engine, sessionmaker=create_sessionmaker(engine))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session


def database_url_for_display(url: str) -> str:
    """The URL with any password masked, for logs and health output."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> str | None:
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        return os.path.abspath(database)
    return None
