"""``mes plant load``: validate a plant YAML file, then apply it in one audited transaction.

Records are matched by code: new ones are created, changed attributes updated (audited
field by field), nothing is ever deleted (GxP records are never destroyed). A unit's
qualification date is imported on creation only; later qualification changes need a
signed QA approval through the API.

The optional ``changeovers:`` (SCH-2) and ``calendars:`` (SCH-3) sections give the
scheduler its changeover matrix and the units' working time. A changeover rule is matched by
its scope and family pair (only its minutes change); a unit's calendar by the unit. Rules and
calendars the file no longer names stay as they are: change them through the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from mes.audit import service as audit
from mes.clock import UtcDateTime
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.equipment.schemas import (
    AssetNo,
    CleanroomClass,
    Code,
    EquipmentClassCreate,
    EquipmentClassUpdate,
    EquipmentCreate,
    EquipmentUpdate,
    Name,
    Text,
)
from mes.errors import MesError
from mes.material import service as material
from mes.material.schemas import Gtin, MaterialCreate, MaterialUpdate, Uom
from mes.models import (
    EquipmentKind,
    EquipmentLevel,
    EquipmentStatus,
    MaterialKind,
)
from mes.principal import Principal
from mes.records import bump_version
from mes.scheduling import availability, changeovers
from mes.scheduling import calendar as scheduling_calendar
from mes.scheduling.resource_schemas import (
    MAX_SHIFTS,
    CalendarPut,
    ChangeoverCreate,
    ChangeoverMinutes,
    ChangeoverUpdate,
    Family,
    Shift,
    TimeZone,
)
from mes.schemas import InputModel


class PlantFileError(ValueError):
    """The plant file is invalid; ``problems`` name each YAML path."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class _Strict(InputModel):
    """Request body: unknown fields and NUL characters refused."""


class ClassSpec(_Strict):
    code: Code
    name: Name
    description: Text | None = None


class MaterialSpec(_Strict):
    code: Code
    name: Name
    kind: MaterialKind
    uom: Uom
    shelf_life_days: int | None = Field(default=None, ge=0, le=36500)
    moisture_sensitive: bool = False
    max_exposure_min: int | None = Field(default=None, ge=0, le=100000)
    implant_traceable: bool = False
    gtin: Gtin | None = None
    description: Text | None = None


class NodeSpec(_Strict):
    code: Code
    name: Name
    level: EquipmentLevel
    kind: EquipmentKind | None = None
    description: Text | None = None
    equipment_class: Code | None = None
    asset_no: AssetNo | None = None
    room: Code | None = None
    status: EquipmentStatus | None = None
    calibration_due_at: UtcDateTime | None = None
    maintenance_due_at: UtcDateTime | None = None
    qualified_until: UtcDateTime | None = None
    cleanroom_class: CleanroomClass = None
    is_dry_room: bool = False
    children: list[NodeSpec] = Field(default_factory=list)


class ChangeoverSpec(_Strict):
    """SCH-2: one rule, for every unit of ``equipment_class`` or for the unit
    ``equipment_code`` (exactly one of them)."""

    equipment_class: Code | None = None
    equipment_code: Code | None = None
    from_family: Family
    to_family: Family
    minutes: ChangeoverMinutes

    @property
    def scope_code(self) -> str:
        if self.equipment_class is not None:
            return f"class:{self.equipment_class}"
        return f"unit:{self.equipment_code}"


class CalendarSpec(_Strict):
    """SCH-3: one calendar shared by the listed units (each gets its own copy); no shifts
    means round the clock."""

    units: list[Code] = Field(min_length=1)
    timezone: TimeZone = "UTC"
    shifts: list[Shift] = Field(default_factory=list, max_length=MAX_SHIFTS)


class PlantSpec(_Strict):
    equipment_classes: list[ClassSpec] = Field(default_factory=list)
    materials: list[MaterialSpec] = Field(default_factory=list)
    equipment: list[NodeSpec] = Field(default_factory=list)
    changeovers: list[ChangeoverSpec] = Field(default_factory=list)
    calendars: list[CalendarSpec] = Field(default_factory=list)


