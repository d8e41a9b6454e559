"""What a unit can do and when: the changeover matrix (SCH-2) and unit calendars with their
unavailable windows (SCH-3) - the API services, and the two reads the scheduler uses.

SCH-2: between two tasks of different product families a unit needs the changeover minutes
of its matrix. A rule is written for every unit of an equipment class or for one unit; the
unit's own rule wins over its class's for the same (from, to) pair. A family never changes
over into itself, so such a rule is refused.

SCH-3: a unit cannot run work outside its shifts or inside an unavailable window
(maintenance, calibration, planned downtime, a breakdown). Shifts are local wall-clock times
in the calendar's IANA time zone, expanded day by day with zoneinfo so that a DST change
shortens or lengthens the shift exactly as the clock on the shop-floor wall does. A unit with
no calendar, or with no shifts, works round the clock.

Every write is audited in the caller's transaction (AT-1) with a reason (AT-3).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment_service
from mes.errors import AlreadyExists, InvalidInput, InvalidTransition, NotFound, StaleVersion
from mes.ids import parse_uuid
from mes.models import (
    ChangeoverRule,
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
    ChangeoverCreate,
    ChangeoverPublic,
    ChangeoverUpdate,
    ShiftPublic,
    UnavailableCreate,
    UnavailablePublic,
)

# Upcoming windows shown with a calendar; the full list pages through /unavailable.
UPCOMING_WINDOWS = 100

CHANGEOVER_FIELDS = ("equipment_class", "equipment_code", "from_family", "to_family", "minutes")
CALENDAR_FIELDS = ("equipment_code", "timezone", "shifts")
WINDOW_FIELDS = ("equipment_code", "start", "end", "kind", "reason", "is_cancelled")


# --- the scheduler's reads -----------------------------------------------------------------------


async def _equipment_by_code(session: AsyncSession, codes: Sequence[str]) -> dict[str, Equipment]:
    wanted = list(dict.fromkeys(codes))
    if not wanted:
        return {}
    rows = await session.execute(select(Equipment).where(col(Equipment.code).in_(wanted)))
    found = {row.code: row for row in rows.scalars()}
    missing = [code for code in wanted if code not in found]
    if missing:
        raise NotFound(f"equipment {', '.join(missing)} does not exist")
    return {code: found[code] for code in wanted}


async def changeover_matrix(
    session: AsyncSession, unit_codes: Sequence[str]
) -> dict[str, dict[tuple[str, str], int]]:
    """SCH-2: per unit code, the changeover minutes for each (from family, to family) pair:
    the rules of the unit's equipment class, overridden pair by pair by the unit's own rules.

    A pair missing from a unit's matrix has no rule (the scheduler then falls back to the
    task's own cleaning time); a rule of 0 minutes is an explicit "no changeover". Unknown
    codes raise NotFound."""
    units = await _equipment_by_code(session, unit_codes)
    if not units:
        return {}
    class_ids = {u.equipment_class_id for u in units.values() if u.equipment_class_id}
    unit_ids = {u.id for u in units.values()}
    rows = await session.execute(
        select(ChangeoverRule).where(
            or_(
                col(ChangeoverRule.equipment_class_id).in_(class_ids),
                col(ChangeoverRule.equipment_id).in_(unit_ids),
            )
        )
    )
    by_class: dict[uuid.UUID, dict[tuple[str, str], int]] = {}
    by_unit: dict[uuid.UUID, dict[tuple[str, str], int]] = {}
    for rule in rows.scalars():
        pair = (rule.from_family, rule.to_family)
        if rule.equipment_id is not None:
            by_unit.setdefault(rule.equipment_id, {})[pair] = rule.minutes
        elif rule.equipment_class_id is not None:
            by_class.setdefault(rule.equipment_class_id, {})[pair] = rule.minutes
    matrix: dict[str, dict[tuple[str, str], int]] = {}
    for code, unit in units.items():
        own = dict(by_class.get(unit.equipment_class_id, {})) if unit.equipment_class_id else {}
        own.update(by_unit.get(unit.id, {}))
        matrix[code] = own
    return matrix


async def unavailable_intervals(
    session: AsyncSession, unit_codes: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[Interval]]:
    """SCH-3: per unit code, the sorted, disjoint UTC intervals within [start, end) when the
    unit cannot work: its off-shift time (:func:`off_shift` over its calendar; no calendar or
    no shifts is round the clock) joined with its unavailable windows that are not cancelled.

    ``start`` and ``end`` must be timezone-aware; an empty window gives empty lists. Unknown
    codes raise NotFound."""
    start, end = as_utc_checked(start, "start"), as_utc_checked(end, "end")
    units = await _equipment_by_code(session, unit_codes)
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


# --- changeover rules (SCH-2) --------------------------------------------------------------------


def _scope(rule: ChangeoverRule) -> tuple[str | None, str | None]:
    """(equipment_class, equipment_code) of a rule, read from its ``scope_code``."""
    kind, _, code = rule.scope_code.partition(":")
    return (code, None) if kind == "class" else (None, code)


def changeover_public(rule: ChangeoverRule) -> ChangeoverPublic:
    equipment_class, equipment_code = _scope(rule)
    return ChangeoverPublic(
        id=rule.id,
        equipment_class=equipment_class,
        equipment_code=equipment_code,
        from_family=rule.from_family,
        to_family=rule.to_family,
        minutes=rule.minutes,
        created_by=rule.created_by,
        version=rule.version,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def _changeover_view(rule: ChangeoverRule) -> dict[str, Any]:
    return changeover_public(rule).model_dump(include=set(CHANGEOVER_FIELDS))


async def find_changeover(
    session: AsyncSession, scope_code: str, from_family: str, to_family: str
) -> ChangeoverRule | None:
    """The rule of one scope (``class:<code>`` or ``unit:<code>``) for one pair, if any."""
    stmt = select(ChangeoverRule).where(
        ChangeoverRule.scope_code == scope_code,
        ChangeoverRule.from_family == from_family,
        ChangeoverRule.to_family == to_family,
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_changeover(
    session: AsyncSession, rule_id: str, *, lock: bool = False
) -> ChangeoverRule:
    ident = parse_uuid(rule_id)
    found = None
    if ident is not None:
        stmt = select(ChangeoverRule).where(ChangeoverRule.id == ident)
        if lock:
            stmt = stmt.with_for_update()
        found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"changeover rule {rule_id!r} does not exist")
    return found


async def _changeover_scope(
    session: AsyncSession, data: ChangeoverCreate
) -> tuple[str, uuid.UUID | None, uuid.UUID | None]:
    """(scope_code, equipment_class_id, equipment_id) of a new rule; the scope's row is
    locked so that two requests for the same rule cannot both pass the duplicate check."""
    if data.equipment_class is not None and data.equipment_code is not None:
        raise InvalidInput(
            "give equipment_class (a rule for every unit of the class) or equipment_code "
            "(a rule for one unit), not both",
            rule="SCH-2",
            field="equipment_code",
        )
    if data.equipment_class is not None:
        found = await equipment_service.find_class(session, data.equipment_class, lock=True)
        if found is None:
            raise InvalidInput(
                f"equipment class {data.equipment_class!r} does not exist",
                field="equipment_class",
            )
        return f"class:{found.code}", found.id, None
    if data.equipment_code is not None:
        unit = await equipment_service.find(session, data.equipment_code, lock=True)
        if unit is None:
            raise InvalidInput(
                f"equipment {data.equipment_code!r} does not exist", field="equipment_code"
            )
        if EquipmentLevel(unit.level) != EquipmentLevel.unit:
            raise InvalidInput(
                f"{unit.code} is a {unit.level}; changeover rules are for units or equipment "
                "classes",
                rule="SCH-2",
                field="equipment_code",
            )
        return f"unit:{unit.code}", None, unit.id
    raise InvalidInput(
        "give equipment_class (a rule for every unit of the class) or equipment_code "
        "(a rule for one unit)",
        rule="SCH-2",
        field="equipment_class",
    )


async def create_changeover(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: ChangeoverCreate
) -> ChangeoverRule:
    """SCH-2: add a changeover rule (audited). A second rule for the same scope and pair is
    409 - change the first one's minutes instead."""
    if data.from_family == data.to_family:
        raise InvalidInput(
            f"from_family and to_family are both {data.from_family!r}: a family never changes "
            "over into itself",
            rule="SCH-2",
            field="to_family",
        )
    scope_code, class_id, unit_id = await _changeover_scope(session, data)
    existing = await find_changeover(session, scope_code, data.from_family, data.to_family)
    if existing is not None:
        raise AlreadyExists(
            f"{scope_code} already has a rule {data.from_family} -> {data.to_family} "
            f"({existing.minutes} min); change its minutes instead",
            rule="SCH-2",
            field="to_family",
            existing_id=str(existing.id),
        )
    now = ctx.clock.now()
    rule = ChangeoverRule(
        scope_code=scope_code,
        equipment_class_id=class_id,
        equipment_id=unit_id,
        from_family=data.from_family,
        to_family=data.to_family,
        minutes=data.minutes,
        created_by=principal.username,
        created_at=now,
        updated_at=now,
    )
    session.add(rule)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="changeover_rule",
        entity_id=rule.id,
        entity_version=rule.version,
        old=None,
        new=_changeover_view(rule),
        fields=CHANGEOVER_FIELDS,
        reason=data.reason,
    )
    return rule


