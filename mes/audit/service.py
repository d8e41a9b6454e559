"""Writing and verifying the audit trail.

``record`` is called by every service that changes a regulated record, inside the same
session and transaction as the change (AT-1): if the audit insert fails, the change rolls back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import col, func, select

import mes
from mes.audit.rules import (
    GENESIS_HASH,
    chain_hash,
    content_hash,
    entry_hash,
    field_changes,
    to_jsonable,
)
from mes.clock import utc_now
from mes.errors import InvalidInput
from mes.models import AuditEntry
from mes.principal import Principal
from mes.records import fetch_page

CHAIN_LOCK_ID = 0x4D455341  # "MESA": pg_advisory_xact_lock key of the audit chain
VERIFY_CHUNK = 2000


def _hashed_content(entry: AuditEntry) -> dict[str, Any]:
    """What an entry says, without its place in the chain (AT-5 ``content_hash``)."""
    return {
        "id": entry.id,
        "at": entry.at,
        "user_id": entry.user_id,
        "username": entry.username,
        "session_id": entry.session_id,
        "terminal": entry.terminal,
        "action": entry.action,
        "entity_type": entry.entity_type,
        "entity_id": entry.entity_id,
        "entity_version": entry.entity_version,
        "changes": entry.changes,
        "reason": entry.reason,
        "app_version": entry.app_version,
    }


PENDING = "mes.audit.pending"


def _seal(session: Session) -> None:
    """Insert the entries a transaction recorded, as the last step before its commit, and
    chain them (AT-5).

    PostgreSQL: the deferred trigger ``mes_audit_seal`` (migration 0005) chains each inserted
    entry inside COMMIT, under the chain lock, so the lock is never held across a round trip
    to this process - under load a lock held across round trips waits for the event loop of
    its holder, and every other commit queues behind it.
    SQLite: every write transaction began with BEGIN IMMEDIATE (mes.db), so the chain head
    read here cannot move before this commit; the entries are chained here."""
    pending: list[AuditEntry] | None = session.info.pop(PENDING, None)
    if not pending:
        return
    if session.get_bind().dialect.name != "postgresql":
        head = session.execute(
            select(AuditEntry.chain_seq, AuditEntry.hash)
            .order_by(col(AuditEntry.chain_seq).desc())
            .limit(1)
        ).first()
        position, prev = (head[0], head[1]) if head is not None else (0, GENESIS_HASH)
        for entry in pending:
            assert entry.content_hash is not None
            assert position is not None
            position += 1
            entry.chain_seq = position
            entry.prev_hash = prev
            entry.hash = prev = chain_hash(prev, entry.content_hash)
    session.add_all(pending)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Their links are written by the database at COMMIT: these objects would keep the
        # empty ones, so the session lets go of them (callers keep what they read).
        for entry in pending:
            session.expunge(entry)


def _discard(session: Session, *_: Any) -> None:
    session.info.pop(PENDING, None)


event.listen(Session, "before_commit", _seal)
event.listen(Session, "after_rollback", _discard)


async def record(
    session: AsyncSession,
    principal: Principal,
    *,
    action: str,
    entity_type: str,
    entity_id: str | uuid.UUID,
    entity_version: int,
    changes: list[dict[str, Any]],
    reason: str,
) -> AuditEntry:
    """Append one audit entry in the caller's transaction (AT-1, AT-2, AT-5). The entry is
    inserted and chained when the transaction commits (``_seal``); a rollback discards it
    with the change."""
    if not reason or not reason.strip():
        raise InvalidInput(
            "a reason is required for every regulated change", rule="AT-3", field="reason"
        )
    entry = AuditEntry(
        at=utc_now(),
        user_id=principal.user_id,
        username=principal.username,
        session_id=principal.session_id,
        terminal=principal.terminal,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        entity_version=entity_version,
        changes=to_jsonable(changes),
        reason=reason.strip(),
        app_version=mes.__version__,
    )
    entry.content_hash = content_hash(_hashed_content(entry))
    session.sync_session.info.setdefault(PENDING, []).append(entry)
    # Callers rely on the change being flushed once it is audited.
    await session.flush()
    return entry


async def record_change(
    session: AsyncSession,
    principal: Principal,
    *,
    action: str,
    entity_type: str,
    entity_id: str | uuid.UUID,
    entity_version: int,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    fields: Iterable[str],
    reason: str,
) -> AuditEntry:
    """``record`` with the field-level diff of two snapshots."""
    return await record(
        session,
        principal,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        entity_version=entity_version,
        changes=field_changes(old, new, fields),
        reason=reason,
    )


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    checked: int
    head_seq: int | None
    head_hash: str
    broken_seq: int | None = None
    broken_id: str | None = None
    problem: str | None = None


def _link_problem(entry: AuditEntry, prev: str, position: int) -> str | None:
    """What is wrong with ``entry`` as the chain's entry number ``position`` after ``prev``."""
    if entry.chain_seq != position or entry.prev_hash != prev:
        return "prev_hash does not match the preceding entry (removed or reordered)"
    if entry.content_hash is None:
        # Chained before content hashes were stored (migration 0005).
        legacy = {**_hashed_content(entry), "prev_hash": entry.prev_hash}
        if entry_hash(prev, legacy) != entry.hash:
            return "content does not match its hash (altered)"
        return None
    if content_hash(_hashed_content(entry)) != entry.content_hash:
        return "content does not match its hash (altered)"
    if chain_hash(prev, entry.content_hash) != entry.hash:
        return "content does not match its hash (altered)"
    return None


