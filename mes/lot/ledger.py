"""The append-only material ledger: every movement of a lot is a transaction row; the lot's
remaining quantity follows it and never goes below zero (TR-1, TR-4)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import Conflict, InvalidInput, NotFound
from mes.lot import rules
from mes.lot.containers import get_sublot
from mes.lot.schemas import (
    TransactionPublic,
    TransactionRequest,
)
from mes.lot.service import convert_quantity, material_codes, material_of, set_status, view
from mes.models import (
    Lot,
    LotStatus,
    MaterialTransaction,
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
    if reverses is None:
        _check_eligible(lot, m.code, kind, status, now, allow_conditional, check_eligibility)
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
    follow = rules.status_after_movement(kind, status, remaining, is_reversal=reverses is not None)
    if follow is not None:
        target, why = follow
        await set_status(
            ctx,
            session,
            principal,
            lot,
            target,
            reason=f"{why}: {reason}",
            source="reversal" if reverses is not None else "system",
            material_code=m.code,
        )
    return tx


def _check_eligible(
    lot: Lot,
    material_code: str,
    kind: TransactionKind,
    status: LotStatus,
    now: datetime,
    allow_conditional: bool,
    check_eligibility: bool,
) -> None:
    """ID-1: consumption takes released (or permitted conditionally released) unexpired lots;
    only released lots ship."""
    if kind == TransactionKind.consumed and check_eligibility:
        problem = rules.consumption_problem(
            status, expires_at=lot.expires_at, now=now, allow_conditional=allow_conditional
        )
        if problem:
            raise Conflict(
                f"lot {lot.lot_number} of {material_code}: {problem}",
                rule="ID-1",
                current_status=str(status),
            )
    if kind == TransactionKind.shipped and status not in rules.SHIPPABLE:
        raise Conflict(
            f"lot {lot.lot_number} is {status}; only released lots ship",
            rule="ID-1",
            current_status=str(status),
        )


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
        sublot = await get_sublot(session, lot, data.sublot_code, lock=True)
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
