"""Material actions of a running operation (DOMAIN 3.2): consumption of a lot by its scan
against the BOM (ID-1, TR-1, TR-4) and the report of output - the produced lot, its serials
and the genealogy edges from every lot the order consumed."""

from __future__ import annotations

import uuid
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import Conflict, InvalidInput, NotFound
from mes.genealogy import service as genealogy
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.models import (
    EdgeKind,
    GenealogyEdge,
    Lot,
    LotOrigin,
    LotStatus,
    MaterialDefinition,
    MaterialTransaction,
    Operation,
    OperationExecution,
    ScanEvent,
    TransactionKind,
    WorkOrder,
)
from mes.principal import Principal
from mes.records import bump_version
from mes.udi import service as scans
from mes.udi.rules import escape_raw
from mes.work import orders, rules
from mes.work.execution import check_recording, execution_of, get
from mes.work.schemas import (
    ConsumeRequest,
    OutputRequest,
)

# Symbology identifier of a Code 128 symbol without FNC1: the plant's internal lot labels.
INTERNAL_LABEL = "]C0"


# --- consumption ----------------------------------------------------------------------------


async def _lot_for(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: ConsumeRequest
) -> tuple[Lot, bool]:
    """ID-1: the lot from a good scan (GTIN + lot), or typed (with a reason)."""
    if data.scan is None:
        assert data.lot_number is not None  # the model requires one of them
        try:
            lot = await lots.get_lot(session, data.lot_number, data.material_code, lock=True)
        except NotFound as exc:
            raise NotFound(exc.detail, field="lot_number") from exc
        return lot, False
    if data.scan.startswith(INTERNAL_LABEL):
        return await _internal_label(ctx, session, principal, data.scan, data.material_code), True
    recorded = await scans.record_scan(ctx, session, principal, data.scan, "consume")
    scan = recorded.scan
    if not scan.ok:
        raise InvalidInput(
            "scan not accepted: " + "; ".join(scan.errors), rule="ID-1", field="scan", persist=True
        )
    if scan.lot is None:
        raise InvalidInput(
            "the scan carries no lot (AI 10)", rule="ID-1", field="scan", persist=True
        )
    material_code = data.material_code
    if scan.gtin is not None:
        m = (
            await session.execute(
                select(MaterialDefinition).where(MaterialDefinition.gtin == scan.gtin)
            )
        ).scalar_one_or_none()
        if m is None:
            raise NotFound(
                f"no material has GTIN {scan.gtin}", rule="ID-1", field="scan", persist=True
            )
        material_code = m.code
    try:
        lot = await lots.get_lot(session, scan.lot, material_code, lock=True)
    except NotFound as exc:
        raise NotFound(exc.detail, rule="ID-1", field="scan", persist=True) from exc
    return lot, True


async def _internal_label(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    raw: str,
    material_code: str | None,
) -> Lot:
    """A plant-internal lot label: Code 128 without FNC1 (symbology ``]C0``) carrying the lot
    number, used on raw materials and intermediates that have no GTIN. Recorded like any scan."""
    number = raw[len(INTERNAL_LABEL) :].strip()
    problem = None if number else "the internal label carries no lot number"
    session.add(
        ScanEvent(
            at=ctx.clock.now(),
            username=principal.username,
            raw_escaped=escape_raw(raw),
            symbology_id=INTERNAL_LABEL,
            outcome="rejected" if problem else "ok",
            parsed={"lot": number} if number else {},
            errors=[problem] if problem else [],
            context="consume",
        )
    )
    await session.flush()
    if problem:
        raise InvalidInput(problem, rule="ID-1", field="scan", persist=True)
    try:
        return await lots.get_lot(session, number, material_code, lock=True)
    except NotFound as exc:
        raise NotFound(exc.detail, rule="ID-1", field="scan", persist=True) from exc


@cache
def _consumed_stmt(of_material: bool, of_execution: bool) -> Any:
    stmt = (
        select(MaterialTransaction, Lot)
        .join(Lot, col(Lot.id) == MaterialTransaction.lot_id)
        .join(OperationExecution, col(OperationExecution.id) == MaterialTransaction.execution_id)
        .where(
            col(OperationExecution.work_order_id) == bindparam("order_id"),
            MaterialTransaction.kind == TransactionKind.consumed,
        )
        .order_by(col(MaterialTransaction.seq))
    )
    if of_material:
        stmt = stmt.where(col(Lot.material_id) == bindparam("material_id"))
    if of_execution:
        stmt = stmt.where(col(MaterialTransaction.execution_id) == bindparam("execution_id"))
    return stmt