def _yaml_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_plant_file(path: Path) -> PlantSpec:
    """Read and validate; every problem names its YAML path (``equipment[0].children[2]``)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PlantFileError(path, [str(exc)]) from exc
    try:
        spec = PlantSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise PlantFileError(
            path, [f"{_yaml_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from exc
    problems = _cross_check(spec)
    if problems:
        raise PlantFileError(path, problems)
    return spec


def _walk(nodes: list[NodeSpec], prefix: str) -> list[tuple[str, NodeSpec, NodeSpec | None]]:
    out: list[tuple[str, NodeSpec, NodeSpec | None]] = []

    def visit(node: NodeSpec, where: str, parent: NodeSpec | None) -> None:
        out.append((where, node, parent))
        for i, child in enumerate(node.children):
            visit(child, f"{where}.children[{i}]", node)

    for i, node in enumerate(nodes):
        visit(node, f"{prefix}[{i}]", None)
    return out


def _cross_check(spec: PlantSpec) -> list[str]:
    problems: list[str] = []
    for label, codes in (
        ("equipment_classes", [c.code for c in spec.equipment_classes]),
        ("materials", [m.code for m in spec.materials]),
    ):
        seen: set[str] = set()
        for i, code in enumerate(codes):
            if code in seen:
                problems.append(f"{label}[{i}].code: duplicate code {code}")
            seen.add(code)
    class_codes = {c.code for c in spec.equipment_classes}
    nodes = _walk(spec.equipment, "equipment")
    seen_nodes: set[str] = set()
    for where, node, _parent in nodes:
        if node.code in seen_nodes:
            problems.append(f"{where}.code: duplicate code {node.code}")
        seen_nodes.add(node.code)
        if node.equipment_class and node.equipment_class not in class_codes:
            problems.append(f"{where}.equipment_class: unknown class {node.equipment_class}")
    rooms = {n.code for _, n, _ in nodes if n.level == EquipmentLevel.room}
    for where, node, _parent in nodes:
        if node.room and node.room not in rooms:
            problems.append(f"{where}.room: {node.room} is not a room in this file")
    units = {n.code for _, n, _ in nodes if n.level == EquipmentLevel.unit}
    problems += _check_changeovers(spec.changeovers, class_codes, units)
    problems += _check_calendars(spec.calendars, units)
    return problems


def _check_changeovers(
    rules: list[ChangeoverSpec], class_codes: set[str], units: set[str]
) -> list[str]:
    """SCH-2: each rule names exactly one known class or unit of this file, two different
    families, and no rule repeats another's scope and pair."""
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for i, rule in enumerate(rules):
        where = f"changeovers[{i}]"
        if (rule.equipment_class is None) == (rule.equipment_code is None):
            problems.append(f"{where}: give exactly one of equipment_class and equipment_code")
            continue
        if rule.equipment_class is not None and rule.equipment_class not in class_codes:
            problems.append(f"{where}.equipment_class: unknown class {rule.equipment_class}")
        if rule.equipment_code is not None and rule.equipment_code not in units:
            problems.append(f"{where}.equipment_code: {rule.equipment_code} is not a unit")
        if rule.from_family == rule.to_family:
            problems.append(f"{where}.to_family: {rule.to_family} never changes over into itself")
        key = (rule.scope_code, rule.from_family, rule.to_family)
        if key in seen:
            problems.append(
                f"{where}: duplicate rule {rule.scope_code} {rule.from_family} -> {rule.to_family}"
            )
        seen.add(key)
    return problems


