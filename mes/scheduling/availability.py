"""When a unit can work (SCH-3): unit calendars and unavailable windows - the API services,
and the read the scheduler uses.

A unit cannot run work outside its shifts or inside an unavailable window (maintenance,
calibration, planned downtime, a breakdown). Shifts are local wall-clock times in the
calendar's IANA time zone, expanded day by day with zoneinfo so that a DST change shortens or
lengthens the shift exactly as the clock on the shop-floor wall does. A unit with no calendar,
or with no shifts, works round the clock.

Every write is audited in the caller's transaction (AT-1) with a reason (AT-3).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment_service
from mes.errors import InvalidInput, InvalidTransition, NotFound, StaleVersion
from mes.ids import parse_uuid
from mes.models import (
    Equipment,
    EquipmentCalendar,
    EquipmentLevel,
    UnavailableWindow,
)
from mes.principal import Principal
from mes.records import apply_update, check_version, fetch_page
from mes.scheduling.calendar import (
    Interval,
    as_utc_checked,
    clip_intervals,
    merge_intervals,
    off_shift,
    shift_overlap_problem,
)
from mes.scheduling.resource_schemas import (
    CalendarPublic,
    CalendarPut,
    ShiftPublic,
    UnavailableCreate,
    UnavailablePublic,
)

# Upcoming windows shown with a calendar; the full list pages through /unavailable.
UPCOMING_WINDOWS = 100

CALENDAR_FIELDS = ("equipment_code", "timezone", "shifts")
WINDOW_FIELDS = ("equipment_code", "start", "end", "kind", "reason", "is_cancelled")


# --- the scheduler's read ------------------------------------------------------------------------


async def units_by_code(session: AsyncSession, codes: Sequence[str]) -> dict[str, Equipment]:
    """The units named by ``codes`` (in that order, once each); NotFound names the missing."""
    wanted = list(dict.fromkeys(codes))
    if not wanted:
        return {}
    rows = await session.execute(select(Equipment).where(col(Equipment.code).in_(wanted)))
    found = {row.code: row for row in rows.scalars()}
    missing = [code for code in wanted if code not in found]
    if missing:
        raise NotFound(f"equipment {', '.join(missing)} does not exist")
    return {code: found[code] for code in wanted}


async def unavailable_intervals(
    session: AsyncSession, unit_codes: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[Interval]]:
    """SCH-3: per unit code, the sorted, disjoint UTC intervals within [start, end) when the
    unit cannot work: its off-shift time (:func:`off_shift` over its calendar; no calendar or
    no shifts is round the clock) joined with its unavailable windows that are not cancelled.

    ``start`` and ``end`` must be timezone-aware; an empty window gives empty lists. Unknown
    codes raise NotFound."""
    start, end = as_utc_checked(start, "start"), as_utc_checked(end, "end")
    units = await units_by_code(session, unit_codes)
    if not units:
        return {}
    ids = [u.id for u in units.values()]
    calendars = {
        c.equipment_id: c
        for c in (
            await session.execute(
                select(EquipmentCalendar).where(col(EquipmentCalendar.equipment_id).in_(ids))
            )
        ).scalars()
    }
    windows: dict[uuid.UUID, list[Interval]] = {}
    if start < end:
        rows = await session.execute(
            select(UnavailableWindow).where(
                col(UnavailableWindow.equipment_id).in_(ids),
                col(UnavailableWindow.cancelled).is_(False),
                col(UnavailableWindow.start) < end,
                col(UnavailableWindow.end) > start,
            )
        )
        for w in rows.scalars():
            windows.setdefault(w.equipment_id, []).append((w.start, w.end))
    result: dict[str, list[Interval]] = {}
    for code, unit in units.items():
        calendar = calendars.get(unit.id)
        spans = off_shift(calendar.shifts, calendar.timezone, start, end) if calendar else []
        spans += clip_intervals(windows.get(unit.id, []), start, end)
        result[code] = merge_intervals(spans)
    return result


# --- calendars (SCH-3) ---------------------------------------------------------------------------


async def get_unit(session: AsyncSession, code: str, *, lock: bool = False) -> Equipment:
    """A unit by code or id: 404 when unknown, 422 when it is not a unit (only units have
    calendars and unavailable windows)."""
    eq = await equipment_service.get(session, code, lock=lock)
    if EquipmentLevel(eq.level) != EquipmentLevel.unit:
        raise InvalidInput(
            f"{eq.code} is a {eq.level}; only units have a calendar and unavailable windows",
            rule="SCH-3",
            field="path.code",
        )
    return eq


async def find_calendar(
    session: AsyncSession, equipment_id: uuid.UUID, *, lock: bool = False
) -> EquipmentCalendar | None:
    stmt = select(EquipmentCalendar).where(EquipmentCalendar.equipment_id == equipment_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def stored_shifts(data: CalendarPut) -> list[dict[str, Any]]:
    """The shifts as the calendar stores them (days sorted)."""
    return [
        {"name": s.name, "days": sorted(s.days), "start": s.start, "end": s.end}
        for s in data.shifts
    ]


def _calendar_view(code: str, calendar: EquipmentCalendar) -> dict[str, Any]:
    return {"equipment_code": code, "timezone": calendar.timezone, "shifts": calendar.shifts}


async def calendar_public(
    session: AsyncSession, eq: Equipment, calendar: EquipmentCalendar | None, now: datetime
) -> CalendarPublic:
    """The unit's shifts (none: round the clock) and its windows not yet over, soonest first."""
    rows = await session.execute(
        select(UnavailableWindow)
        .where(
            UnavailableWindow.equipment_id == eq.id,
            col(UnavailableWindow.cancelled).is_(False),
            col(UnavailableWindow.end) > now,
        )
        .order_by(col(UnavailableWindow.start), col(UnavailableWindow.id))
        .limit(UPCOMING_WINDOWS)
    )
    shifts = calendar.shifts if calendar is not None else []
    return CalendarPublic(
        equipment_code=eq.code,
        timezone=calendar.timezone if calendar is not None else "UTC",
        shifts=[ShiftPublic.model_validate(s) for s in shifts],
        is_round_the_clock=not shifts,
        unavailable=[window_public(w, eq.code) for w in rows.scalars()],
        updated_by=calendar.updated_by if calendar is not None else None,
        version=calendar.version if calendar is not None else 0,
        updated_at=calendar.updated_at if calendar is not None else None,
    )