async def consumed_rows(
    session: AsyncSession,
    order: WorkOrder,
    material_id: uuid.UUID | None = None,
    execution_id: uuid.UUID | None = None,
) -> list[tuple[MaterialTransaction, Lot]]:
    """Consumption rows (with their lots) of an order, or of one of its executions."""
    stmt = _consumed_stmt(material_id is not None, execution_id is not None)
    params = {"order_id": order.id, "material_id": material_id, "execution_id": execution_id}
    return [(tx, lot) for tx, lot in (await session.execute(stmt, params)).all()]


def plain(value: Decimal) -> str:
    """A quantity as people write it: 10, 0.45 (no trailing zeros, no exponent)."""
    return format(value.normalize(), "f")


def net_quantity(rows: list[tuple[MaterialTransaction, Lot]], uom: str) -> Decimal:
    """Consumed quantity in ``uom`` (transactions are negative in the lot's unit)."""
    return sum(
        (-lots.convert_quantity(tx.quantity, tx.uom, uom, "uom") for tx, _ in rows), Decimal(0)
    )


async def consume(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    data: ConsumeRequest,
) -> tuple[Operation, WorkOrder, MaterialTransaction, Lot]:
    """Consume a lot on a BOM line of the operation: right material (ID-1), usable status
    (ID-1, conditional release only where the line allows it), within the BOM tolerance
    (TR-1), never below zero (TR-4). Linked into the genealogy of the order's output."""
    op, order = await get(session, ident, lock=True)
    check_recording(op, order, "material is consumed")
    lot, scanned = await _lot_for(ctx, session, principal, data)
    m = await lots.material_of(session, lot)
    spec = orders.op_spec(order, op.seq)
    line = next((b for b in spec.get("bom", []) if b["material_code"] == m.code), None)
    if line is None:
        raise Conflict(
            f"{m.code} (lot {lot.lot_number}) is not on the bill of materials of operation "
            f"{op.seq}; expected "
            + (", ".join(b["material_code"] for b in spec.get("bom", [])) or "nothing"),
            rule="ID-1",
            field="scan" if scanned else "lot_number",
        )
    if line.get("scan_required", True) and not scanned and not data.reason:
        raise InvalidInput("a typed lot needs a reason (ID-1)", rule="ID-1", field="reason")
    qty = lots.convert_quantity(data.quantity, data.uom, line["uom"], "uom")
    _, _, high = rules.bom_window(line, order.quantity)
    ex = await execution_of(session, op)
    already = net_quantity(await consumed_rows(session, order, m.id, ex.id), line["uom"])
    if already + qty > high:
        raise Conflict(
            f"{m.code}: {already} {line['uom']} consumed, {qty} more exceeds the BOM maximum "
            f"{high} {line['uom']} (tolerance {line.get('tolerance_pct', 0)}%)",
            rule="TR-1",
            field="quantity",
        )
    reason = data.reason or f"consumed for {order.number}/{op.seq} (scanned)"
    tx = await ledger.post(
        ctx,
        session,
        principal,
        lot,
        kind=TransactionKind.consumed,
        quantity=data.quantity,
        uom=data.uom,
        reason=reason,
        execution_id=ex.id,
        allow_conditional=bool(line.get("allow_conditional")),
    )
    if order.output_lot_id is not None:
        output = await session.get(Lot, order.output_lot_id)
        assert output is not None  # foreign key
        await _link(session, lot, output, -tx.quantity, ex.id, ctx.clock.now())
    return op, order, tx, lot


async def _link(
    session: AsyncSession,
    parent: Lot,
    child: Lot,
    quantity: Decimal,
    execution_id: uuid.UUID,
    at: Any,
) -> None:
    await genealogy.record_edge(
        session, parent, child, EdgeKind.transform, quantity, execution_id, at
    )


# --- output ---------------------------------------------------------------------------------


