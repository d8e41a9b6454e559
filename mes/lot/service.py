"""Lot services: receipt, disposition, the append-only material ledger, sublots, serials
and sterilization loads. Every change to a lot is audited in its transaction (AT-1); a
refused request writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotFound,
    SignatureRequired,
)
from mes.genealogy import repository as genealogy_repository
from mes.ids import parse_uuid
from mes.lot import rules
from mes.lot.schemas import (
    LotPublic,
    LotReceive,
)
from mes.material import service as material_service
from mes.models import (
    ESignature,
    Lot,
    LotOrigin,
    LotStatus,
    LotStatusTransition,
    MaterialDefinition,
    MaterialTransaction,
    Role,
    TransactionKind,
)
from mes.models.lot import LotReach
from mes.principal import Principal
from mes.records import bump_version, by_id_or_code, check_version, fetch_page, keyed_stmt
from mes.signature import service as signatures
from mes.signature.schemas import SignatureInput

LOT_FIELDS = (
    "lot_number",
    "material_code",
    "origin",
    "status",
    "held_from_status",
    "quantity",
    "uom",
    "supplier",
    "supplier_lot",
    "coa_ref",
    "manufactured_at",
    "expires_at",
    "retest_at",
)


# --- lookups -------------------------------------------------------------------------------------


async def find_lots(session: AsyncSession, lot_number: str) -> list[Lot]:
    stmt, params = by_id_or_code(Lot, "lot_number", lot_number)
    return list((await session.execute(stmt, params)).scalars())


@cache
def _lot_stmt(by_id: bool, of_material: bool, lock: bool) -> SelectOfScalar[Lot]:
    """Lots whose id (``by_id``) or number is ``key``, of material ``material_code`` if
    ``of_material``, row-locked with ``lock``."""
    stmt = keyed_stmt(Lot, "id" if by_id else "lot_number", False)
    if of_material:
        stmt = stmt.join(MaterialDefinition, col(MaterialDefinition.id) == Lot.material_id).where(
            col(MaterialDefinition.code) == bindparam("material_code")
        )
    return stmt.with_for_update(of=Lot) if lock else stmt


async def get_lot(
    session: AsyncSession,
    lot_number: str,
    material_code: str | None = None,
    *,
    lock: bool = False,
) -> Lot:
    """A lot by number (or id); ``material_code`` disambiguates a number used by several
    materials (lot numbers are unique per material definition)."""
    ident = parse_uuid(lot_number)
    stmt = _lot_stmt(ident is not None, material_code is not None, lock)
    params = {"key": ident if ident is not None else lot_number, "material_code": material_code}
    found = list((await session.execute(stmt, params)).scalars())
    if not found:
        suffix = f" of material {material_code}" if material_code else ""
        raise NotFound(f"lot {lot_number!r}{suffix} does not exist")
    if len(found) > 1:
        raise Conflict(
            f"lot number {lot_number!r} exists for several materials; name the material",
            field="material_code",
        )
    return found[0]


async def material_of(session: AsyncSession, lot: Lot) -> MaterialDefinition:
    found = await session.get(MaterialDefinition, lot.material_id)
    assert found is not None  # foreign key
    return found


async def material_codes(session: AsyncSession, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not ids:
        return {}
    rows = await session.execute(
        select(MaterialDefinition.id, MaterialDefinition.code).where(
            col(MaterialDefinition.id).in_(ids)
        )
    )
    return {row.id: row.code for row in rows}


def _public(lot: Lot, material_code: str) -> LotPublic:
    return LotPublic(
        id=lot.id,
        lot_number=lot.lot_number,
        material_code=material_code,
        origin=LotOrigin(lot.origin),
        status=LotStatus(lot.status),
        held_from_status=LotStatus(lot.held_from_status) if lot.held_from_status else None,
        quantity=lot.remaining_qty,
        initial_quantity=lot.initial_qty,
        uom=lot.uom,
        supplier=lot.supplier,
        supplier_lot=lot.supplier_lot,
        coa_ref=lot.coa_ref,
        manufactured_at=lot.manufactured_at,
        expires_at=lot.expires_at,
        retest_at=lot.retest_at,
        execution_id=lot.execution_id,
        version=lot.version,
        created_at=lot.created_at,
        updated_at=lot.updated_at,
    )


async def public(session: AsyncSession, lot: Lot) -> LotPublic:
    return _public(lot, (await material_of(session, lot)).code)


def view(lot: Lot, material_code: str) -> dict[str, Any]:
    """The audited and signed content of a lot."""
    data = _public(lot, material_code).model_dump()
    return {k: data[k] for k in LOT_FIELDS}


async def list_lots(
    session: AsyncSession,
    *,
    material_code: str | None,
    status: LotStatus | None,
    after: str | None,
    limit: int,
) -> tuple[list[LotPublic], str | None]:
    stmt = select(Lot).order_by(col(Lot.id))
    if material_code is not None:
        m = await material_service.find(session, material_code)
        if m is None:
            raise InvalidInput(
                f"material {material_code!r} does not exist", field="query.material_code"
            )
        stmt = stmt.where(Lot.material_id == m.id)
    if status is not None:
        stmt = stmt.where(Lot.status == status)
    if after is not None:
        ident = parse_uuid(after)
        if ident is None:
            raise InvalidInput("cursor is not a value returned by this API", field="query.cursor")
        stmt = stmt.where(col(Lot.id) > ident)
    rows, more = await fetch_page(session, stmt, limit)
    codes = await material_codes(session, {r.material_id for r in rows})
    return [_public(r, codes[r.material_id]) for r in rows], (str(rows[-1].id) if more else None)


# --- receipt and creation ------------------------------------------------------------------------


def convert_quantity(quantity: Decimal, uom: str, lot_uom: str, field: str) -> Decimal:
    try:
        return rules.to_lot_unit(quantity, uom, lot_uom)
    except rules.UnitMismatch as exc:
        raise InvalidInput(str(exc), field=field) from exc


def _require_active(m: MaterialDefinition | None, code: str, field: str) -> MaterialDefinition:
    if m is None:
        raise InvalidInput(f"material {code!r} does not exist", field=field)
    if not m.is_active:
        raise InvalidInput(f"material {code!r} is retired", field=field)
    return m


async def active_material(session: AsyncSession, code: str, field: str) -> MaterialDefinition:
    return _require_active(await material_service.find(session, code), code, field)


async def active_materials(
    session: AsyncSession, codes: list[str], field: str
) -> dict[str, MaterialDefinition]:
    """``active_material`` of several codes, in one statement."""
    rows = await session.execute(
        select(MaterialDefinition).where(col(MaterialDefinition.code).in_(set(codes)))
    )
    found = {m.code: m for m in rows.scalars()}
    return {code: _require_active(found.get(code), code, field) for code in codes}


# The id of lot ``lot_number`` of material ``material_id``, if there is one.
LOT_ID = select(Lot.id).where(
    col(Lot.material_id) == bindparam("material_id"), col(Lot.lot_number) == bindparam("lot_number")
)


async def _check_new_lot_number(session: AsyncSession, m: MaterialDefinition, number: str) -> None:
    exists = await session.execute(LOT_ID, {"material_id": m.id, "lot_number": number})
    if exists.first() is not None:
        raise AlreadyExists(
            f"lot {number!r} of material {m.code} already exists", field="lot_number"
        )


def default_expiry(m: MaterialDefinition, basis: datetime | None) -> datetime | None:
    """UDI-7: expiry = basis date + validated shelf life, never typed for produced lots."""
    if basis is None or m.shelf_life_days is None:
        return None
    return basis + timedelta(days=m.shelf_life_days)


def produced_expiry(
    m: MaterialDefinition, made_at: datetime, inputs: Iterable[datetime | None]
) -> datetime | None:
    """UDI-7: a produced lot expires at its manufacture date + shelf life, never later than
    the earliest expiry of what went into it."""
    expiry = default_expiry(m, made_at)
    for expires_at in inputs:
        if expires_at is not None and (expiry is None or expires_at < expiry):
            expiry = expires_at
    return expiry


async def create_lot(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    *,
    m: MaterialDefinition,
    lot_number: str,
    origin: LotOrigin,
    status: LotStatus,
    quantity: Decimal,
    kind: TransactionKind,
    reason: str,
    execution_id: uuid.UUID | None = None,
    entered: tuple[Decimal, str] | None = None,
    supplier: str | None = None,
    supplier_lot: str | None = None,
    coa_ref: str | None = None,
    manufactured_at: datetime | None = None,
    expires_at: datetime | None = None,
    retest_at: datetime | None = None,
) -> tuple[Lot, MaterialTransaction]:
    """A new lot with its first ledger row (received or produced) and disposition row."""
    await _check_new_lot_number(session, m, lot_number)
    now = ctx.clock.now()
    lot = Lot(
        lot_number=lot_number,
        material_id=m.id,
        origin=origin,
        status=status,
        uom=m.base_uom,
        initial_qty=quantity,
        remaining_qty=quantity,
        supplier=supplier,
        supplier_lot=supplier_lot,
        coa_ref=coa_ref,
        manufactured_at=manufactured_at,
        expires_at=expires_at,
        retest_at=retest_at,
        execution_id=execution_id,
        created_at=now,
        updated_at=now,
    )
    session.add(lot)
    await session.flush()  # the lot row before rows that reference it
    tx = MaterialTransaction(
        at=now,
        kind=kind,
        lot_id=lot.id,
        quantity=quantity,
        uom=m.base_uom,
        entered_quantity=entered[0] if entered else quantity,
        entered_uom=entered[1] if entered else m.base_uom,
        execution_id=execution_id,
        username=principal.username,
        reason=reason,
    )
    session.add(tx)
    session.add(
        LotStatusTransition(
            lot_id=lot.id,
            from_status=None,
            to_status=status,
            at=now,
            username=principal.username,
            reason=reason,
            source=origin.value,
        )
    )
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="lot",
        entity_id=lot.id,
        entity_version=lot.version,
        old=None,
        new=view(lot, m.code),
        fields=LOT_FIELDS,
        reason=reason,
    )
    return lot, tx


async def receive(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: LotReceive
) -> Lot:
    """Receive a raw-material lot: it enters quarantine (DOMAIN 3.3 new -> quarantine)."""
    m = await active_material(session, data.material_code, "material_code")
    quantity = convert_quantity(data.quantity, data.uom, m.base_uom, "uom")
    expires_at = data.expires_at or default_expiry(m, data.manufactured_at)
    lot, _ = await create_lot(
        ctx,
        session,
        principal,
        m=m,
        lot_number=data.lot_number,
        origin=LotOrigin.received,
        status=LotStatus.quarantine,
        quantity=quantity,
        kind=TransactionKind.received,
        reason=data.reason,
        entered=(data.quantity, data.uom),
        supplier=data.supplier,
        supplier_lot=data.supplier_lot,
        coa_ref=data.coa_ref,
        manufactured_at=data.manufactured_at,
        expires_at=expires_at,
        retest_at=data.retest_at,
    )
    return lot


# --- disposition ---------------------------------------------------------------------------------


async def set_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    lot: Lot,
    target: LotStatus,
    *,
    reason: str,
    source: str,
    signature_id: uuid.UUID | None = None,
    material_code: str,
) -> None:
    before = view(lot, material_code)
    current = LotStatus(lot.status)
    if target == LotStatus.on_hold:
        lot.held_from_status = current
    elif current == LotStatus.on_hold:
        lot.held_from_status = None
    lot.status = target
    bump_version(lot, ctx.clock.now())
    session.add(lot)
    session.add(
        LotStatusTransition(
            lot_id=lot.id,
            from_status=current,
            to_status=target,
            at=ctx.clock.now(),
            username=principal.username,
            reason=reason,
            source=source,
            signature_id=signature_id,
        )
    )
    await audit.record_change(
        session,
        principal,
        action="status",
        entity_type="lot",
        entity_id=lot.id,
        entity_version=lot.version,
        old=before,
        new=view(lot, material_code),
        fields=LOT_FIELDS,
        reason=reason,
    )


async def change_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    lot: Lot,
    target: LotStatus,
    reason: str,
    signature: SignatureInput | None,
    expected_version: int | None,
) -> ESignature | None:
    """A disposition decision by a person (DOMAIN 3.3). Only QA decides, except a hold,
    which a supervisor may also place; release, rejection and lifting a hold are e-signed.
    Pilot-batch material is never released for distribution (RL-1)."""
    check_version(lot, expected_version, f"lot {lot.lot_number!r}")
    current = LotStatus(lot.status)
    held_from = LotStatus(lot.held_from_status) if lot.held_from_status else None
    transition = rules.transition_for(current, target, held_from)
    if transition is None:
        raise InvalidTransition(
            f"lot {lot.lot_number} cannot go from {current} to {target}",
            current_status=str(current),
        )
    if Role.qa not in principal.roles and not (
        target == LotStatus.on_hold and Role.supervisor in principal.roles
    ):
        raise Forbidden(f"only QA may set a lot to {target}", rule="AC-2")
    if target == LotStatus.released:
        pilot = await pilot_origin(session, lot)
        if pilot is not None:
            source = "" if pilot.id == lot.id else f" (made from pilot lot {pilot.lot_number})"
            raise Conflict(
                f"lot {lot.lot_number} is pilot-batch material{source}; pilot batches are "
                "never released for distribution",
                rule="RL-1",
                current_status=str(current),
            )
    m = await material_of(session, lot)
    esig = None
    if transition.needs_signature:
        if signature is None:
            raise SignatureRequired(
                f"{current} -> {target} needs an e-signature with meaning {transition.meaning}",
                field="signature",
            )
        assert transition.meaning is not None
        preview = dict(
            view(lot, m.code),
            status=target,
            held_from_status=None if current == LotStatus.on_hold else lot.held_from_status,
        )
        esig = await signatures.sign(
            ctx,
            session,
            principal,
            record_type="lot",
            record_id=str(lot.id),
            record_version=lot.version + 1,
            current_version=lot.version,
            content=preview,
            signature=signature,
            allowed_meanings=frozenset({transition.meaning}),
        )
        await session.flush()
    await set_status(
        ctx,
        session,
        principal,
        lot,
        target,
        reason=reason,
        source="decision",
        signature_id=esig.id if esig else None,
        material_code=m.code,
    )
    return esig


async def pilot_origin(session: AsyncSession, lot: Lot) -> Lot | None:
    """The pilot-batch lot (output of a pilot order on a draft work master) that ``lot`` is or
    was split, blended or made from (``lot_reach``, the closure of the genealogy), or None."""
    if lot.is_pilot:
        return lot
    await genealogy_repository.settle_reach(session)
    found = await session.execute(
        select(Lot)
        .join(LotReach, col(LotReach.ancestor_lot_id) == Lot.id)
        .where(LotReach.descendant_lot_id == lot.id, col(Lot.is_pilot).is_(True))
        .order_by(col(Lot.id))
        .limit(1)
    )
    return found.scalars().first()


async def _signable(session: AsyncSession, record_id: str) -> tuple[int, dict[str, Any]] | None:
    ident = parse_uuid(record_id)
    lot = await session.get(Lot, ident) if ident else None
    if lot is None:
        return None
    return lot.version, view(lot, (await material_of(session, lot)).code)


signatures.register_signable("lot", _signable)
