"""Engine and session factories, built at a boundary (lifespan, CLI, test), never at import.

SQLite runs in WAL with ``synchronous=FULL`` (a committed write survives power loss) and every
transaction starts with ``BEGIN IMMEDIATE``: writers are serialised up front, so the audit hash
chain cannot fork and no transaction fails late on a snapshot upgrade.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.util import identity_key
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")

# ``Session.info`` key of the list that keeps a request's objects alive (see ``hold_objects``).
HELD = "mes.held"

# A pooled PostgreSQL connection checked in longer ago than this is pinged before it is handed
# out again; one used more recently is handed out as it is (see ``_check_alive``).
PING_IDLE_AFTER_S = 1.0
# ``ConnectionPoolEntry.info`` key: when the connection was last returned to the pool.
LAST_CHECKIN = "mes.last_checkin"

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
        # The most recently returned connection first: the busy ones stay busy (and are not
        # pinged, see ``_check_alive_when_idle``); the others idle and are pinged when needed.
        kwargs.setdefault("pool_use_lifo", True)
        # Short OLTP statements: JIT compilation costs more than it saves (it was measured
        # taking most of a genealogy trace's time).
        kwargs.setdefault("connect_args", {"server_settings": {"jit": "off"}})
        engine = create_async_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            _check_alive_when_idle(engine)
        return engine
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


def _check_alive_when_idle(engine: AsyncEngine) -> None:
    """Hand out a pooled connection that sat idle for over ``PING_IDLE_AFTER_S`` only after a
    ping, and replace it when the ping fails (a restarted server, a dropped TCP session).

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout, which with asyncpg is three round
    trips (BEGIN, an empty query, ROLLBACK) before every request's own BEGIN. A connection
    returned to the pool a moment ago is almost certainly alive; if it is not, the request
    fails on its first statement as it would on a drop mid-request, and SQLAlchemy then
    invalidates the whole pool, so the connections that follow are new."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[LAST_CHECKIN] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _check_alive(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        returned = record.info.get(LAST_CHECKIN)
        if returned is None or time.monotonic() - returned <= PING_IDLE_AFTER_S:
            return  # a new connection, or one in use a moment ago
        try:
            sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure means: do not use it
            # The pool discards this connection and checks out another (or a new one).
            raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error


class MesSession(Session):
    """The ORM session of the application (the sync side of every ``AsyncSession``)."""


def _hold(session: Session, instance: object) -> None:
    held = session.info.get(HELD)
    if held is not None:
        held.append(instance)


# The identity map holds clean objects weakly: an object a service function loaded and
# returned without keeping is collected, and the next ``session.get`` of it (the response
# reading the same execution, material or unit) reads it again. A session that will be short
# keeps them (``hold_objects``).
event.listen(MesSession, "loaded_as_persistent", _hold)
event.listen(MesSession, "pending_to_persistent", _hold)


def _lock_reads_current(state: ORMExecuteState) -> None:
    """A row read with a lock (``FOR UPDATE``) is taken as the lock finds it, even when the
    session holds an object for it already: without this, the object keeps what an earlier,
    unlocked read saw (a failure counter, a status) and the locked read would only lock.
    Changes not yet flushed are written first, so that the refresh does not drop them."""
    if state.is_select and getattr(state.statement, "_for_update_arg", None) is not None:
        state.session.flush()
        state.update_execution_options(populate_existing=True)


event.listen(MesSession, "do_orm_execute", _lock_reads_current)


def hold_objects(session: AsyncSession) -> None:
    """Keep every object ``session`` loads or writes until the session closes, so that the
    identity map answers repeated lookups of it: for short sessions only (an HTTP request),
    as a long one would keep everything it ever read."""
    session.sync_session.info.setdefault(HELD, [])


def held(session: AsyncSession, model: type[T], ident: Any) -> T | None:
    """The object of ``model`` with primary key ``ident`` if ``session`` holds it already
    (no statement either way)."""
    found = session.sync_session.identity_map.get(identity_key(model, ident))
    return found if isinstance(found, model) else None


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        engine, expire_on_commit=False, autoflush=False, sync_session_class=MesSession
    )


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
