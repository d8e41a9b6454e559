"""Plant-model services: equipment hierarchy, equipment classes, status, qualification.

Every create and update is audited in the same transaction (AT-1). Qualification approval is
an e-signed QA decision bound to the equipment version it approves (ES-3).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import rules
from mes.equipment.schemas import (
    EquipmentClassCreate,
    EquipmentClassPublic,
    EquipmentClassUpdate,
    EquipmentCreate,
    EquipmentPublic,
    EquipmentUpdate,
    QualificationApproval,
)
from mes.errors import AlreadyExists, InvalidInput, InvalidTransition, NotFound
from mes.models import (
    Equipment,
    EquipmentClass,
    EquipmentKind,
    EquipmentLevel,
    EquipmentStatus,
    ESignature,
    SignatureMeaning,
)
from mes.principal import Principal
from mes.records import apply_update, bump_version, by_id_or_code, check_version, fetch_page
from mes.signature import service as signatures

EQUIPMENT_FIELDS = (
    "code",
    "name",
    "level",
    "kind",
    "parent_code",
    "site_code",
    "equipment_class",
    "room_code",
    "asset_no",
    "status",
    "calibration_due_at",
    "maintenance_due_at",
    "qualified_until",
    "cleanroom_class",
    "is_dry_room",
    "description",
    "is_active",
)
CLASS_FIELDS = ("code", "name", "description")


# --- lookups -------------------------------------------------------------------------------------


StatusListener = Callable[[AppContext, AsyncSession, Principal, Equipment, str], Awaitable[object]]
_LISTENERS: dict[EquipmentStatus, list[StatusListener]] = {}


def on_status_change(target: EquipmentStatus, listener: StatusListener) -> None:
    """Call ``listener`` in the same transaction whenever a unit enters ``target`` (a unit going
    down marks its scheduled operations for rescheduling)."""
    _LISTENERS.setdefault(target, []).append(listener)


def usability(eq: Equipment, now: datetime) -> list[str]:
    """PROC-3: why the unit may not be used for production now (empty when usable)."""
    return rules.usability_problems(
        level=EquipmentLevel(eq.level),
        status=EquipmentStatus(eq.status) if eq.status else None,
        is_active=eq.is_active,
        qualified_until=eq.qualified_until,
        calibration_due_at=eq.calibration_due_at,
        maintenance_due_at=eq.maintenance_due_at,
        now=now,
    )


async def find(session: AsyncSession, code: str, *, lock: bool = False) -> Equipment | None:
    """By business code, or by id (API.md: ids are also accepted)."""
    stmt, params = by_id_or_code(Equipment, "code", code, lock=lock)
    return (await session.execute(stmt, params)).scalar_one_or_none()


async def get(session: AsyncSession, code: str, *, lock: bool = False) -> Equipment:
    eq = await find(session, code, lock=lock)
    if eq is None:
        raise NotFound(f"equipment {code!r} does not exist")
    return eq


async def find_class(
    session: AsyncSession, code: str, *, lock: bool = False
) -> EquipmentClass | None:
    stmt = select(EquipmentClass).where(EquipmentClass.code == code)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_class(session: AsyncSession, code: str, *, lock: bool = False) -> EquipmentClass:
    found = await find_class(session, code, lock=lock)
    if found is None:
        raise NotFound(f"equipment class {code!r} does not exist")
    return found


# id -> code of equipment seen by this process. A code never changes (EquipmentUpdate has no
# code) and an id is never reused, so entries never go stale; the plant has hundreds of units.
_CODE_CACHE: dict[uuid.UUID, str] = {}
_CODE_CACHE_MAX = 50_000
_CODES = select(Equipment.id, Equipment.code).where(
    col(Equipment.id).in_(bindparam("ids", expanding=True))
)


async def codes_of(session: AsyncSession, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    """The codes of the equipment ``ids`` (None ignored); read once per process."""
    wanted = {i for i in ids if i is not None}
    missing = wanted - _CODE_CACHE.keys()
    if missing:
        if len(_CODE_CACHE) + len(missing) > _CODE_CACHE_MAX:
            _CODE_CACHE.clear()
            missing = wanted
        rows = await session.execute(_CODES, {"ids": list(missing)})
        _CODE_CACHE.update({row.id: row.code for row in rows})
    return {i: _CODE_CACHE[i] for i in wanted if i in _CODE_CACHE}


async def _class_codes(
    session: AsyncSession, ids: Iterable[uuid.UUID | None]
) -> dict[uuid.UUID, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(EquipmentClass.id, EquipmentClass.code).where(col(EquipmentClass.id).in_(wanted))
    )
    return {row.id: row.code for row in rows}


def _view(
    eq: Equipment, codes: Mapping[uuid.UUID, str], class_codes: Mapping[uuid.UUID, str]
) -> dict[str, Any]:
    def code_of(ident: uuid.UUID | None) -> str | None:
        return codes.get(ident) if ident is not None else None

    return {
        "code": eq.code,
        "name": eq.name,
        "level": eq.level,
        "kind": eq.kind,
        "parent_code": code_of(eq.parent_id),
        "site_code": code_of(eq.site_id),
        "equipment_class": class_codes.get(eq.equipment_class_id)
        if eq.equipment_class_id
        else None,
        "room_code": code_of(eq.room_id),
        "asset_no": eq.asset_no,
        "status": eq.status,
        "calibration_due_at": eq.calibration_due_at,
        "maintenance_due_at": eq.maintenance_due_at,
        "qualified_until": eq.qualified_until,
        "cleanroom_class": eq.cleanroom_class,
        "is_dry_room": eq.is_dry_room,
        "description": eq.description,
        "is_active": eq.is_active,
    }


async def view(session: AsyncSession, eq: Equipment) -> dict[str, Any]:
    """The audited and signed content of one equipment record, with codes for references."""
    codes = await codes_of(session, (eq.parent_id, eq.site_id, eq.room_id))
    class_codes = await _class_codes(session, (eq.equipment_class_id,))
    return _view(eq, codes, class_codes)


def _public(eq: Equipment, content: Mapping[str, Any], now: datetime) -> EquipmentPublic:
    problems = usability(eq, now)
    return EquipmentPublic(
        **content,
        is_usable=EquipmentLevel(eq.level) == EquipmentLevel.unit and not problems,
        blocking_reasons=problems,
        version=eq.version,
        created_at=eq.created_at,
        updated_at=eq.updated_at,
    )


async def public(session: AsyncSession, eq: Equipment, now: datetime) -> EquipmentPublic:
    return _public(eq, await view(session, eq), now)


async def list_equipment(
    session: AsyncSession,
    *,
    now: datetime,
    level: EquipmentLevel | None,
    parent_code: str | None,
    site_code: str | None,
    status: EquipmentStatus | None,
    after: str | None,
    limit: int,
) -> tuple[list[EquipmentPublic], str | None]:
    stmt = select(Equipment).order_by(col(Equipment.code))
    if level is not None:
        stmt = stmt.where(Equipment.level == level)
    if status is not None:
        stmt = stmt.where(Equipment.status == status)
    if parent_code is not None:
        parent = await find(session, parent_code)
        if parent is None:
            raise InvalidInput(
                f"parent_code {parent_code!r} is not in the plant model", field="query.parent_code"
            )
        stmt = stmt.where(Equipment.parent_id == parent.id)
    if site_code is not None:
        site = await find(session, site_code)
        if site is None or EquipmentLevel(site.level) != EquipmentLevel.site:
            raise InvalidInput(f"site_code {site_code!r} is not a site", field="query.site_code")
        stmt = stmt.where(Equipment.site_id == site.id)
    if after is not None:
        stmt = stmt.where(col(Equipment.code) > after)
    rows, more = await fetch_page(session, stmt, limit)
    codes = await codes_of(session, [i for r in rows for i in (r.parent_id, r.site_id, r.room_id)])
    class_codes = await _class_codes(session, [r.equipment_class_id for r in rows])
    items = [_public(r, _view(r, codes, class_codes), now) for r in rows]
    return items, (rows[-1].code if more else None)


# --- equipment classes ---------------------------------------------------------------------------


def class_public(found: EquipmentClass) -> EquipmentClassPublic:
    return EquipmentClassPublic(
        code=found.code,
        name=found.name,
        description=found.description,
        version=found.version,
        created_at=found.created_at,
        updated_at=found.updated_at,
    )


async def create_class(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: EquipmentClassCreate
) -> EquipmentClass:
    if await find_class(session, data.code) is not None:
        raise AlreadyExists(f"equipment class {data.code!r} already exists", field="code")
    now = ctx.clock.now()
    created = EquipmentClass(
        code=data.code, name=data.name, description=data.description, created_at=now, updated_at=now
    )
    session.add(created)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="equipment_class",
        entity_id=created.code,
        entity_version=created.version,
        old=None,
        new={f: getattr(created, f) for f in CLASS_FIELDS},
        fields=CLASS_FIELDS,
        reason=data.reason,
    )
    return created


async def update_class(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    expected_version: int | None,
    data: EquipmentClassUpdate,
) -> EquipmentClass:
    found = await get_class(session, code, lock=True)
    check_version(found, expected_version, f"equipment class {code!r}")
    values = data.model_dump(exclude_unset=True, exclude={"reason"})
    if values.get("name", "") is None:
        raise InvalidInput("name cannot be removed", field="name")
    old, new = apply_update(found, values, ctx.clock.now())
    if new:
        session.add(found)
        await audit.record_change(
            session,
            principal,
            action="update",
            entity_type="equipment_class",
            entity_id=found.code,
            entity_version=found.version,
            old=old,
            new=new,
            fields=new.keys(),
            reason=data.reason,
        )
    return found


async def list_classes(
    session: AsyncSession, *, after: str | None, limit: int
) -> tuple[list[EquipmentClassPublic], str | None]:
    stmt = select(EquipmentClass).order_by(col(EquipmentClass.code))
    if after is not None:
        stmt = stmt.where(col(EquipmentClass.code) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return [class_public(r) for r in rows], (rows[-1].code if more else None)


# --- equipment -----------------------------------------------------------------------------------


async def _resolve_parent(
    session: AsyncSession, level: EquipmentLevel, parent_code: str | None
) -> Equipment | None:
    parent = None
    if parent_code is not None:
        parent = await find(session, parent_code)
        if parent is None:
            raise InvalidInput(f"parent {parent_code!r} does not exist", field="parent_code")
    problem = rules.hierarchy_problem(level, EquipmentLevel(parent.level) if parent else None)
    if problem:
        raise InvalidInput(problem, field="parent_code")
    return parent


async def _resolve_room(
    session: AsyncSession, room_code: str | None, site_id: uuid.UUID | None
) -> uuid.UUID | None:
    if room_code is None:
        return None
    room = await find(session, room_code)
    if room is None or EquipmentLevel(room.level) != EquipmentLevel.room:
        raise InvalidInput(
            f"room {room_code!r} is not a room of the plant model", field="room_code"
        )
    if room.site_id != site_id:
        raise InvalidInput(f"room {room_code!r} is on another site", field="room_code")
    return room.id


async def _resolve_class(session: AsyncSession, code: str | None) -> uuid.UUID | None:
    if code is None:
        return None
    found = await find_class(session, code)
    if found is None:
        raise InvalidInput(f"equipment class {code!r} does not exist", field="equipment_class")
    return found.id


def _check_level_fields(
    level: EquipmentLevel,
    *,
    kind: EquipmentKind | None,
    equipment_class_id: uuid.UUID | None,
    room_id: uuid.UUID | None,
    status: EquipmentStatus | None,
    cleanroom_class: str | None,
    is_dry_room: bool,
) -> None:
    problem = rules.kind_problem(level, kind)
    if problem:
        raise InvalidInput(problem, field="kind")
    if level == EquipmentLevel.unit:
        if equipment_class_id is None:
            raise InvalidInput("a unit needs an equipment_class", field="equipment_class")
    else:
        for name, value in (
            ("equipment_class", equipment_class_id),
            ("room_code", room_id),
            ("status", status),
        ):
            if value is not None:
                raise InvalidInput(f"{name} applies to units only, not to a {level}", field=name)
    if level != EquipmentLevel.room and (cleanroom_class is not None or is_dry_room):
        field = "cleanroom_class" if cleanroom_class is not None else "is_dry_room"
        raise InvalidInput(f"{field} applies to rooms only, not to a {level}", field=field)


async def create_equipment(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: EquipmentCreate
) -> Equipment:
    if await find(session, data.code) is not None:
        raise AlreadyExists(f"equipment {data.code!r} already exists", field="code")
    parent = await _resolve_parent(session, data.level, data.parent_code)
    if data.level == EquipmentLevel.site:
        site_id = None
    else:
        site_id = parent.site_id if parent is not None and parent.site_id else None
        if parent is not None and EquipmentLevel(parent.level) == EquipmentLevel.site:
            site_id = parent.id
    class_id = await _resolve_class(session, data.equipment_class)
    room_id = await _resolve_room(session, data.room_code, site_id)
    status = data.status
    if status == EquipmentStatus.running:
        raise InvalidInput(
            "a new unit cannot start as running; running comes from an operation start or "
            "from telemetry",
            field="status",
        )
    if data.level == EquipmentLevel.unit and status is None:
        status = EquipmentStatus.idle
    _check_level_fields(
        data.level,
        kind=data.kind,
        equipment_class_id=class_id,
        room_id=room_id,
        status=data.status if data.level != EquipmentLevel.unit else None,
        cleanroom_class=data.cleanroom_class,
        is_dry_room=data.is_dry_room,
    )
    now = ctx.clock.now()
    eq = Equipment(
        code=data.code,
        name=data.name,
        level=data.level,
        kind=data.kind,
        parent_id=parent.id if parent else None,
        site_id=site_id,
        equipment_class_id=class_id,
        room_id=room_id,
        asset_no=data.asset_no,
        status=status,
        calibration_due_at=data.calibration_due_at,
        maintenance_due_at=data.maintenance_due_at,
        cleanroom_class=data.cleanroom_class,
        is_dry_room=data.is_dry_room,
        description=data.description,
        created_at=now,
        updated_at=now,
    )
    if data.level == EquipmentLevel.site:
        eq.site_id = eq.id
    session.add(eq)
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="equipment",
        entity_id=eq.code,
        entity_version=eq.version,
        old=None,
        new=await view(session, eq),
        fields=EQUIPMENT_FIELDS,
        reason=data.reason,
    )
    return eq


async def update_equipment(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    expected_version: int,
    data: EquipmentUpdate,
) -> Equipment:
    eq = await get(session, code, lock=True)
    check_version(eq, expected_version, f"equipment {eq.code!r}")
    before = await view(session, eq)
    values = data.model_dump(exclude_unset=True, exclude={"reason"})
    for required in ("name", "is_dry_room", "is_active"):
        if required in values and values[required] is None:
            raise InvalidInput(f"{required} cannot be null", field=required)
    if "equipment_class" in values:
        values["equipment_class_id"] = await _resolve_class(session, values.pop("equipment_class"))
    if "room_code" in values:
        values["room_id"] = await _resolve_room(session, values.pop("room_code"), eq.site_id)
    level = EquipmentLevel(eq.level)
    _check_level_fields(
        level,
        kind=values.get("kind", eq.kind),
        equipment_class_id=values.get("equipment_class_id", eq.equipment_class_id),
        room_id=values.get("room_id", eq.room_id),
        status=None,
        cleanroom_class=values.get("cleanroom_class", eq.cleanroom_class),
        is_dry_room=values.get("is_dry_room", eq.is_dry_room),
    )
    _, new = apply_update(eq, values, ctx.clock.now())
    if new:
        session.add(eq)
        await audit.record_change(
            session,
            principal,
            action="update",
            entity_type="equipment",
            entity_id=eq.code,
            entity_version=eq.version,
            old=before,
            new=await view(session, eq),
            fields=EQUIPMENT_FIELDS,
            reason=data.reason,
        )
    return eq


async def change_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    target: EquipmentStatus,
    reason: str,
    expected_version: int | None,
    *,
    by_telemetry: bool = False,
) -> Equipment:
    """Change a unit's status (audited). People follow the manual transitions; the unit's own
    state signal (``by_telemetry``) moves it among idle, running and down."""
    eq = await get(session, code, lock=True)
    check_version(eq, expected_version, f"equipment {eq.code!r}")
    if EquipmentLevel(eq.level) != EquipmentLevel.unit or eq.status is None:
        raise InvalidTransition(f"{eq.code} is a {eq.level}; only units have a status")
    current = EquipmentStatus(eq.status)
    check = rules.telemetry_status_problem if by_telemetry else rules.status_transition_problem
    problem = check(current, target)
    if problem:
        raise InvalidTransition(f"{eq.code}: {problem}", current_status=str(current))
    old, new = apply_update(eq, {"status": target}, ctx.clock.now())
    session.add(eq)
    await audit.record_change(
        session,
        principal,
        action="status",
        entity_type="equipment",
        entity_id=eq.code,
        entity_version=eq.version,
        old=old,
        new=new,
        fields=("status",),
        reason=reason,
    )
    for listener in _LISTENERS.get(target, []):
        await listener(ctx, session, principal, eq, reason)
    return eq


async def approve_qualification(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    expected_version: int | None,
    data: QualificationApproval,
) -> tuple[Equipment, ESignature]:
    """QA approves a unit's qualification until a date, signing the resulting version."""
    eq = await get(session, code, lock=True)
    check_version(eq, expected_version, f"equipment {eq.code!r}")
    if EquipmentLevel(eq.level) != EquipmentLevel.unit:
        raise InvalidTransition(f"{eq.code} is a {eq.level}; only units are qualified")
    now = ctx.clock.now()
    if data.qualified_until <= now:
        raise InvalidInput("qualified_until must be in the future", field="qualified_until")
    before = await view(session, eq)
    after = dict(before, qualified_until=data.qualified_until)
    # Sign first: a rejected signature must leave the record untouched.
    esig = await signatures.sign(
        ctx,
        session,
        principal,
        record_type="equipment",
        record_id=eq.code,
        record_version=eq.version + 1,
        current_version=eq.version,
        content=after,
        signature=data.signature,
        allowed_meanings=frozenset({SignatureMeaning.approved}),
    )
    _, new = apply_update(eq, {"qualified_until": data.qualified_until}, now)
    if not new:  # same date re-approved: still a new, signed version
        bump_version(eq, now)
    session.add(eq)
    await audit.record_change(
        session,
        principal,
        action="qualify",
        entity_type="equipment",
        entity_id=eq.code,
        entity_version=eq.version,
        old=before,
        new=await view(session, eq),
        fields=("qualified_until",),
        reason=data.reason,
    )
    return eq, esig


async def _signable(session: AsyncSession, code: str) -> tuple[int, dict[str, Any]] | None:
    eq = await find(session, code)
    if eq is None:
        return None
    return eq.version, await view(session, eq)


signatures.register_signable("equipment", _signable)
