"""Writing and verifying the audit trail.

``record`` is called by every service that changes a regulated record, inside the same
session and transaction as the change (AT-1): if the audit insert fails, the change rolls back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import col, select

import mes
from mes.audit.rules import GENESIS_HASH, entry_hash, field_changes, to_jsonable
from mes.clock import utc_now
from mes.errors import InvalidInput
from mes.models import AuditEntry
from mes.principal import Principal
from mes.records import fetch_page

CHAIN_LOCK_ID = 0x4D455341  # "MESA": pg_advisory_xact_lock key of the audit chain
VERIFY_CHUNK = 2000


def _hashed_content(entry: AuditEntry) -> dict[str, Any]:
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
        "prev_hash": entry.prev_hash,
    }


PENDING = "mes.audit.pending"


def _seal(session: Session) -> None:
    """Chain and insert the entries a transaction recorded, as the last step before its
    commit: the chain lock is held for three round trips (head, inserts, COMMIT), not for a
    whole request. Under CPU saturation of the server each round trip waits for its event
    loop, so the lock is the first queue that forms."""
    pending: list[AuditEntry] | None = session.info.pop(PENDING, None)
    if not pending:
        return
    # Write the transaction's other changes first, so that under the lock only the chain
    # head is read and the entries are inserted (then COMMIT releases it).
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Serialise chain appends so concurrent transactions cannot fork the chain.
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_ID})
    # SQLite: every transaction already began with BEGIN IMMEDIATE (mes.db).
    head = session.execute(
        select(AuditEntry.hash).order_by(col(AuditEntry.seq).desc()).limit(1)
    ).scalar_one_or_none()
    prev = head if head is not None else GENESIS_HASH
    for entry in pending:
        entry.prev_hash = prev
        entry.hash = entry_hash(prev, _hashed_content(entry))
        prev = entry.hash
    session.add_all(pending)
    session.flush()


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
    chained and inserted when the transaction commits (``_seal``); a rollback discards it
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
        prev_hash="",
        hash="",
    )
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


async def verify_chain(session: AsyncSession) -> ChainVerification:
    """AT-5: recompute every hash in order and name the first entry that does not match."""
    prev = GENESIS_HASH
    checked = 0
    last_seq: int | None = None
    after = -1
    while True:
        table = AuditEntry.__table__  # type: ignore[attr-defined]
        result = await session.execute(
            table.select().where(table.c.seq > after).order_by(table.c.seq).limit(VERIFY_CHUNK)
        )
        # Detached copies: verification never touches the session's identity map.
        rows = [AuditEntry(**row._mapping) for row in result]
        if not rows:
            break
        for entry in rows:
            assert entry.seq is not None
            problem = None
            if entry.prev_hash != prev:
                problem = "prev_hash does not match the preceding entry (removed or reordered)"
            elif entry_hash(entry.prev_hash, _hashed_content(entry)) != entry.hash:
                problem = "content does not match its hash (altered)"
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
        after = rows[-1].seq or after
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
    """Entries in chain order, filtered; the cursor is the last ``seq`` returned."""
    stmt = select(AuditEntry).order_by(col(AuditEntry.seq))
    if entity_type is not None:
        stmt = stmt.where(AuditEntry.entity_type == entity_type)
    if entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == entity_id)
    if username is not None:
        stmt = stmt.where(AuditEntry.username == username)
    if after is not None:
        stmt = stmt.where(col(AuditEntry.seq) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (rows[-1].seq if more else None)
