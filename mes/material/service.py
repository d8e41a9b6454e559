"""Material-definition services; every create and update is audited (AT-1)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import AlreadyExists, InvalidInput, NotFound
from mes.material.schemas import MaterialCreate, MaterialPublic, MaterialUpdate
from mes.models import MaterialDefinition, MaterialKind
from mes.principal import Principal
from mes.records import apply_update, by_id_or_code, check_version, fetch_page

FIELDS = (
    "code",
    "name",
    "kind",
    "base_uom",
    "shelf_life_days",
    "moisture_sensitive",
    "max_exposure_min",
    "implant_traceable",
    "gtin",
    "description",
    "is_active",
)
NOT_NULL = ("name", "kind", "base_uom", "moisture_sensitive", "implant_traceable", "is_active")


async def find(
    session: AsyncSession, code: str, *, lock: bool = False
) -> MaterialDefinition | None:
    """By business code, or by id (API.md: ids are also accepted)."""
    stmt, params = by_id_or_code(MaterialDefinition, "code", code, lock=lock)
    return (await session.execute(stmt, params)).scalar_one_or_none()


async def get(session: AsyncSession, code: str, *, lock: bool = False) -> MaterialDefinition:
    found = await find(session, code, lock=lock)
    if found is None:
        raise NotFound(f"material {code!r} does not exist")
    return found


def public(m: MaterialDefinition) -> MaterialPublic:
    return MaterialPublic(
        code=m.code,
        name=m.name,
        kind=MaterialKind(m.kind),
        uom=m.base_uom,
        shelf_life_days=m.shelf_life_days,
        moisture_sensitive=m.moisture_sensitive,
        max_exposure_min=m.max_exposure_min,
        implant_traceable=m.implant_traceable,
        gtin=m.gtin,
        description=m.description,
        is_active=m.is_active,
        version=m.version,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def _snapshot(m: MaterialDefinition) -> dict[str, Any]:
    return {f: getattr(m, f) for f in FIELDS}


async def _check_gtin_free(session: AsyncSession, gtin: str | None, code: str) -> None:
    if gtin is None:
        return
    owner = (
        await session.execute(
            select(MaterialDefinition.code).where(MaterialDefinition.gtin == gtin)
        )
    ).scalar_one_or_none()
    if owner is not None and owner != code:
        raise AlreadyExists(
            f"GTIN {gtin} already identifies material {owner!r} (UDI-1)", rule="UDI-1", field="gtin"
        )


def _check_exposure(moisture_sensitive: bool, max_exposure_min: int | None) -> None:
    if max_exposure_min is not None and not moisture_sensitive:
        raise InvalidInput(
            "max_exposure_min applies only to moisture-sensitive materials",
            field="max_exposure_min",
        )


async def create(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: MaterialCreate
) -> MaterialDefinition:
    if await find(session, data.code) is not None:
        raise AlreadyExists(f"material {data.code!r} already exists", field="code")
    await _check_gtin_free(session, data.gtin, data.code)
    _check_exposure(data.moisture_sensitive, data.max_exposure_min)
    now = ctx.clock.now()
    m = MaterialDefinition(
        code=data.code,
        name=data.name,
        kind=data.kind,
        base_uom=data.uom,
        shelf_life_days=data.shelf_life_days,
        moisture_sensitive=data.moisture_sensitive,
        max_exposure_min=data.max_exposure_min,
        implant_traceable=data.implant_traceable,
        gtin=data.gtin,
        description=data.description,
        created_at=now,
        updated_at=now,
    )
    session.add(m)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="material",
        entity_id=m.code,
        entity_version=m.version,
        old=None,
        new=_snapshot(m),
        fields=FIELDS,
        reason=data.reason,
    )
    return m


async def update(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    expected_version: int,
    data: MaterialUpdate,
) -> MaterialDefinition:
    m = await get(session, code, lock=True)
    check_version(m, expected_version, f"material {code!r}")
    values = data.model_dump(exclude_unset=True, exclude={"reason"})
    if "uom" in values:
        values["base_uom"] = values.pop("uom")
    for name in NOT_NULL:
        if name in values and values[name] is None:
            raise InvalidInput(
                f"{name if name != 'base_uom' else 'uom'} cannot be null",
                field=name if name != "base_uom" else "uom",
            )
    if "gtin" in values:
        await _check_gtin_free(session, values["gtin"], m.code)
    _check_exposure(
        values.get("moisture_sensitive", m.moisture_sensitive),
        values.get("max_exposure_min", m.max_exposure_min),
    )
    old, new = apply_update(m, values, ctx.clock.now())
    if new:
        session.add(m)
        await audit.record_change(
            session,
            principal,
            action="update",
            entity_type="material",
            entity_id=m.code,
            entity_version=m.version,
            old=old,
            new=new,
            fields=new.keys(),
            reason=data.reason,
        )
    return m


async def list_materials(
    session: AsyncSession, *, kind: MaterialKind | None, after: str | None, limit: int
) -> tuple[list[MaterialPublic], str | None]:
    stmt = select(MaterialDefinition).order_by(col(MaterialDefinition.code))
    if kind is not None:
        stmt = stmt.where(MaterialDefinition.kind == kind)
    if after is not None:
        stmt = stmt.where(col(MaterialDefinition.code) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return [public(r) for r in rows], (rows[-1].code if more else None)
