"""Identification API: report a scan and get back what it means; review the scan log (ID-1,
DOMAIN 6)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from mes.http import (
    ContextDep,
    CursorQuery,
    LimitQuery,
    SessionDep,
    decode_int_cursor,
    encode_cursor,
)
from mes.identity.deps import Allow
from mes.models import Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.udi import service
from mes.udi.rules import ScanOutcome
from mes.udi.schemas import ScanList, ScanRequest, ScanResult

router = APIRouter(prefix=API_PREFIX, tags=["identification"])

Scanner = Annotated[
    Principal, Depends(Allow(Role.operator, Role.supervisor, Role.qa, Role.planner))
]
ScanReader = Annotated[Principal, Depends(Allow(Role.supervisor, Role.qa, Role.admin))]


@router.post("/scans", response_model=ScanResult)
async def report_scan(
    body: ScanRequest, ctx: ContextDep, session: SessionDep, principal: Scanner
) -> ScanResult:
    """Parse one GS1 scan or typed HRI and log it (every attempt is stored, ID-1).

    Always 200 for a well-formed request: a bad scan is an answer, not a client error. `ok`
    false means the data must not be used and `errors` says why (bad check digit (UDI-1),
    plain `]d1` DataMatrix, lot without GTIN, characters outside CSET 82 (UDI-2), ...).
    `outcome` `suspect` with `warnings` means it reads but may be wrong (separator suspected:
    a keyboard-wedge scanner dropped the GS). A repeat of the same data by the same user
    within 2 s returns the earlier scan with `duplicate` true and stores nothing."""
    recorded = await service.record_scan(ctx, session, principal, body.raw, body.context)
    return service.public(recorded.event, duplicate=recorded.duplicate)


@router.get("/scans", response_model=ScanList)
async def list_scans(
    session: SessionDep,
    _: ScanReader,
    username: Annotated[str | None, Query(max_length=64)] = None,
    outcome: ScanOutcome | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> ScanList:
    """The scan log in the order scans were stored, optionally for one user or outcome."""
    rows, last = await service.list_scans(
        session,
        after=decode_int_cursor(cursor),
        limit=limit,
        username=username,
        outcome=outcome,
    )
    return ScanList(
        items=[service.public(row) for row in rows],
        next_cursor=encode_cursor(last) if last is not None else None,
    )
