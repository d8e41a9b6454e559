"""Scheduling resources API: the changeover matrix (SCH-2), unit calendars and unavailable
windows (SCH-3). Everybody signed in reads; planners and supervisors write (RELIABILITY 3.1:
"create, schedule, release work orders"), and the administrator, who keeps the plant model,
also keeps its changeover rules and calendars."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from mes.clock import UtcDateTime
from mes.errors import InvalidInput
from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    SessionDep,
    VersionDep,
    decode_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.models import Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.scheduling import availability, changeovers
from mes.scheduling.resource_schemas import (
    CalendarPublic,
    CalendarPut,
    CancelRequest,
    ChangeoverCreate,
    ChangeoverList,
    ChangeoverPublic,
    ChangeoverUpdate,
    UnavailableCreate,
    UnavailableList,
    UnavailablePublic,
)

router = APIRouter(prefix=API_PREFIX, tags=["scheduling resources"])

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
# Changeover rules and calendars are plant configuration: the plant-model editors keep them
# with the planners.
ConfigEditor = Annotated[Principal, Depends(Allow(Role.planner, Role.supervisor, Role.admin))]
# Downtime windows are planning decisions about production time.
Planner = Annotated[Principal, Depends(Allow(Role.planner, Role.supervisor))]

FamilyQuery = Annotated[str | None, Query(min_length=1, max_length=40)]
CodeQuery = Annotated[str | None, Query(min_length=1, max_length=60)]


def _changeover_cursor(cursor: str | None) -> tuple[str, str, str] | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return value[0], value[1], value[2]
    raise InvalidInput("cursor is not a value returned by this API", field="query.cursor")


def _window_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        try:
            at = datetime.fromisoformat(value[0])
            ident = uuid.UUID(value[1])
        except ValueError:
            pass
        else:
            if at.tzinfo is not None:
                return at, ident
    raise InvalidInput("cursor is not a value returned by this API", field="query.cursor")


# --- changeover matrix (SCH-2) -------------------------------------------------------------------


@router.get("/changeovers", response_model=ChangeoverList)
async def list_changeovers(
    session: SessionDep,
    _: Reader,
    equipment_class: CodeQuery = None,
    equipment_code: CodeQuery = None,
    from_family: FamilyQuery = None,
    to_family: FamilyQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> ChangeoverList:
    """Changeover rules (SCH-2) by scope, then from and to family. ``equipment_class`` lists a
    class's rules, ``equipment_code`` a unit's own rules (which win over its class's)."""
    items, last = await changeovers.list_changeovers(
        session,
        equipment_class=equipment_class,
        equipment_code=equipment_code,
        from_family=from_family,
        to_family=to_family,
        after=_changeover_cursor(cursor),
        limit=limit,
    )
    return ChangeoverList(items=items, next_cursor=encode_cursor(list(last)) if last else None)


@router.post("/changeovers", status_code=201, response_model=ChangeoverPublic)
async def create_changeover(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: ConfigEditor,
    body: ChangeoverCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Add a changeover rule (SCH-2) for an equipment class or for one unit - exactly one of
    the two - from one product family to another (never to itself). A second rule for the same
    scope and pair is 409. Audited."""

    async def create() -> tuple[int, ChangeoverPublic, dict[str, str]]:
        rule = await changeovers.create_changeover(ctx, session, principal, body)
        return (
            201,
            changeovers.changeover_public(rule),
            {"ETag": etag(rule.version), "Location": f"{API_PREFIX}/changeovers/{rule.id}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/changeovers/{rule_id}", response_model=ChangeoverPublic)
async def get_changeover(
    rule_id: str, session: SessionDep, _: Reader, response: Response
) -> ChangeoverPublic:
    """One changeover rule, with its ETag."""
    rule = await changeovers.get_changeover(session, rule_id)
    response.headers["ETag"] = etag(rule.version)
    return changeovers.changeover_public(rule)


@router.patch("/changeovers/{rule_id}", response_model=ChangeoverPublic)
async def update_changeover(
    rule_id: str,
    body: ChangeoverUpdate,
    principal: ConfigEditor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> ChangeoverPublic:
    """Change a rule's minutes (If-Match and a reason required); 0 means no changeover is
    needed for the pair. Audited."""
    rule = await changeovers.update_changeover(ctx, session, principal, rule_id, version, body)
    response.headers["ETag"] = etag(rule.version)
    return changeovers.changeover_public(rule)


# --- calendars (SCH-3) ---------------------------------------------------------------------------


@router.get("/equipment/{code}/calendar", response_model=CalendarPublic)
async def get_calendar(
    code: str, ctx: ContextDep, session: SessionDep, _: Reader, response: Response
) -> CalendarPublic:
    """A unit's shifts in its local time zone (none: it works round the clock) and its
    unavailable windows not yet over (SCH-3). ETag ``"0"`` when no calendar was ever set."""
    eq = await availability.get_unit(session, code)
    calendar = await availability.find_calendar(session, eq.id)
    public = await availability.calendar_public(session, eq, calendar, ctx.clock.now())
    response.headers["ETag"] = etag(public.version)
    return public


@router.put("/equipment/{code}/calendar", response_model=CalendarPublic)
async def set_calendar(
    code: str,
    body: CalendarPut,
    principal: ConfigEditor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> CalendarPublic:
    """Replace a unit's calendar (SCH-3): IANA time zone and weekly shifts (days 0 = Monday;
    an end not after the start runs past midnight); shifts must not overlap; an empty list
    means round the clock. If-Match is the calendar's version, ``"0"`` for the first one.
    Audited."""
    eq, calendar = await availability.set_calendar(ctx, session, principal, code, version, body)
    response.headers["ETag"] = etag(calendar.version)
    return await availability.calendar_public(session, eq, calendar, ctx.clock.now())


# --- unavailable windows (SCH-3) -----------------------------------------------------------------


@router.post("/equipment/{code}/unavailable", status_code=201, response_model=UnavailablePublic)
async def create_unavailable_window(
    code: str,
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Planner,
    body: UnavailableCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Declare a time a unit cannot run work (SCH-3): maintenance, calibration, planned
    downtime or a breakdown (its end the expected return); start before end. Audited with the
    window's reason."""

    async def create() -> tuple[int, UnavailablePublic, dict[str, str]]:
        eq, window = await availability.create_window(ctx, session, principal, code, body)
        return (
            201,
            availability.window_public(window, eq.code),
            {
                "ETag": etag(window.version),
                "Location": f"{API_PREFIX}/equipment/{eq.code}/unavailable/{window.id}",
            },
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/equipment/{code}/unavailable", response_model=UnavailableList)
async def list_unavailable_windows(
    code: str,
    session: SessionDep,
    _: Reader,
    start: Annotated[
        UtcDateTime | None, Query(alias="from", description="Windows ending after this.")
    ] = None,
    end: Annotated[
        UtcDateTime | None, Query(alias="to", description="Windows starting before this.")
    ] = None,
    include_cancelled: bool = False,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> UnavailableList:
    """A unit's unavailable windows overlapping [from, to) (both optional), by start time."""
    _unit, items, last = await availability.list_windows(
        session,
        code,
        start=start,
        end=end,
        include_cancelled=include_cancelled,
        after=_window_cursor(cursor),
        limit=limit,
    )
    return UnavailableList(
        items=items,
        next_cursor=encode_cursor([last[0].isoformat(), str(last[1])]) if last else None,
    )


@router.get("/equipment/{code}/unavailable/{window_id}", response_model=UnavailablePublic)
async def get_unavailable_window(
    code: str, window_id: str, session: SessionDep, _: Reader, response: Response
) -> UnavailablePublic:
    """One unavailable window of a unit, with its ETag."""
    eq, window = await availability.get_window(session, code, window_id)
    response.headers["ETag"] = etag(window.version)
    return availability.window_public(window, eq.code)


@router.post("/equipment/{code}/unavailable/{window_id}/cancel", response_model=UnavailablePublic)
async def cancel_unavailable_window(
    code: str,
    window_id: str,
    body: CancelRequest,
    principal: Planner,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UnavailablePublic:
    """Withdraw a window (If-Match and a reason required): the record stays, marked
    cancelled, and the unit is available again in that time (SCH-3). Audited."""
    eq, window = await availability.cancel_window(
        ctx, session, principal, code, window_id, version, body.reason
    )
    response.headers["ETag"] = etag(window.version)
    return availability.window_public(window, eq.code)
