"""Session factory behaviour the services rely on: a request's session keeps what it loaded
(``hold_objects``), so a second lookup of the same row is answered without a statement; a
locked read still returns the row as the lock finds it; a pooled PostgreSQL connection that sat
idle is pinged (and replaced if dead) before use, one returned a moment ago is not."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from mes import db
from mes.context import AppContext
from mes.db import create_engine, held, hold_objects
from mes.models import AppUser, Role
from tests.conftest import BACKEND, create_user, pg_admin


async def _user_id(ctx: AppContext) -> Any:
    await create_user(ctx, "holder", [Role.operator], full_name="Held Person")
    async with ctx.db.sessionmaker() as session:
        found = (await session.execute(select(AppUser).where(AppUser.username == "holder"))).one()
        return found[0].id


async def test_a_held_session_answers_a_repeated_lookup_without_a_statement(
    ctx: AppContext,
) -> None:
    user_id = await _user_id(ctx)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(ctx.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with ctx.db.sessionmaker() as session:
            hold_objects(session)
            await session.execute(select(AppUser).where(AppUser.id == user_id))
            gc.collect()  # nothing else refers to the user: only the session keeps it
            assert held(session, AppUser, user_id) is not None
            before = len(statements)
            user = await session.get(AppUser, user_id)
            assert user is not None
            assert user.username == "holder"
            assert len(statements) == before
    finally:
        event.remove(ctx.db.engine.sync_engine, "before_cursor_execute", count)


async def test_a_session_that_does_not_hold_lets_unreferenced_objects_go(ctx: AppContext) -> None:
    """The default for long sessions (imports, chain verification): the identity map keeps
    clean objects weakly, so memory does not grow with what was read."""
    user_id = await _user_id(ctx)
    async with ctx.db.sessionmaker() as session:
        await session.execute(select(AppUser).where(AppUser.id == user_id))
        gc.collect()
        assert held(session, AppUser, user_id) is None


async def test_a_locked_read_of_a_held_row_sees_its_current_values(ctx: AppContext) -> None:
    """AC-5: the failure counter an e-signature locks and increments is the stored one, not
    what the request's authentication read earlier (another request may have counted a
    failure since). The change is made behind the ORM's back, as another transaction's would
    be."""
    user_id = await _user_id(ctx)
    async with ctx.db.sessionmaker() as session:
        hold_objects(session)
        user = await session.get(AppUser, user_id)
        assert user is not None
        assert user.failed_attempts == 0
        connection = await session.connection()
        await connection.execute(
            text("UPDATE app_user SET failed_attempts = 2 WHERE id = :id"),
            {"id": user_id.hex if ctx.db.dialect == "sqlite" else user_id},
        )
        unlocked = await session.get(AppUser, user_id)
        assert unlocked is user
        assert user.failed_attempts == 0  # the identity map answers an unlocked lookup
        locked = await session.get(AppUser, user_id, with_for_update=True)
        assert locked is user
        assert user.failed_attempts == 2


async def test_a_locked_read_keeps_changes_not_yet_flushed(ctx: AppContext) -> None:
    user_id = await _user_id(ctx)
    async with ctx.db.sessionmaker() as session:
        hold_objects(session)
        user = await session.get(AppUser, user_id)
        assert user is not None
        user.full_name = "Renamed Person"
        session.add(user)
        await session.execute(select(AppUser).where(AppUser.id == user_id).with_for_update())
        assert user.full_name == "Renamed Person"
        stored = await session.execute(select(AppUser.full_name).where(AppUser.id == user_id))
        assert stored.scalar_one() == "Renamed Person"


pg_only = pytest.mark.skipif(BACKEND != "postgresql", reason="the PostgreSQL pool's liveness check")


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def _count_pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    dialect = engine.sync_engine.dialect
    original = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return original(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


@pg_only
async def test_a_connection_returned_a_moment_ago_is_handed_out_without_a_ping(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        pings = _count_pings(engine, monkeypatch)
        monkeypatch.setattr(db, "PING_IDLE_AFTER_S", 1e9)  # however slow the machine
        first = await _backend_pid(engine)
        assert [await _backend_pid(engine) for _ in range(5)] == [first] * 5
        assert pings == []
        # Idle past the window: pinged, and still the same live connection.
        monkeypatch.setattr(db, "PING_IDLE_AFTER_S", 0.0)
        assert await _backend_pid(engine) == first
        assert pings == [1]
    finally:
        await engine.dispose()


@pg_only
async def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart or a dropped TCP session while the connection sat in the pool: the
    next request gets a new connection instead of an error."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        dropped = await _backend_pid(engine)
        # Waits (up to 5 s) until the backend has exited.
        await pg_admin(f"SELECT pg_terminate_backend({dropped}, 5000)")
        monkeypatch.setattr(db, "PING_IDLE_AFTER_S", 0.0)
        replacement = await _backend_pid(engine)
        assert replacement != dropped
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
