"""Session factory behaviour the services rely on: a request's session keeps what it loaded
(``hold_objects``), so a second lookup of the same row is answered without a statement."""

from __future__ import annotations

import gc
from typing import Any

from sqlalchemy import event
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
