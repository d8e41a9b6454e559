"""The changeover matrix (SCH-2): the API services, and the read the scheduler uses.

Between two tasks of different product families a unit needs the changeover minutes of its
matrix. A rule is written for every unit of an equipment class or for one unit; the unit's
own rule wins over its class's for the same (from, to) pair. A family never changes over into
itself, so such a rule is refused.

Every write is audited in the caller's transaction (AT-1) with a reason (AT-3).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment_service
from mes.errors import AlreadyExists, InvalidInput, NotFound
from mes.ids import parse_uuid
from mes.models import (
    ChangeoverRule,
    EquipmentLevel,
)
from mes.principal import Principal
from mes.records import apply_update, check_version, fetch_page
from mes.scheduling.availability import units_by_code
from mes.scheduling.resource_schemas import (
    ChangeoverCreate,
    ChangeoverPublic,
    ChangeoverUpdate,
)

CHANGEOVER_FIELDS = ("equipment_class", "equipment_code", "from_family", "to_family", "minutes")


# --- the scheduler's read ------------------------------------------------------------------------


async def changeover_matrix(
    session: AsyncSession, unit_codes: Sequence[str]
) -> dict[str, dict[tuple[str, str], int]]:
    """SCH-2: per unit code, the changeover minutes for each (from family, to family) pair:
    the rules of the unit's equipment class, overridden pair by pair by the unit's own rules.

    A pair missing from a unit's matrix has no rule (the scheduler then falls back to the
    task's own cleaning time); a rule of 0 minutes is an explicit "no changeover". Unknown
    codes raise NotFound."""
    units = await units_by_code(session, unit_codes)
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
