"""What holds a lot's material: containers (sublots), serial units and sterilization loads."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, func, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from mes.lot.schemas import LoadCreate, SerialPublic, SublotCreate, SublotPublic
from mes.lot.service import convert_quantity, get_lot, material_of
from mes.models import (
    Equipment,
    EquipmentLevel,
    LoadItem,
    Lot,
    SerialUnit,
    SterilizationLoad,
    Sublot,
)
from mes.principal import Principal
from mes.records import fetch_page

# --- sublots -------------------------------------------------------------------------


async def get_sublot(session: AsyncSession, lot: Lot, code: str, *, lock: bool = False) -> Sublot:
    stmt = select(Sublot).where(Sublot.lot_id == lot.id, Sublot.code == code)
    if lock:
        stmt = stmt.with_for_update()
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise InvalidInput(f"lot {lot.lot_number} has no container {code!r}", field="sublot_code")
    return found


async def create_sublot(
    ctx: AppContext, session: AsyncSession, principal: Principal, lot: Lot, data: SublotCreate
) -> Sublot:
    """Register a container of a lot; containers never hold more than the lot has left."""
    quantity = convert_quantity(data.quantity, data.uom, lot.uom, "uom")
    exists = await session.execute(
        select(Sublot.id).where(Sublot.lot_id == lot.id, Sublot.code == data.code)
    )
    if exists.first() is not None:
        raise AlreadyExists(f"container {data.code!r} of lot {lot.lot_number} exists", field="code")
    held = sum(
        (await session.execute(select(col(Sublot.quantity)).where(Sublot.lot_id == lot.id)))
        .scalars()
        .all(),
        Decimal(0),
    )
    if Decimal(held) + quantity > lot.remaining_qty:
        raise Conflict(
            f"containers would hold {Decimal(held) + quantity} {lot.uom}; lot has "
            f"{lot.remaining_qty}",
            rule="TR-4",
            field="quantity",
        )
    now = ctx.clock.now()
    sub = Sublot(
        lot_id=lot.id,
        code=data.code,
        quantity=quantity,
        location=data.location,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="sublot",
        entity_id=str(sub.id),
        entity_version=sub.version,
        old=None,
        new={"code": sub.code, "quantity": sub.quantity, "location": sub.location},
        fields=("code", "quantity", "location"),
        reason=data.reason,
    )
    return sub


async def list_sublots(session: AsyncSession, lot: Lot) -> list[SublotPublic]:
    rows = (
        await session.execute(
            select(Sublot).where(Sublot.lot_id == lot.id).order_by(col(Sublot.code))
        )
    ).scalars()
    return [
        SublotPublic(
            code=s.code,
            lot_number=lot.lot_number,
            quantity=s.quantity,
            uom=lot.uom,
            location=s.location,
            version=s.version,
        )
        for s in rows
    ]


async def add_serials(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    lot: Lot,
    serials: list[str],
    reason: str,
) -> list[SerialUnit]:
    """Serial units of a lot, GTIN + serial unique (UDI-2); duplicates refused (409)."""
    m = await material_of(session, lot)
    if m.gtin is None:
        raise Conflict(f"material {m.code} has no GTIN; its lots are not serialised", rule="UDI-1")
    seen: set[str] = set()
    for serial in serials:
        if serial in seen:
            raise AlreadyExists(
                f"serial {serial!r} appears twice in the request", rule="UDI-2", field="serials"
            )
        seen.add(serial)
    taken = (
        (
            await session.execute(
                select(SerialUnit.serial).where(
                    SerialUnit.gtin == m.gtin, col(SerialUnit.serial).in_(seen)
                )
            )
        )
        .scalars()
        .all()
    )
    if taken:
        raise AlreadyExists(
            f"serials already used for GTIN {m.gtin}: {', '.join(sorted(taken))}",
            rule="UDI-2",
            field="serials",
        )
    count = (
        await session.execute(
            select(func.count()).select_from(SerialUnit).where(SerialUnit.lot_id == lot.id)
        )
    ).scalar_one()
    if lot.uom == "each" and count + len(serials) > lot.initial_qty:
        raise Conflict(
            f"lot {lot.lot_number} has {lot.initial_qty} units; {count} serials exist",
            field="serials",
        )
    now = ctx.clock.now()
    units = [
        SerialUnit(
            lot_id=lot.id, gtin=m.gtin, serial=s, created_at=now, created_by=principal.username
        )
        for s in serials
    ]
    session.add_all(units)
    await audit.record(
        session,
        principal,
        action="serialise",
        entity_type="lot",
        entity_id=lot.id,
        entity_version=lot.version,
        changes=[{"field": "serials", "old": None, "new": sorted(seen)}],
        reason=reason,
    )
    return units


async def list_serials(
    session: AsyncSession, lot: Lot, *, after: str | None, limit: int
) -> tuple[list[SerialPublic], str | None]:
    stmt = select(SerialUnit).where(SerialUnit.lot_id == lot.id).order_by(col(SerialUnit.serial))
    if after is not None:
        stmt = stmt.where(col(SerialUnit.serial) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return [
        SerialPublic(
            gtin=r.gtin, serial=r.serial, lot_number=lot.lot_number, created_at=r.created_at
        )
        for r in rows
    ], (rows[-1].serial if more else None)


# --- sterilization loads -------------------------------------------------------------------------


async def create_load(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: LoadCreate
) -> tuple[SterilizationLoad, list[Lot]]:
    """A sterilization load: membership links lot -> load and load -> lots (TR-5)."""
    existing = await session.execute(
        select(SterilizationLoad.id).where(SterilizationLoad.load_no == data.load_no)
    )
    if existing.first() is not None:
        raise AlreadyExists(f"load {data.load_no!r} exists", field="load_no")
    sterilizer = await equipment.find(session, data.sterilizer_code)
    if sterilizer is None or EquipmentLevel(sterilizer.level) != EquipmentLevel.unit:
        raise InvalidInput(
            f"{data.sterilizer_code!r} is not a unit of the plant model", field="sterilizer_code"
        )
    now = ctx.clock.now()
    load = SterilizationLoad(
        load_no=data.load_no, sterilizer_id=sterilizer.id, created_at=now, updated_at=now
    )
    session.add(load)
    await session.flush()  # the load row before its items (no ORM relationships)
    lots: list[Lot] = []
    for i, ref in enumerate(data.lots):
        try:
            lot = await get_lot(session, ref.lot_number, ref.material_code)
        except NotFound as exc:
            raise InvalidInput(exc.detail, field=f"lots[{i}].lot_number") from exc
        if lot.id in {x.id for x in lots}:
            raise InvalidInput(f"lot {lot.lot_number} is listed twice", field=f"lots[{i}]")
        lots.append(lot)
        session.add(
            LoadItem(load_id=load.id, lot_id=lot.id, quantity=lot.remaining_qty, uom=lot.uom)
        )
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="sterilization_load",
        entity_id=load.load_no,
        entity_version=load.version,
        old=None,
        new={
            "load_no": load.load_no,
            "sterilizer": sterilizer.code,
            "lots": [str(x.id) for x in lots],
        },
        fields=("load_no", "sterilizer", "lots"),
        reason=data.reason,
    )
    return load, lots


async def get_load(session: AsyncSession, load_no: str) -> tuple[SterilizationLoad, str, list[Lot]]:
    """A load with its sterilizer code and member lots (load -> lots, TR-5)."""
    load = (
        await session.execute(select(SterilizationLoad).where(SterilizationLoad.load_no == load_no))
    ).scalar_one_or_none()
    if load is None:
        raise NotFound(f"sterilization load {load_no!r} does not exist")
    sterilizer = await session.get(Equipment, load.sterilizer_id)
    members = list(
        (
            await session.execute(
                select(Lot)
                .join(LoadItem, col(LoadItem.lot_id) == Lot.id)
                .where(LoadItem.load_id == load.id)
                .order_by(col(Lot.lot_number))
            )
        ).scalars()
    )
    return load, sterilizer.code if sterilizer else "", members


async def find_serial(session: AsyncSession, lot: Lot, serial: str) -> SerialUnit | None:
    return (
        await session.execute(
            select(SerialUnit).where(SerialUnit.lot_id == lot.id, SerialUnit.serial == serial)
        )
    ).scalar_one_or_none()