async def update_changeover(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    rule_id: str,
    expected_version: int,
    data: ChangeoverUpdate,
) -> ChangeoverRule:
    """SCH-2: change a rule's minutes (If-Match, reason; audited). Scope and families are the
    rule's identity and never change."""
    rule = await get_changeover(session, rule_id, lock=True)
    check_version(rule, expected_version, f"changeover rule {rule.id}")
    old, new = apply_update(rule, {"minutes": data.minutes}, ctx.clock.now())
    if new:
        session.add(rule)
        await audit.record_change(
            session,
            principal,
            action="update",
            entity_type="changeover_rule",
            entity_id=rule.id,
            entity_version=rule.version,
            old=old,
            new=new,
            fields=new.keys(),
            reason=data.reason,
        )
    return rule


async def list_changeovers(
    session: AsyncSession,
    *,
    equipment_class: str | None,
    equipment_code: str | None,
    from_family: str | None,
    to_family: str | None,
    after: tuple[str, str, str] | None,
    limit: int,
) -> tuple[list[ChangeoverPublic], tuple[str, str, str] | None]:
    """Rules ordered by scope, then from and to family; filtered by the class's or the unit's
    own rules (a unit's effective matrix is :func:`changeover_matrix`)."""
    stmt = select(ChangeoverRule).order_by(
        col(ChangeoverRule.scope_code),
        col(ChangeoverRule.from_family),
        col(ChangeoverRule.to_family),
    )
    if equipment_class is not None and equipment_code is not None:
        raise InvalidInput(
            "filter by equipment_class or by equipment_code, not both",
            field="query.equipment_code",
        )
    if equipment_class is not None:
        found = await equipment_service.find_class(session, equipment_class)
        if found is None:
            raise InvalidInput(
                f"equipment class {equipment_class!r} does not exist",
                field="query.equipment_class",
            )
        stmt = stmt.where(ChangeoverRule.scope_code == f"class:{found.code}")
    if equipment_code is not None:
        unit = await equipment_service.find(session, equipment_code)
        if unit is None:
            raise InvalidInput(
                f"equipment {equipment_code!r} does not exist", field="query.equipment_code"
            )
        stmt = stmt.where(ChangeoverRule.scope_code == f"unit:{unit.code}")
    if from_family is not None:
        stmt = stmt.where(ChangeoverRule.from_family == from_family)
    if to_family is not None:
        stmt = stmt.where(ChangeoverRule.to_family == to_family)
    if after is not None:
        scope, first, second = after
        stmt = stmt.where(
            or_(
                col(ChangeoverRule.scope_code) > scope,
                and_(
                    col(ChangeoverRule.scope_code) == scope,
                    or_(
                        col(ChangeoverRule.from_family) > first,
                        and_(
                            col(ChangeoverRule.from_family) == first,
                            col(ChangeoverRule.to_family) > second,
                        ),
                    ),
                ),
            )
        )
    rows, more = await fetch_page(session, stmt, limit)
    last = (rows[-1].scope_code, rows[-1].from_family, rows[-1].to_family) if more else None
    return [changeover_public(r) for r in rows], last


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
    if calendar is None:
        calendar = EquipmentCalendar(
            equipment_id=eq.id,
            timezone=data.timezone,
            shifts=shifts,
            updated_by=principal.username,
            created_at=now,
            updated_at=now,
        )
        session.add(calendar)
        await audit.record_change(
            session,
            principal,
            action="create",
            entity_type="equipment_calendar",
            entity_id=eq.code,
            entity_version=calendar.version,
            old=None,
            new=_calendar_view(eq.code, calendar),
            fields=CALENDAR_FIELDS,
            reason=data.reason,
        )
        return eq, calendar
    before = _calendar_view(eq.code, calendar)
    _, new = apply_update(calendar, {"timezone": data.timezone, "shifts": shifts}, now)
    if new:
        calendar.updated_by = principal.username
        session.add(calendar)
        await audit.record_change(
            session,
            principal,
            action="update",
            entity_type="equipment_calendar",
            entity_id=eq.code,
            entity_version=calendar.version,
            old=before,
            new=_calendar_view(eq.code, calendar),
            fields=new.keys(),
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