async def set_calendar(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    expected_version: int,
    data: CalendarPut,
) -> tuple[Equipment, EquipmentCalendar]:
    """SCH-3: set a unit's whole calendar (audited). ``expected_version`` is the calendar's
    version, 0 when the unit has none yet; overlapping shifts are refused."""
    eq = await get_unit(session, code, lock=True)
    calendar = await find_calendar(session, eq.id, lock=True)
    current = calendar.version if calendar is not None else 0
    if expected_version != current:
        raise StaleVersion(
            f"the calendar of {eq.code} is at version {current}, not {expected_version}; "
            "reload and retry",
            headers={"ETag": f'"{current}"'},
            current_version=current,
        )
    shifts = stored_shifts(data)
    problem = shift_overlap_problem(shifts)
    if problem:
        raise InvalidInput(problem, rule="SCH-3", field="shifts")
    now = ctx.clock.now()
    before: dict[str, Any] | None = None
    fields: Iterable[str] = CALENDAR_FIELDS
    if calendar is None:
        calendar = EquipmentCalendar(
            equipment_id=eq.id,
            timezone=data.timezone,
            shifts=shifts,
            updated_by=principal.username,
            created_at=now,
            updated_at=now,
        )
    else:
        before = _calendar_view(eq.code, calendar)
        _, changed = apply_update(calendar, {"timezone": data.timezone, "shifts": shifts}, now)
        if not changed:
            return eq, calendar
        calendar.updated_by = principal.username
        fields = changed.keys()
    session.add(calendar)
    await audit.record_change(
        session,
        principal,
        action="create" if before is None else "update",
        entity_type="equipment_calendar",
        entity_id=eq.code,
        entity_version=calendar.version,
        old=before,
        new=_calendar_view(eq.code, calendar),
        fields=fields,
        reason=data.reason,
    )
    return eq, calendar


# --- unavailable windows (SCH-3) -----------------------------------------------------------------


