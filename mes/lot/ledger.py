"""The append-only material ledger (every movement of a lot is a transaction row; the lot's
remaining quantity follows it and never goes below zero: TR-1, TR-4), and what holds a lot's
material: containers (sublots), serial units and sterilization loads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, func, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from mes.lot import rules
from mes.lot.schemas import (
    LoadCreate,
    SerialPublic,
    SublotCreate,
    SublotPublic,
    TransactionPublic,
    TransactionRequest,
)
from mes.lot.service import convert_quantity, get_lot, material_codes, material_of, set_status, view
from mes.models import (
    Equipment,
    EquipmentLevel,
    LoadItem,
    Lot,
    LotStatus,
    MaterialTransaction,
    SerialUnit,
    SterilizationLoad,
    Sublot,
    TransactionKind,
)
from mes.principal import Principal
from mes.records import bump_version, fetch_page

USER_KINDS = frozenset(
    {
        TransactionKind.sampled,
        TransactionKind.scrapped,
        TransactionKind.adjusted,
        TransactionKind.transferred,
        TransactionKind.shipped,
        TransactionKind.returned,
    }
)


# --- posting -------------------------------------------------------------------------


async def post(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    lot: Lot,
    *,
    kind: TransactionKind,
    quantity: Decimal,
    uom: str,
    reason: str,
    execution_id: uuid.UUID | None = None,
    allow_conditional: bool = False,
    check_eligibility: bool = True,
    sublot: Sublot | None = None,
    consignee: str | None = None,
    location_from: str | None = None,
    location_to: str | None = None,
    reverses: MaterialTransaction | None = None,
) -> MaterialTransaction:
    """Append one ledger row and move the lot's remaining quantity (TR-1, TR-4, ID-1).

    ``quantity`` is the entered magnitude (signed only for adjustments and reversals)."""
    m = await material_of(session, lot)
    in_lot_unit = convert_quantity(quantity, uom, lot.uom, "uom")
    now = ctx.clock.now()
    if reverses is not None:
        delta = -reverses.quantity
    elif kind == TransactionKind.adjusted:
        delta = in_lot_unit
    else:
        delta = rules.SIGN[kind] * in_lot_unit
    status = LotStatus(lot.status)
    if kind == TransactionKind.consumed and reverses is None and check_eligibility:
        problem = rules.consumption_problem(
            status, expires_at=lot.expires_at, now=now, allow_conditional=allow_conditional
        )
        if problem:
            raise Conflict(
                f"lot {lot.lot_number} of {m.code}: {problem}",
                rule="ID-1",
                current_status=str(status),
            )
    if kind == TransactionKind.shipped and reverses is None and status not in rules.SHIPPABLE:
        raise Conflict(
            f"lot {lot.lot_number} is {status}; only released lots ship",
            rule="ID-1",
            current_status=str(status),
        )
    remaining = rules.remaining_after(lot.remaining_qty, delta)
    if remaining is None:
        raise Conflict(
            f"lot {lot.lot_number} has {lot.remaining_qty} {lot.uom} left; "
            f"{-delta} {lot.uom} cannot be taken",
            rule="TR-4",
            field="quantity",
            remaining=str(lot.remaining_qty),
        )
    if sublot is not None and kind != TransactionKind.transferred:
        sub_left = sublot.quantity + delta
        if sub_left < 0:
            raise Conflict(
                f"container {sublot.code} holds {sublot.quantity} {lot.uom}",
                rule="TR-4",
                field="quantity",
            )
        sublot.quantity = sub_left
        bump_version(sublot, now)
        session.add(sublot)
    tx = MaterialTransaction(
        at=now,
        kind=kind,
        lot_id=lot.id,
        sublot_id=sublot.id if sublot else None,
        quantity=delta,
        uom=lot.uom,
        entered_quantity=quantity,
        entered_uom=uom,
        execution_id=execution_id,
        reverses_id=reverses.id if reverses else None,
        username=principal.username,
        reason=reason,
        consignee=consignee,
        location_from=location_from,
        location_to=location_to,
    )
    session.add(tx)
    before = view(lot, m.code)
    if delta != 0:
        lot.remaining_qty = remaining
        bump_version(lot, now)
        session.add(lot)
        await session.flush()
        await audit.record_change(
            session,
            principal,
            action=kind.value if reverses is None else "reverse",
            entity_type="lot",
            entity_id=lot.id,
            entity_version=lot.version,
            old=before,
            new=view(lot, m.code),
            fields=("quantity",),
            reason=f"{reason} [transaction {tx.id}]",
        )
    else:
        await session.flush()
    if reverses is not None and remaining > 0 and status in (LotStatus.consumed, LotStatus.shipped):
        # The corrected movement had emptied the lot: it holds material again.
        await set_status(
            ctx,
            session,
            principal,
            lot,
            LotStatus.released,
            reason=f"reversal: {reason}",
            source="reversal",
            material_code=m.code,
        )
    if remaining == 0 and kind == TransactionKind.consumed and status == LotStatus.released:
        await set_status(
            ctx,
            session,
            principal,
            lot,
            LotStatus.consumed,
            reason="quantity reached zero",
            source="system",
            material_code=m.code,
        )
    if kind == TransactionKind.shipped and reverses is None and remaining == 0:
        await set_status(
            ctx,
            session,
            principal,
            lot,
            LotStatus.shipped,
            reason="fully shipped",
            source="system",
            material_code=m.code,
        )
    return tx


async def post_request(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    lot: Lot,
    data: TransactionRequest,
) -> MaterialTransaction:
    """A non-production movement requested through the API."""
    if data.kind not in USER_KINDS:
        raise InvalidInput(
            f"{data.kind} is recorded by receipt or production, not posted directly",
            field="kind",
        )
    if data.kind != TransactionKind.adjusted and data.quantity <= 0:
        raise InvalidInput(
            "quantity must be positive (only adjustments are signed)", field="quantity"
        )
    if data.kind == TransactionKind.adjusted and data.quantity == 0:
        raise InvalidInput("an adjustment of zero changes nothing", field="quantity")
    if data.kind == TransactionKind.shipped and data.consignee is None:
        raise InvalidInput("a shipment names its consignee", field="consignee")
    if data.kind == TransactionKind.transferred and data.location_to is None:
        raise InvalidInput("a transfer names where the material went", field="location_to")
    sublot = None
    if data.sublot_code is not None:
        sublot = await _get_sublot(session, lot, data.sublot_code, lock=True)
    return await post(
        ctx,
        session,
        principal,
        lot,
        kind=data.kind,
        quantity=data.quantity,
        uom=data.uom,
        reason=data.reason,
        sublot=sublot,
        consignee=data.consignee,
        location_from=data.location_from,
        location_to=data.location_to,
    )


async def reverse(
    ctx: AppContext, session: AsyncSession, principal: Principal, tx_id: uuid.UUID, reason: str
) -> MaterialTransaction:
    """A correction is a reversing entry with a reason, never an edit (TR-4)."""
    original = (
        await session.execute(select(MaterialTransaction).where(MaterialTransaction.id == tx_id))
    ).scalar_one_or_none()
    if original is None:
        raise NotFound(f"transaction {tx_id} does not exist")
    if original.reverses_id is not None:
        raise Conflict("a reversal cannot itself be reversed; post a new transaction")
    already = await session.execute(
        select(MaterialTransaction.id).where(MaterialTransaction.reverses_id == original.id)
    )
    if already.first() is not None:
        raise Conflict(f"transaction {tx_id} is already reversed")
    if original.kind in (TransactionKind.received, TransactionKind.produced):
        raise Conflict(
            "a receipt or production is corrected by an adjustment with a reason, "
            "not reversed (its lot and genealogy stay on record)"
        )
    lot = await session.get(Lot, original.lot_id, with_for_update=True)
    assert lot is not None
    sublot = await session.get(Sublot, original.sublot_id) if original.sublot_id else None
    return await post(
        ctx,
        session,
        principal,
        lot,
        kind=TransactionKind(original.kind),
        quantity=-original.entered_quantity,
        uom=original.entered_uom,
        reason=reason,
        execution_id=original.execution_id,
        reverses=original,
        sublot=sublot,
    )


async def transactions_public(
    session: AsyncSession, rows: Sequence[MaterialTransaction]
) -> list[TransactionPublic]:
    lots = (
        {
            lot.id: lot
            for lot in (
                await session.execute(select(Lot).where(col(Lot.id).in_({r.lot_id for r in rows})))
            ).scalars()
        }
        if rows
        else {}
    )
    codes = await material_codes(session, {lot.material_id for lot in lots.values()})
    return [
        TransactionPublic(
            id=r.id,
            seq=r.seq or 0,
            at=r.at,
            kind=TransactionKind(r.kind),
            lot_number=lots[r.lot_id].lot_number,
            material_code=codes[lots[r.lot_id].material_id],
            quantity=r.quantity,
            uom=r.uom,
            entered_quantity=r.entered_quantity,
            entered_uom=r.entered_uom,
            execution_id=r.execution_id,
            reverses_id=r.reverses_id,
            username=r.username,
            reason=r.reason,
            location_from=r.location_from,
            location_to=r.location_to,
            consignee=r.consignee,
        )
        for r in rows
    ]


async def list_transactions(
    session: AsyncSession, lot: Lot, *, after: int | None, limit: int
) -> tuple[list[TransactionPublic], int | None]:
    stmt = (
        select(MaterialTransaction)
        .where(MaterialTransaction.lot_id == lot.id)
        .order_by(col(MaterialTransaction.seq))
    )
    if after is not None:
        stmt = stmt.where(col(MaterialTransaction.seq) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return await transactions_public(session, rows), (rows[-1].seq if more else None)


# --- sublots and serials -------------------------------------------------------------------------


async def _get_sublot(session: AsyncSession, lot: Lot, code: str, *, lock: bool = False) -> Sublot:
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
