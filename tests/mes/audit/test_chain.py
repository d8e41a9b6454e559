"""The audit chain's links (AT-4, AT-5): chained in commit order, sealed only by the database's
own seal on PostgreSQL, and entries chained before content hashes were stored (migration
0005) still verify after the upgrade."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from mes.audit import service as audit
from mes.audit.rules import GENESIS_HASH, chain_hash, content_hash, entry_hash
from mes.context import AppContext
from mes.db import create_engine, create_sessionmaker
from mes.migrate import upgrade
from mes.models import AuditEntry
from mes.principal import system_principal
from tests.conftest import BACKEND, pg_admin, pg_url

ACTOR = system_principal("test")
AUDIT = AuditEntry.__table__  # type: ignore[attr-defined]


async def _record(session: object, entity_id: str) -> AuditEntry:
    return await audit.record(
        session,  # type: ignore[arg-type]
        ACTOR,
        action="update",
        entity_type="thing",
        entity_id=entity_id,
        entity_version=1,
        changes=[{"field": "n", "old": 0, "new": 1}],
        reason="test change",
    )


async def _chain(ctx: AppContext) -> list[AuditEntry]:
    async with ctx.db.sessionmaker() as session:
        stmt = select(AuditEntry).order_by(col(AuditEntry.chain_seq))
        return list((await session.execute(stmt)).scalars())


async def test_entries_are_chained_in_commit_order(ctx: AppContext) -> None:
    """AT-5: the entry of the transaction that commits first comes first in the chain,
    whichever recorded first; positions are 1, 2, 3... and each link is
    SHA-256(prev_hash || content_hash)."""
    async with ctx.db.sessionmaker() as early, ctx.db.sessionmaker() as late:
        await _record(early, "recorded-first")
        await _record(late, "recorded-second")
        await late.commit()
        await early.commit()
    entries = await _chain(ctx)
    assert [e.entity_id for e in entries[-2:]] == ["recorded-second", "recorded-first"]
    assert [e.chain_seq for e in entries] == list(range(1, len(entries) + 1))
    prev = GENESIS_HASH
    for entry in entries:
        assert entry.content_hash is not None
        assert entry.prev_hash == prev
        assert entry.hash == chain_hash(prev, entry.content_hash)
        prev = entry.hash
    async with ctx.db.sessionmaker() as session:
        assert (await audit.verify_chain(session)).ok


async def test_a_rolled_back_entry_leaves_no_link(ctx: AppContext) -> None:
    async with ctx.db.sessionmaker() as session:
        await _record(session, "kept")
        await session.commit()
    async with ctx.db.sessionmaker() as session:
        await _record(session, "rolled-back")
        await session.rollback()
    async with ctx.db.sessionmaker() as session:
        await _record(session, "after")
        await session.commit()
    entries = await _chain(ctx)
    assert [e.entity_id for e in entries[-2:]] == ["kept", "after"]
    async with ctx.db.sessionmaker() as session:
        assert (await audit.verify_chain(session)).ok


@pytest.mark.skipif(BACKEND != "postgresql", reason="the commit-time seal is PostgreSQL's")
async def test_only_the_seal_may_fill_the_chain_columns(ctx: AppContext) -> None:
    """AT-4: an entry not yet sealed (inserted, transaction still open) cannot be linked by
    hand - the guard lets only ``mes_audit_seal`` fill its chain columns."""

    async def forge() -> None:
        async with ctx.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_entry (id, at, username, action, entity_type, entity_id,"
                    " entity_version, changes, reason, app_version, content_hash) VALUES"
                    " (:id, now(), 'intruder', 'update', 'thing', 'x', 1, '[]', 'r', '0',"
                    " repeat('a', 64))"
                ),
                {"id": uuid.uuid4()},
            )
            await conn.execute(
                text(
                    "UPDATE audit_entry SET chain_seq = 1, prev_hash = repeat('0', 64),"
                    " hash = repeat('b', 64) WHERE username = 'intruder'"
                )
            )

    with pytest.raises(DBAPIError, match="AT-4"):
        await forge()
    async with ctx.db.sessionmaker() as session:
        assert (await audit.verify_chain(session)).ok


# --- upgrade from revision 0004 ------------------------------------------------------------------


@pytest.fixture
async def blank_url(tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (nothing migrated)."""
    if BACKEND == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'blank.db'}"
        return
    name = f"mes_b_{uuid.uuid4().hex[:16]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    yield pg_url(name)
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_entries_chained_before_revision_0005_still_verify(blank_url: str) -> None:
    """AT-5 across the upgrade: entries hashed by the former formula (prev_hash inside the
    hashed content) keep their hashes and verify; new entries chain on after them; an edit
    of a former entry is still found."""
    engine = create_engine(blank_url)
    try:
        await upgrade(engine, "0004")
        prev = GENESIS_HASH
        async with engine.begin() as conn:
            for i in range(3):
                row_id = uuid.uuid4()
                at = datetime(2026, 11, 1, 8, i, tzinfo=UTC)
                changes = [{"field": "n", "old": i, "new": i + 1}]
                content = {
                    "id": row_id,
                    "at": at,
                    "user_id": None,
                    "username": "system:test",
                    "session_id": None,
                    "terminal": None,
                    "action": "update",
                    "entity_type": "thing",
                    "entity_id": f"L-{i}",
                    "entity_version": 1,
                    "changes": changes,
                    "reason": "legacy change",
                    "app_version": "0.1.0",
                    "prev_hash": prev,
                }
                digest = entry_hash(prev, content)
                # Only the columns revision 0004 has; seq with gaps, as rolled-back inserts
                # leave them.
                legacy_row = {k: v for k, v in content.items() if v is not None}
                await conn.execute(
                    insert(AUDIT).values(**legacy_row, hash=digest, seq=1001 + 4 * i)
                )
                prev = digest
        await upgrade(engine)
        sessions = create_sessionmaker(engine)
        async with sessions() as session:
            await _record(session, "after-upgrade")
            await session.commit()
        async with sessions() as session:
            result = await audit.verify_chain(session)
            entries = list(
                (await session.execute(select(AuditEntry).order_by(col(AuditEntry.chain_seq))))
                .scalars()
                .all()
            )
        assert result.ok, result
        assert result.checked == 4
        assert [e.chain_seq for e in entries] == [1, 2, 3, 4]
        assert [e.content_hash is None for e in entries] == [True, True, True, False]
        assert entries[3].prev_hash == prev
        assert entries[3].content_hash == content_hash(audit._hashed_content(entries[3]))

        async with engine.begin() as conn:
            if BACKEND == "postgresql":
                await conn.execute(text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
            else:
                await conn.execute(text("DROP TRIGGER audit_entry_no_update"))
            await conn.execute(
                text("UPDATE audit_entry SET reason = 'edited' WHERE entity_id = 'L-1'")
            )
        async with sessions() as session:
            tampered = await audit.verify_chain(session)
        assert not tampered.ok
        assert tampered.broken_seq == entries[1].seq
        assert "altered" in (tampered.problem or "")
    finally:
        await engine.dispose()


async def test_concurrent_commits_keep_one_chain(ctx: AppContext) -> None:
    """AT-5: commits racing each other (each with two entries) leave one dense chain."""

    async def writer(w: int) -> None:
        for i in range(5):
            async with ctx.db.sessionmaker() as session, session.begin():
                await _record(session, f"{w}-{i}-a")
                await _record(session, f"{w}-{i}-b")

    await asyncio.gather(*(writer(w) for w in range(6)))
    entries = await _chain(ctx)
    assert [e.chain_seq for e in entries] == list(range(1, len(entries) + 1))
    # The two entries of one transaction are adjacent.
    ids = [e.entity_id for e in entries if e.entity_id[0].isdigit()]
    assert all(a[:-1] == b[:-1] for a, b in zip(ids[::2], ids[1::2], strict=True))
    async with ctx.db.sessionmaker() as session:
        assert (await audit.verify_chain(session)).ok


async def test_an_entry_inserted_around_the_chain_fails_verification(ctx: AppContext) -> None:
    """AT-5: a row that is in the table but not in the chain (inserted with the sealing
    bypassed) is reported, not skipped; on PostgreSQL such an insert is refused outright."""
    async with ctx.db.sessionmaker() as session:
        await _record(session, "chained")
        await session.commit()
    row = {
        "id": uuid.uuid4(),
        "at": datetime.now(UTC),
        "username": "intruder",
        "action": "update",
        "entity_type": "thing",
        "entity_id": "x",
        "entity_version": 1,
        "changes": [],
        "reason": "r",
        "app_version": "0",
    }
    if BACKEND == "postgresql":
        preset = {**row, "content_hash": "a" * 64, "chain_seq": 99, "prev_hash": "0" * 64}
        with pytest.raises(DBAPIError, match="AT-5"):
            async with ctx.db.engine.begin() as conn:
                await conn.execute(insert(AUDIT).values(**preset, hash="b" * 64))
        async with ctx.db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
            await conn.execute(insert(AUDIT).values(**row))
            await conn.execute(text("ALTER TABLE audit_entry ENABLE TRIGGER USER"))
    else:
        async with ctx.db.engine.begin() as conn:
            await conn.execute(insert(AUDIT).values(**row, prev_hash="", hash="c" * 64))
    async with ctx.db.sessionmaker() as session:
        result = await audit.verify_chain(session)
    assert not result.ok
    assert "not in the chain" in (result.problem or "")