def window_public(window: UnavailableWindow, code: str) -> UnavailablePublic:
    return UnavailablePublic(
        id=window.id,
        equipment_code=code,
        start=window.start,
        end=window.end,
        kind=window.kind,
        reason=window.reason,
        created_by=window.created_by,
        is_cancelled=window.cancelled,
        version=window.version,
        created_at=window.created_at,
        updated_at=window.updated_at,
    )


def _window_view(window: UnavailableWindow, code: str) -> dict[str, Any]:
    return window_public(window, code).model_dump(include=set(WINDOW_FIELDS))


async def create_window(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    data: UnavailableCreate,
) -> tuple[Equipment, UnavailableWindow]:
    """SCH-3: declare a time the unit cannot run work (audited; the window's reason is the
    audit reason). Windows may overlap each other: the scheduler joins them."""
    eq = await get_unit(session, code)
    if data.end <= data.start:
        raise InvalidInput("end must be after start", rule="SCH-3", field="end")
    now = ctx.clock.now()
    window = UnavailableWindow(
        equipment_id=eq.id,
        start=data.start,
        end=data.end,
        kind=data.kind,
        reason=data.reason,
        created_by=principal.username,
        created_at=now,
        updated_at=now,
    )
    session.add(window)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="unavailable_window",
        entity_id=window.id,
        entity_version=window.version,
        old=None,
        new=_window_view(window, eq.code),
        fields=WINDOW_FIELDS,
        reason=data.reason,
    )
    return eq, window


async def get_window(
    session: AsyncSession, code: str, window_id: str, *, lock: bool = False
) -> tuple[Equipment, UnavailableWindow]:
    """One window of one unit (404 when the id is unknown or belongs to another unit)."""
    eq = await get_unit(session, code)
    ident = parse_uuid(window_id)
    found = None
    if ident is not None:
        stmt = select(UnavailableWindow).where(
            UnavailableWindow.id == ident, UnavailableWindow.equipment_id == eq.id
        )
        if lock:
            stmt = stmt.with_for_update()
        found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"{eq.code} has no unavailable window {window_id!r}")
    return eq, found


async def cancel_window(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    window_id: str,
    expected_version: int,
    reason: str,
) -> tuple[Equipment, UnavailableWindow]:
    """SCH-3: withdraw a window (If-Match, reason; audited); the record stays, marked
    cancelled. Cancelling twice is 409."""
    eq, window = await get_window(session, code, window_id, lock=True)
    check_version(window, expected_version, f"unavailable window {window.id}")
    if window.cancelled:
        raise InvalidTransition(
            f"unavailable window {window.id} of {eq.code} is already cancelled", rule="SCH-3"
        )
    before = _window_view(window, eq.code)
    apply_update(window, {"cancelled": True}, ctx.clock.now())
    session.add(window)
    await audit.record_change(
        session,
        principal,
        action="cancel",
        entity_type="unavailable_window",
        entity_id=window.id,
        entity_version=window.version,
        old=before,
        new=_window_view(window, eq.code),
        fields=("is_cancelled",),
        reason=reason,
    )
    return eq, window


async def list_windows(
    session: AsyncSession,
    code: str,
    *,
    start: datetime | None,
    end: datetime | None,
    include_cancelled: bool,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[Equipment, list[UnavailablePublic], tuple[datetime, uuid.UUID] | None]:
    """A unit's windows overlapping [start, end) (either bound optional), by start time."""
    eq = await get_unit(session, code)
    if start is not None and end is not None and start >= end:
        raise InvalidInput("from must be before to", field="query.to")
    stmt = (
        select(UnavailableWindow)
        .where(UnavailableWindow.equipment_id == eq.id)
        .order_by(col(UnavailableWindow.start), col(UnavailableWindow.id))
    )
    if not include_cancelled:
        stmt = stmt.where(col(UnavailableWindow.cancelled).is_(False))
    if start is not None:
        stmt = stmt.where(col(UnavailableWindow.end) > start)
    if end is not None:
        stmt = stmt.where(col(UnavailableWindow.start) < end)
    if after is not None:
        at, ident = after
        stmt = stmt.where(
            or_(
                col(UnavailableWindow.start) > at,
                and_(col(UnavailableWindow.start) == at, col(UnavailableWindow.id) > ident),
            )
        )
    rows, more = await fetch_page(session, stmt, limit)
    last = (rows[-1].start, rows[-1].id) if more else None
    return eq, [window_public(w, eq.code) for w in rows], last
