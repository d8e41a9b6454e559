"""Audit trail on a real database: same-transaction writes, append-only storage, the hash
chain and its verification (AT-1, AT-4, AT-5)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import func, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import InvalidInput
from mes.models import AuditEntry, EquipmentClass
from mes.principal import system_principal
from tests.conftest import BACKEND, Actors

ACTOR = system_principal("test")


async def _append(ctx: AppContext, n: int, entity: str = "thing") -> None:
    for i in range(n):
        async with ctx.db.sessionmaker() as session, session.begin():
            await audit.record(
                session,
                ACTOR,
                action="update",
                entity_type=entity,
                entity_id=f"E-{i}",
                entity_version=i + 1,
                changes=[{"field": "n", "old": i, "new": i + 1}],
                reason="test change",
            )


async def _count(ctx: AppContext) -> int:
    async with ctx.db.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(AuditEntry))).scalar_one()


async def test_reason_is_required(ctx: AppContext) -> None:
    """AT-3: an audited change without a reason is refused."""
    async with ctx.db.sessionmaker() as session:
        with pytest.raises(InvalidInput, match="reason"):
            await audit.record(
                session,
                ACTOR,
                action="update",
                entity_type="x",
                entity_id="1",
                entity_version=1,
                changes=[],
                reason="  ",
            )


async def test_change_and_audit_roll_back_together(ctx: AppContext) -> None:
    """AT-1: a failure after the audit write leaves neither the change nor the entry."""
    before = await _count(ctx)

    async def failing_unit_of_work() -> None:
        async with ctx.db.sessionmaker() as session, session.begin():
            session.add(EquipmentClass(code="ROLLBACK", name="gone"))
            await audit.record(
                session,
                ACTOR,
                action="create",
                entity_type="equipment_class",
                entity_id="ROLLBACK",
                entity_version=1,
                changes=[],
                reason="will roll back",
            )
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing_unit_of_work()
    async with ctx.db.sessionmaker() as session:
        found = await session.execute(
            select(EquipmentClass).where(EquipmentClass.code == "ROLLBACK")
        )
        assert found.scalar_one_or_none() is None
    assert await _count(ctx) == before


async def test_entries_carry_every_field(ctx: AppContext) -> None:
    """AT-2 / VAL-1: who, when, what, version, old/new, reason, app version, chain hashes."""
    await _append(ctx, 2)
    async with ctx.db.sessionmaker() as session:
        rows = (await session.execute(select(AuditEntry).order_by(AuditEntry.seq))).scalars().all()
    first, second = rows[-2], rows[-1]
    assert second.prev_hash == first.hash
    for entry in (first, second):
        assert entry.username == "system:test"
        assert entry.at.tzinfo is not None
        assert entry.reason == "test change"
        assert entry.app_version
        assert entry.changes[0]["field"] == "n"
        assert len(entry.hash) == 64


async def test_chain_verifies(ctx: AppContext) -> None:
    await _append(ctx, 5)
    async with ctx.db.sessionmaker() as session:
        result = await audit.verify_chain(session)
    assert result.ok
    assert result.checked == await _count(ctx)


async def test_update_and_delete_are_refused(ctx: AppContext) -> None:
    """AT-4: the database itself refuses UPDATE and DELETE on the audit table."""
    await _append(ctx, 1)
    errors = (IntegrityError, OperationalError, DBAPIError)
    for statement in ("UPDATE audit_entry SET reason = 'edited'", "DELETE FROM audit_entry"):
        with pytest.raises(errors, match="AT-4"):
            async with ctx.db.engine.begin() as conn:
                await conn.execute(text(statement))
    if BACKEND == "postgresql":
        with pytest.raises(errors, match="AT-4"):
            async with ctx.db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE audit_entry"))
    async with ctx.db.sessionmaker() as session:
        assert (await audit.verify_chain(session)).ok


async def _tamper(ctx: AppContext, sql: str) -> None:
    """Bypass the append-only guard the way an attacker with owner rights would."""
    async with ctx.db.engine.begin() as conn:
        if BACKEND == "postgresql":
            await conn.execute(text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
            await conn.execute(text(sql))
            await conn.execute(text("ALTER TABLE audit_entry ENABLE TRIGGER USER"))
        else:
            await conn.execute(text("DROP TRIGGER audit_entry_no_update"))
            await conn.execute(text("DROP TRIGGER audit_entry_no_delete"))
            await conn.execute(text(sql))


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE audit_entry SET reason = 'nothing to see' WHERE seq = {target}", "altered"),
        ("DELETE FROM audit_entry WHERE seq = {target}", "removed"),
        ("UPDATE audit_entry SET changes = '[]' WHERE seq = {target}", "altered"),
    ],
)
async def test_tampering_is_found_at_the_exact_entry(
    ctx: AppContext, sql: str, problem: str
) -> None:
    """AT-5: an edited or deleted row breaks the chain at that row (or the next one)."""
    await _append(ctx, 6)
    async with ctx.db.sessionmaker() as session:
        seqs = (
            (await session.execute(select(AuditEntry.seq).order_by(AuditEntry.seq))).scalars().all()
        )
    target = seqs[3]
    await _tamper(ctx, sql.format(target=target))
    async with ctx.db.sessionmaker() as session:
        result = await audit.verify_chain(session)
    assert not result.ok
    assert problem in (result.problem or "")
    expected = target if problem == "altered" else seqs[4]
    assert result.broken_seq == expected
    assert result.checked == 3


async def test_concurrent_writers_do_not_fork_the_chain(ctx: AppContext) -> None:
    """AT-5: eight writers appending at once still leave one unbroken chain."""

    async def writer(w: int) -> None:
        for i in range(10):
            async with ctx.db.sessionmaker() as session, session.begin():
                await audit.record(
                    session,
                    ACTOR,
                    action="update",
                    entity_type="w",
                    entity_id=f"{w}-{i}",
                    entity_version=1,
                    changes=[],
                    reason="concurrent",
                )

    await asyncio.gather(*(writer(w) for w in range(8)))
    async with ctx.db.sessionmaker() as session:
        result = await audit.verify_chain(session)
        hashes = (await session.execute(select(AuditEntry.prev_hash))).scalars().all()
    assert result.ok, result
    assert result.checked == 80
    assert len(hashes) == len(set(hashes)), "two entries share a predecessor: the chain forked"


async def test_audit_api_lists_and_verifies(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
) -> None:
    await _append(ctx, 3, entity="api-thing")
    page = await client.get(
        "/api/v1/audit", params={"entity_type": "api-thing", "limit": 2}, headers=actors["qa"]
    )
    assert page.status_code == 200
    body = page.json()
    assert [e["entity_id"] for e in body["items"]] == ["E-0", "E-1"]
    rest = await client.get(
        "/api/v1/audit",
        params={"entity_type": "api-thing", "cursor": body["next_cursor"]},
        headers=actors["qa"],
    )
    assert [e["entity_id"] for e in rest.json()["items"]] == ["E-2"]
    assert rest.json()["next_cursor"] is None
    report = await client.get("/api/v1/audit/verify", headers=actors["admin"])
    assert report.status_code == 200
    assert report.json()["ok"] is True
    assert (await client.get("/api/v1/audit", headers=actors["operator"])).status_code == 403