def _check_calendars(calendars: list[CalendarSpec], units: set[str]) -> list[str]:
    """SCH-3: every listed code is a unit of this file with one calendar only, and no two
    shifts of a calendar overlap."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    for i, calendar in enumerate(calendars):
        for j, code in enumerate(calendar.units):
            where = f"calendars[{i}].units[{j}]"
            if code not in units:
                problems.append(f"{where}: {code} is not a unit in this file")
            elif code in owner:
                problems.append(f"{where}: {code} already has a calendar at {owner[code]}")
            else:
                owner[code] = where
        overlap = scheduling_calendar.shift_overlap_problem(
            [s.model_dump() for s in calendar.shifts]
        )
        if overlap:
            problems.append(f"calendars[{i}].shifts: {overlap}")
    return problems


@dataclass
class LoadReport:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, bucket: dict[str, int], kind: str) -> None:
        bucket[kind] = bucket.get(kind, 0) + 1


def _changed(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


async def apply_plant(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    spec: PlantSpec,
    *,
    path: Path,
) -> LoadReport:
    """Create or update every record of ``spec`` in the caller's transaction; a refused
    record raises PlantFileError naming its YAML path."""
    report = LoadReport()
    reason = f"plant model loaded from {path.name}"

    for i, c in enumerate(spec.equipment_classes):
        async with _located(path, f"equipment_classes[{i}]"):
            await _apply_class(ctx, session, principal, c, reason, report)
    for i, m in enumerate(spec.materials):
        async with _located(path, f"materials[{i}]"):
            await _apply_material(ctx, session, principal, m, reason, report)
    nodes = _walk(spec.equipment, "equipment")
    # Rooms and work centers before units, so that a unit can name a room of another area.
    ordered = [n for n in nodes if n[1].level != EquipmentLevel.unit] + [
        n for n in nodes if n[1].level == EquipmentLevel.unit
    ]
    for where, node, parent in ordered:
        async with _located(path, where):
            await _apply_node(ctx, session, principal, node, parent, where, reason, report)
    for i, rule in enumerate(spec.changeovers):
        async with _located(path, f"changeovers[{i}]"):
            await _apply_changeover(ctx, session, principal, rule, reason, report)
    for i, calendar in enumerate(spec.calendars):
        for j, code in enumerate(calendar.units):
            async with _located(path, f"calendars[{i}].units[{j}]"):
                await _apply_calendar(ctx, session, principal, calendar, code, reason, report)
    return report


@asynccontextmanager
async def _located(path: Path, where: str) -> AsyncIterator[None]:
    """Turn a refusal while applying one record into a PlantFileError naming its YAML path."""
    try:
        yield
    except MesError as exc:
        field = f".{exc.field}" if exc.field else ""
        raise PlantFileError(path, [f"{where}{field}: {exc.detail}"]) from exc
    except ValidationError as exc:
        raise PlantFileError(
            path, [f"{where}.{_yaml_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from exc


async def _apply_class(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    c: ClassSpec,
    reason: str,
    report: LoadReport,
) -> None:
    found = await equipment.find_class(session, c.code)
    if found is None:
        await equipment.create_class(
            ctx,
            session,
            principal,
            EquipmentClassCreate(
                code=c.code, name=c.name, description=c.description, reason=reason
            ),
        )
        report.count(report.created, "equipment_class")
        return
    diff = _changed(
        {"name": found.name, "description": found.description},
        {"name": c.name, "description": c.description},
    )
    if diff:
        await equipment.update_class(
            ctx,
            session,
            principal,
            c.code,
            found.version,
            EquipmentClassUpdate(reason=reason, **diff),
        )
        report.count(report.updated, "equipment_class")
    else:
        report.count(report.unchanged, "equipment_class")


async def _apply_material(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    m: MaterialSpec,
    reason: str,
    report: LoadReport,
) -> None:
    found_m = await material.find(session, m.code)
    wanted = m.model_dump(exclude={"code"})
    if found_m is None:
        await material.create(
            ctx, session, principal, MaterialCreate(code=m.code, reason=reason, **wanted)
        )
        report.count(report.created, "material")
        return
    current = material.public(found_m).model_dump()
    diff = _changed(current, wanted)
    if diff:
        await material.update(
            ctx,
            session,
            principal,
            m.code,
            found_m.version,
            MaterialUpdate(reason=reason, **diff),
        )
        report.count(report.updated, "material")
    else:
        report.count(report.unchanged, "material")


async def _apply_node(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    node: NodeSpec,
    parent: NodeSpec | None,
    where: str,
    reason: str,
    report: LoadReport,
) -> None:
    found = await equipment.find(session, node.code)
    if found is None:
        eq = await equipment.create_equipment(
            ctx,
            session,
            principal,
            EquipmentCreate(
                code=node.code,
                name=node.name,
                level=node.level,
                kind=node.kind,
                parent_code=parent.code if parent else None,
                equipment_class=node.equipment_class,
                room_code=node.room,
                asset_no=node.asset_no,
                status=node.status,
                calibration_due_at=node.calibration_due_at,
                maintenance_due_at=node.maintenance_due_at,
                cleanroom_class=node.cleanroom_class,
                is_dry_room=node.is_dry_room,
                description=node.description,
                reason=reason,
            ),
        )
        if node.qualified_until is not None:
            await _import_qualification(ctx, session, principal, eq, node.qualified_until, reason)
        report.count(report.created, "equipment")
        return
    current = await equipment.view(session, found)
    if current["level"] != node.level or current["parent_code"] != (
        parent.code if parent else None
    ):
        report.notes.append(
            f"{where}: {node.code} stays where it is ({current['level']} under "
            f"{current['parent_code']}); moving equipment is not done by a plant load"
        )
    if node.qualified_until is not None and current["qualified_until"] != node.qualified_until:
        report.notes.append(
            f"{where}: {node.code} qualified_until not changed; use the signed QA approval"
        )
    wanted = {
        "name": node.name,
        "kind": node.kind,
        "equipment_class": node.equipment_class,
        "room_code": node.room,
        "asset_no": node.asset_no,
        "calibration_due_at": node.calibration_due_at,
        "maintenance_due_at": node.maintenance_due_at,
        "cleanroom_class": node.cleanroom_class,
        "is_dry_room": node.is_dry_room,
        "description": node.description,
    }
    diff = _changed(current, wanted)
    if diff:
        await equipment.update_equipment(
            ctx,
            session,
            principal,
            node.code,
            found.version,
            EquipmentUpdate(reason=reason, **diff),
        )
        report.count(report.updated, "equipment")
    else:
        report.count(report.unchanged, "equipment")


async def _apply_changeover(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    rule: ChangeoverSpec,
    reason: str,
    report: LoadReport,
) -> None:
    found = await changeovers.find_changeover(
        session, rule.scope_code, rule.from_family, rule.to_family
    )
    if found is None:
        await changeovers.create_changeover(
            ctx,
            session,
            principal,
            ChangeoverCreate(**rule.model_dump(), reason=reason),
        )
        report.count(report.created, "changeover_rule")
    elif found.minutes != rule.minutes:
        await changeovers.update_changeover(
            ctx,
            session,
            principal,
            str(found.id),
            found.version,
            ChangeoverUpdate(minutes=rule.minutes, reason=reason),
        )
        report.count(report.updated, "changeover_rule")
    else:
        report.count(report.unchanged, "changeover_rule")


async def _apply_calendar(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    calendar: CalendarSpec,
    code: str,
    reason: str,
    report: LoadReport,
) -> None:
    unit = await availability.get_unit(session, code)
    found = await availability.find_calendar(session, unit.id)
    wanted = CalendarPut(timezone=calendar.timezone, shifts=calendar.shifts, reason=reason)
    if found is not None and (found.timezone, found.shifts) == (
        wanted.timezone,
        availability.stored_shifts(wanted),
    ):
        report.count(report.unchanged, "equipment_calendar")
        return
    await availability.set_calendar(
        ctx, session, principal, code, found.version if found is not None else 0, wanted
    )
    report.count(report.created if found is None else report.updated, "equipment_calendar")


async def _import_qualification(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    eq: Any,
    qualified_until: datetime,
    reason: str,
) -> None:
    old = {"qualified_until": eq.qualified_until}
    eq.qualified_until = qualified_until
    bump_version(eq, ctx.clock.now())
    session.add(eq)
    await audit.record_change(
        session,
        principal,
        action="qualify_import",
        entity_type="equipment",
        entity_id=eq.code,
        entity_version=eq.version,
        old=old,
        new={"qualified_until": qualified_until},
        fields=("qualified_until",),
        reason=f"{reason}: qualification status imported at commissioning",
    )


async def load_plant_file(ctx: AppContext, principal: Principal, path: Path) -> LoadReport:
    """Validate ``path`` and apply it in one transaction (all or nothing)."""
    spec = parse_plant_file(path)
    async with ctx.db.sessionmaker() as session, session.begin():
        return await apply_plant(ctx, session, principal, spec, path=path)
