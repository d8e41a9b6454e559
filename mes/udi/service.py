"""Scan logging (ID-1, DOMAIN 6): every scan attempt is parsed and stored as an append-only
``ScanEvent``, good or bad, so a consumption can cite the scan it rests on and QA can see
every refused or doubtful read. Repeat scans of the same data by the same user within 2 s are
answered with the earlier event instead of being stored again."""

from __future__ import annotations

from datetime import date
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.context import AppContext
from mes.models import ScanEvent
from mes.principal import Principal
from mes.records import fetch_page
from mes.udi import rules
from mes.udi.rules import ScanOutcome, UdiScan
from mes.udi.schemas import ScanResult


class RecordedScan(NamedTuple):
    """The stored event, what the scan meant, and whether it repeated an earlier scan."""

    event: ScanEvent
    scan: UdiScan
    duplicate: bool


async def _recent_same_scan(
    ctx: AppContext, session: AsyncSession, username: str, raw_escaped: str
) -> ScanEvent | None:
    since = ctx.clock.now() - rules.DUPLICATE_WINDOW
    stmt = (
        select(ScanEvent)
        .where(
            ScanEvent.username == username,
            ScanEvent.raw_escaped == raw_escaped,
            col(ScanEvent.at) >= since,
        )
        .order_by(col(ScanEvent.seq).desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def record_scan(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    raw: str,
    context: str | None,
) -> RecordedScan:
    """Parse ``raw`` and store a ``ScanEvent`` for it (outcome ok / rejected / suspect; raw
    with control characters escaped). A repeat of the same raw by the same user within
    ``rules.DUPLICATE_WINDOW`` returns the earlier event with ``duplicate=True``."""
    scan = rules.parse_scan(raw)
    raw_escaped = rules.escape_raw(raw)
    earlier = await _recent_same_scan(ctx, session, principal.username, raw_escaped)
    if earlier is not None:
        return RecordedScan(earlier, scan, duplicate=True)
    event = ScanEvent(
        at=ctx.clock.now(),
        username=principal.username,
        raw_escaped=raw_escaped,
        symbology_id=scan.symbology_id,
        outcome=scan.outcome,
        parsed=scan.as_json(),
        errors=list(scan.errors),
        context=context,
    )
    session.add(event)
    await session.flush()
    return RecordedScan(event, scan, duplicate=False)


async def list_scans(
    session: AsyncSession,
    *,
    after: int | None,
    limit: int,
    username: str | None = None,
    outcome: ScanOutcome | None = None,
) -> tuple[list[ScanEvent], int | None]:
    """Scan events in the order they were stored; the cursor is the last ``seq`` returned."""
    stmt = select(ScanEvent).order_by(col(ScanEvent.seq))
    if username is not None:
        stmt = stmt.where(ScanEvent.username == username)
    if outcome is not None:
        stmt = stmt.where(ScanEvent.outcome == outcome)
    if after is not None:
        stmt = stmt.where(col(ScanEvent.seq) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (rows[-1].seq if more else None)


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def public(event: ScanEvent, *, duplicate: bool = False) -> ScanResult:
    """The API view of a stored scan event."""
    assert event.seq is not None, "a stored scan event has a seq"
    parsed: dict[str, Any] = event.parsed or {}
    element_string = _text(parsed.get("element_string"))
    outcome = ScanOutcome(event.outcome)
    return ScanResult(
        id=event.id,
        seq=event.seq,
        at=event.at,
        username=event.username,
        context=event.context,
        raw=event.raw_escaped,
        symbology_id=event.symbology_id,
        outcome=outcome,
        ok=outcome != ScanOutcome.rejected,
        duplicate=duplicate,
        gtin=_text(parsed.get("gtin")),
        lot=_text(parsed.get("lot")),
        serial=_text(parsed.get("serial")),
        production_date=_date(parsed.get("production_date")),
        expiry_date=_date(parsed.get("expiry_date")),
        element_string=element_string,
        element_string_display=rules.display_gs(element_string) if element_string else None,
        hri=_text(parsed.get("hri")),
        errors=[str(e) for e in event.errors or []],
        warnings=[str(w) for w in parsed.get("warnings") or []],
    )
