"""Session factory behaviour the services rely on: a request's session keeps what it loaded
(``hold_objects``), so a second lookup of the same row is answered without a statement; a
locked read still returns the row as the lock finds it."""

from __future__ import annotations

import gc
from typing import Any

from sqlalchemy import event, text
from sqlmodel import select

from mes.context import AppContext
from mes.db import held, hold_objects
from mes.models import AppUser, Role
from tests.conftest import create_user


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