async def report_output(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    data: OutputRequest,
) -> tuple[Operation, WorkOrder, Lot, int]:
    """The produced lot (quarantine; a pilot batch's lot is flagged and never released),
    its serials, and the genealogy edges from every lot the order consumed (TR-1)."""
    op, order = await get(session, ident, lock=True)
    check_recording(op, order, "output is reported")
    spec = orders.op_spec(order, op.seq)
    if not spec.get("reports_output"):
        raise Conflict(
            f"operation {op.seq} ({op.name}) does not report the order's output", rule="TR-1"
        )
    product = await session.get(MaterialDefinition, order.product_id)
    assert product is not None  # foreign key
    in_order_uom = lots.convert_quantity(data.quantity, data.uom, order.uom, "uom")
    scrap = lots.convert_quantity(data.scrap_quantity, data.uom, order.uom, "uom")
    sampled = lots.convert_quantity(data.sampled_quantity, data.uom, order.uom, "uom")
    in_lot_uom = lots.convert_quantity(data.quantity, data.uom, product.base_uom, "uom")
    ex = await execution_of(session, op)
    now = ctx.clock.now()
    consumed = await consumed_rows(session, order)
    existing: set[uuid.UUID] = set()  # parents the output lot has already
    if order.output_lot_id is None:
        lot, _ = await lots.create_lot(
            ctx,
            session,
            principal,
            m=product,
            lot_number=order.lot_number,
            origin=LotOrigin.produced,
            status=LotStatus.quarantine,
            quantity=in_lot_uom,
            kind=TransactionKind.produced,
            reason=f"{data.reason} [{order.number}/{op.seq}]",
            execution_id=ex.id,
            entered=(data.quantity, data.uom),
            manufactured_at=now,
            expires_at=lots.produced_expiry(product, now, (lot.expires_at for _, lot in consumed)),
        )
        if order.is_pilot:
            lot.is_pilot = True
            session.add(lot)
        order.output_lot_id = lot.id
    else:
        found = await session.get(Lot, order.output_lot_id, with_for_update=True)
        assert found is not None  # foreign key
        lot = found
        existing = await _parents(session, lot)
        await ledger.post(
            ctx,
            session,
            principal,
            lot,
            kind=TransactionKind.produced,
            quantity=data.quantity,
            uom=data.uom,
            reason=f"{data.reason} [{order.number}/{op.seq}]",
            execution_id=ex.id,
            check_eligibility=False,
        )
    await _link_consumed(session, lot, consumed, existing, now)
    if data.serials:
        await containers.add_serials(ctx, session, principal, lot, list(data.serials), data.reason)
    before = orders.view(order)
    order.good_qty += in_order_uom
    order.scrap_qty += scrap
    order.sampled_qty += sampled
    bump_version(order, now)
    session.add(order)
    await audit.record_change(
        session,
        principal,
        action="output",
        entity_type="work_order",
        entity_id=order.number,
        entity_version=order.version,
        old=before,
        new=orders.view(order),
        fields=("good_qty", "scrap_qty", "sampled_qty"),
        reason=data.reason,
    )
    return op, order, lot, len(data.serials)


async def _parents(session: AsyncSession, lot: Lot) -> set[uuid.UUID]:
    rows = await session.execute(
        select(GenealogyEdge.parent_lot_id).where(GenealogyEdge.child_lot_id == lot.id)
    )
    return {row[0] for row in rows}


async def _link_consumed(
    session: AsyncSession,
    output: Lot,
    consumed: list[tuple[MaterialTransaction, Lot]],
    existing: set[uuid.UUID],
    at: Any,
) -> None:
    """An edge from every lot the order consumed to its output lot, unless one is there."""
    per_lot: dict[uuid.UUID, tuple[Lot, Decimal, uuid.UUID]] = {}
    for tx, lot in consumed:
        if lot.id in existing:
            continue
        _, qty, _ = per_lot.get(lot.id, (lot, Decimal(0), tx.execution_id))
        assert tx.execution_id is not None  # joined on it
        per_lot[lot.id] = (lot, qty - tx.quantity, tx.execution_id)
    for lot, qty, execution_id in per_lot.values():
        await _link(session, lot, output, qty, execution_id, at)
