"""Audit trail API: read entries, verify the hash chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from mes.audit import service
from mes.audit.schemas import AuditEntryPublic, AuditList, ChainReport
from mes.http import CursorQuery, LimitQuery, SessionDep, decode_int_cursor, encode_cursor
from mes.identity.deps import Allow
from mes.models import Role
from mes.principal import Principal
from mes.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["audit"])

AuditReader = Annotated[Principal, Depends(Allow(Role.supervisor, Role.qa, Role.admin))]
Verifier = Annotated[Principal, Depends(Allow(Role.qa, Role.admin))]
Filter = Annotated[str | None, Query(max_length=64)]


@router.get("/audit", response_model=AuditList)
async def list_audit(
    session: SessionDep,
    _: AuditReader,
    entity_type: Filter = None,
    entity_id: Filter = None,
    username: Filter = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> AuditList:
    """Audit entries in the order they were written (21 CFR 11.10(e))."""
    rows, last = await service.list_entries(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        username=username,
        after=decode_int_cursor(cursor),
        limit=limit,
    )
    return AuditList(
        items=[AuditEntryPublic.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=encode_cursor(last) if last is not None else None,
    )


@router.get("/audit/verify", response_model=ChainReport)
async def verify_audit(session: SessionDep, _: Verifier) -> ChainReport:
    """Recompute the SHA-256 chain and name the first broken entry (AT-5)."""
    result = await service.verify_chain(session)
    return ChainReport(
        ok=result.ok,
        checked=result.checked,
        head_seq=result.head_seq,
        head_hash=result.head_hash,
        broken_seq=result.broken_seq,
        broken_id=result.broken_id,
        problem=result.problem,
    )