async def verify_chain(session: AsyncSession) -> ChainVerification:
    """AT-5: recompute every hash in chain order and name the first entry that does not
    match (by its ``seq``)."""
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    prev = GENESIS_HASH
    checked = 0
    last_seq: int | None = None
    while True:
        result = await session.execute(
            table.select()
            .where(table.c.chain_seq > checked)
            .order_by(table.c.chain_seq)
            .limit(VERIFY_CHUNK)
        )
        # Detached copies: verification never touches the session's identity map.
        rows = [AuditEntry(**row._mapping) for row in result]
        if not rows:
            break
        for entry in rows:
            assert entry.seq is not None
            assert entry.hash is not None
            problem = _link_problem(entry, prev, checked + 1)
            if problem:
                return ChainVerification(
                    ok=False,
                    checked=checked,
                    head_seq=last_seq,
                    head_hash=prev,
                    broken_seq=entry.seq,
                    broken_id=str(entry.id),
                    problem=problem,
                )
            prev = entry.hash
            last_seq = entry.seq
            checked += 1
    outside = (
        await session.execute(
            select(func.min(AuditEntry.seq), func.count()).where(
                col(AuditEntry.chain_seq).is_(None)
            )
        )
    ).one()
    if outside[1]:
        return ChainVerification(
            ok=False,
            checked=checked,
            head_seq=last_seq,
            head_hash=prev,
            broken_seq=outside[0],
            problem=f"{outside[1]} entries are not in the chain (inserted around it)",
        )
    return ChainVerification(ok=True, checked=checked, head_seq=last_seq, head_hash=prev)


async def list_entries(
    session: AsyncSession,
    *,
    entity_type: str | None,
    entity_id: str | None,
    username: str | None,
    after: int | None,
    limit: int,
) -> tuple[list[AuditEntry], int | None]:
    """Entries in chain order (the order they committed in), filtered; the cursor is the
    last ``chain_seq`` returned."""
    stmt = select(AuditEntry).order_by(col(AuditEntry.chain_seq))
    if entity_type is not None:
        stmt = stmt.where(AuditEntry.entity_type == entity_type)
    if entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == entity_id)
    if username is not None:
        stmt = stmt.where(AuditEntry.username == username)
    if after is not None:
        stmt = stmt.where(col(AuditEntry.chain_seq) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (rows[-1].chain_seq if more else None)
