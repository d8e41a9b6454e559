"""Shop-floor execution of operations (DOMAIN 3.2): line clearance, start, pause, resume,
consume by scan, record parameters and checks, report output, complete with an e-signature and
second-person verification. Each action is one transaction with its audit entries."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import literal, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from mes.audit import service as audit
from mes.context import AppContext
from mes.db import held
from mes.equipment import service as equipment
from mes.errors import Conflict, Forbidden, InvalidInput, InvalidTransition, NotFound
from mes.genealogy import service as genealogy
from mes.ids import parse_uuid
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.models import (
    CheckResult,
    EdgeKind,
    Equipment,
    EquipmentStatus,
    ESignature,
    GenealogyEdge,
    Lot,
    LotOrigin,
    LotStatus,
    MaterialDefinition,
    MaterialTransaction,
    Operation,
    OperationExecution,
    OperationStatus,
    ParameterValue,
    Qualification,
    ScanEvent,
    SignatureMeaning,
    TransactionKind,
    WorkOrder,
    WorkOrderStatus,
)
from mes.principal import Principal
from mes.records import bump_version, check_version
from mes.signature import service as signatures
from mes.signature.schemas import SignatureInput
from mes.udi import service as scans
from mes.udi.rules import escape_raw
from mes.work import deviations, orders, rules
from mes.work.schemas import (
    ConsumeRequest,
    LineClearance,
    OutputRequest,
    StartRequest,
)

# Symbology identifier of a Code 128 symbol without FNC1: the plant's internal lot labels.
INTERNAL_LABEL = "]C0"
# The execution field a signature of this meaning fills in.
SIGNER_FIELD = {SignatureMeaning.performed: "performer", SignatureMeaning.verified: "verifier"}
ACTIVE_ORDER = frozenset({WorkOrderStatus.released, WorkOrderStatus.in_progress})


# --- lookups -------------------------------------------------------------------------------


async def get(
    session: AsyncSession, ident: str, *, lock: bool = False
) -> tuple[Operation, WorkOrder]:
    """An operation by id, with its order; its execution, if it has one, is read along into
    the session (``execution_of``)."""
    op_id = parse_uuid(ident)
    if op_id is None:
        raise NotFound(f"operation {ident!r} does not exist; operations are addressed by id")
    stmt = (
        select(Operation, WorkOrder, OperationExecution)
        .join(WorkOrder, col(WorkOrder.id) == Operation.work_order_id)
        .outerjoin(OperationExecution, col(OperationExecution.id) == Operation.execution_id)
        .where(Operation.id == op_id)
    )
    if lock:
        stmt = stmt.with_for_update(of=[Operation, WorkOrder])
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFound(f"operation {ident!r} does not exist")
    return row[0], row[1]


async def locked(
    session: AsyncSession, ident: str, expected_version: int | None
) -> tuple[Operation, WorkOrder]:
    """The operation and its order, row-locked, at the client's If-Match version."""
    op, order = await get(session, ident, lock=True)
    check_version(op, expected_version, f"operation {order.number}/{op.seq}")
    return op, order


async def public(session: AsyncSession, op: Operation, order: WorkOrder) -> Any:
    return (await orders.operations_public(session, [(op, order)]))[0]


async def execution_of(
    session: AsyncSession, op: Operation, *, current: bool = False
) -> OperationExecution:
    """The operation's execution. ``get`` reads it along with the operation, but a locked
    ``get`` that waited for the lock returns the locked rows as they are now and the execution
    as it was before the wait (PostgreSQL, READ COMMITTED): its id and the unit and start never
    change once set, the rest (pauses, performer, verifier) is read again with ``current``."""
    ex = (
        await session.get(OperationExecution, op.execution_id, populate_existing=current)
        if op.execution_id
        else None
    )
    if ex is None:  # pragma: no cover - running operations always have one
        raise InvalidTransition(f"operation {op.seq} has not started")
    return ex


def _check_order_active(order: WorkOrder) -> None:
    status = WorkOrderStatus(order.status)
    if status not in ACTIVE_ORDER:
        raise InvalidTransition(
            f"work order {order.number} is {status}; no work can be done on it",
            current_status=str(status),
        )


def check_recording(op: Operation, order: WorkOrder, what: str) -> None:
    _check_order_active(order)
    status = OperationStatus(op.status)
    if status not in rules.RECORDING:
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} is {status}; {what} only while running",
            current_status=str(status),
            rule="AC-3",
        )


async def _eligible_stmt(
    session: AsyncSession, order: WorkOrder, op: Operation
) -> SelectOfScalar[Equipment]:
    spec = orders.op_spec(order, op.seq)
    stmt = select(Equipment).where(Equipment.parent_id == op.work_center_id)
    if spec.get("eligible_equipment"):
        stmt = stmt.where(col(Equipment.code).in_(spec["eligible_equipment"]))
    elif spec.get("equipment_class"):
        cls = await equipment.find_class(session, spec["equipment_class"])
        stmt = stmt.where(Equipment.equipment_class_id == (cls.id if cls else None))
    return stmt


async def eligible_units(session: AsyncSession, order: WorkOrder, op: Operation) -> list[Equipment]:
    """Units that may run the operation: the listed ones, else the units of the named class
    under the work center, else every unit of the work center."""
    stmt = await _eligible_stmt(session, order, op)
    return list((await session.execute(stmt.order_by(col(Equipment.code)))).scalars())


async def _eligible_unit(
    ctx: AppContext,
    session: AsyncSession,
    order: WorkOrder,
    op: Operation,
    code: str,
    *,
    lock: bool = False,
) -> Equipment:
    """The unit ``code`` if it may run the operation (row-locked with ``lock``); 409 PROC-3
    naming the eligible units otherwise."""
    stmt = (await _eligible_stmt(session, order, op)).where(col(Equipment.code) == code)
    if lock:
        stmt = stmt.with_for_update()
    unit = (await session.execute(stmt)).scalar_one_or_none()
    if unit is None:
        eligible = sorted(u.code for u in await eligible_units(session, order, op))
        raise Conflict(
            f"{code} may not run operation {op.seq} ({op.name}); eligible: "
            + (", ".join(eligible) or "none"),
            rule="PROC-3",
            field="equipment_code",
        )
    if order.is_pilot:
        site = await session.get(Equipment, unit.site_id) if unit.site_id else None
        if site is None or site.code not in ctx.settings.pilot_sites:
            raise Conflict(
                f"pilot batch {order.number} may run only on pilot-center equipment; {code} "
                f"is at {site.code if site else 'no site'}",
                rule="PROC-3",
                field="equipment_code",
            )
    return unit


async def _set_equipment_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    unit: Equipment,
    target: EquipmentStatus,
    reason: str,
) -> None:
    before = unit.status
    if before == target:
        return
    unit.status = target
    bump_version(unit, ctx.clock.now())
    session.add(unit)
    await audit.record(
        session,
        principal,
        action="status",
        entity_type="equipment",
        entity_id=unit.code,
        entity_version=unit.version,
        changes=[{"field": "status", "old": before, "new": str(target)}],
        reason=reason,
    )


# --- line clearance and start ----------------------------------------------------------------


async def line_clearance(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    data: LineClearance,
) -> tuple[Operation, WorkOrder]:
    """The operator confirms the line is clear of the previous product before starting."""
    op, order = await locked(session, ident, expected_version)
    _check_order_active(order)
    if OperationStatus(op.status) not in (OperationStatus.waiting, OperationStatus.ready):
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} is {op.status}; line clearance comes before "
            "the start",
            current_status=str(op.status),
        )
    unit = await _eligible_unit(ctx, session, order, op, data.equipment_code)
    now = ctx.clock.now()
    op.clearance_equipment_id = unit.id
    op.clearance_by = principal.username
    op.clearance_at = now
    op.clearance_items = list(data.items)
    bump_version(op, now)
    session.add(op)
    await audit.record(
        session,
        principal,
        action="line_clearance",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=[
            {
                "field": "line_clearance",
                "old": None,
                "new": {"equipment": unit.code, "items": data.items},
            },
            {"field": "work_order", "old": None, "new": order.number},
        ],
        reason=f"line clearance of {unit.code} confirmed",
    )
    return op, order


async def _check_qualified(
    ctx: AppContext, session: AsyncSession, principal: Principal, spec: dict[str, Any]
) -> None:
    code = spec.get("required_qualification")
    if not code:
        return
    found = (
        await session.execute(
            select(Qualification).where(
                Qualification.username == principal.username, Qualification.code == code
            )
        )
    ).scalar_one_or_none()
    if found is None or found.valid_until <= ctx.clock.now():
        state = "expired" if found is not None else "missing"
        raise Forbidden(
            f"{principal.username} is not qualified for {code} ({state}); the operation needs it",
            rule="AC-7",
        )


async def start(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    data: StartRequest,
) -> tuple[Operation, WorkOrder]:
    """ready -> running (AC-3), refused on unusable, busy or ineligible equipment (PROC-3), an
    unconfirmed line clearance, or an operator without the qualification (AC-7)."""
    op, order = await locked(session, ident, expected_version)
    _check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "start")
    spec = orders.op_spec(order, op.seq)
    await _check_qualified(ctx, session, principal, spec)
    unit = await _eligible_unit(ctx, session, order, op, data.equipment_code, lock=True)
    now = ctx.clock.now()
    problems = equipment.usability(unit, now)
    if problems:
        raise Conflict(f"{unit.code} cannot be used: {', '.join(problems)}", rule="PROC-3")
    if unit.status != EquipmentStatus.idle:
        raise Conflict(
            f"{unit.code} is {unit.status}; it must be idle to start",
            rule="PROC-3",
            current_status=str(unit.status),
        )
    if op.clearance_equipment_id != unit.id:
        raise Conflict(
            f"line clearance of {unit.code} is not confirmed for operation {op.seq}",
            field="equipment_code",
        )
    room_id = unit.room_id
    if data.room_code is not None:
        room = await equipment.find(session, data.room_code)
        if room is None or room.id != unit.room_id:
            raise Conflict(
                f"{unit.code} stands in another room than {data.room_code}", field="room_code"
            )
    ex = OperationExecution(
        operation_id=op.id,
        work_order_id=order.id,
        equipment_id=unit.id,
        room_id=room_id,
        terminal=principal.terminal,
        started_at=now,
        started_by=principal.username,
    )
    session.add(ex)
    await session.flush()
    op.execution_id = ex.id
    op.equipment_id = unit.id
    op.needs_reschedule = False
    op.reschedule_reason = None
    await orders.set_operation_status(
        ctx, session, principal, op, order, "start", f"started on {unit.code}"
    )
    await _set_equipment_status(
        ctx,
        session,
        principal,
        unit,
        EquipmentStatus.running,
        f"operation {order.number}/{op.seq} started",
    )
    if WorkOrderStatus(order.status) == WorkOrderStatus.released:
        await orders.transition(
            ctx, session, principal, order, "start", "first operation started", started_at=now
        )
    return op, order


async def pause(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    reason: str,
) -> tuple[Operation, WorkOrder]:
    op, order = await locked(session, ident, expected_version)
    await orders.set_operation_status(ctx, session, principal, op, order, "pause", reason)
    ex = await execution_of(session, op, current=True)
    ex.paused_at = ctx.clock.now()
    session.add(ex)
    return op, order


async def resume(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
) -> tuple[Operation, WorkOrder]:
    op, order = await locked(session, ident, expected_version)
    _check_order_active(order)
    await orders.set_operation_status(ctx, session, principal, op, order, "resume", "resumed")
    ex = await execution_of(session, op, current=True)
    now = ctx.clock.now()
    if ex.paused_at is not None:
        ex.paused_min += Decimal((now - ex.paused_at).total_seconds()) / Decimal(60)
        ex.paused_at = None
    session.add(ex)
    return op, order


async def release_hold(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """held -> running: QA signs once every deviation of the operation is dispositioned."""
    op, order = await locked(session, ident, expected_version)
    _check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "release_hold")
    open_devs = await deviations.open_deviations(session, order.id, op.id)
    if open_devs:
        raise Conflict(
            f"operation {order.number}/{op.seq} has open deviations: "
            + ", ".join(d.number for d in open_devs),
            rule="PROC-2",
        )
    ex = await execution_of(session, op, current=True)
    esig = await _sign(
        ctx, session, principal, op, order, ex, "running", signature, SignatureMeaning.approved
    )
    await orders.set_operation_status(
        ctx, session, principal, op, order, "release_hold", signature.comment or "hold released"
    )
    return op, order, esig


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


async def _consumed(
    session: AsyncSession,
    order: WorkOrder,
    material_id: uuid.UUID | None = None,
    execution_id: uuid.UUID | None = None,
) -> list[tuple[MaterialTransaction, Lot]]:
    """Consumption rows (with their lots) of an order, or of one of its executions."""
    stmt = (
        select(MaterialTransaction, Lot)
        .join(Lot, col(Lot.id) == MaterialTransaction.lot_id)
        .join(OperationExecution, col(OperationExecution.id) == MaterialTransaction.execution_id)
        .where(
            OperationExecution.work_order_id == order.id,
            MaterialTransaction.kind == TransactionKind.consumed,
        )
        .order_by(col(MaterialTransaction.seq))
    )
    if material_id is not None:
        stmt = stmt.where(Lot.material_id == material_id)
    if execution_id is not None:
        stmt = stmt.where(MaterialTransaction.execution_id == execution_id)
    return [(tx, lot) for tx, lot in (await session.execute(stmt)).all()]


def _plain(value: Decimal) -> str:
    """A quantity as people write it: 10, 0.45 (no trailing zeros, no exponent)."""
    return format(value.normalize(), "f")


def _net(rows: list[tuple[MaterialTransaction, Lot]], uom: str) -> Decimal:
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
    already = _net(await _consumed(session, order, m.id, ex.id), line["uom"])
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
    consumed = await _consumed(session, order)
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
            expires_at=_expiry(product, now, consumed),
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


def _expiry(
    product: MaterialDefinition, now: Any, consumed: list[tuple[MaterialTransaction, Lot]]
) -> Any:
    """UDI-7: manufacture date + shelf life, never later than the earliest consumed lot."""
    expiry = lots.default_expiry(product, now)
    for _, lot in consumed:
        if lot.expires_at is not None and (expiry is None or lot.expires_at < expiry):
            expiry = lot.expires_at
    return expiry


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


# --- completion and verification ------------------------------------------------------------


async def _completion_problems(
    session: AsyncSession, op: Operation, order: WorkOrder, ex: OperationExecution
) -> list[str]:
    spec = orders.op_spec(order, op.seq)
    problems: list[str] = []
    done = await _execution_facts(session, ex.id)
    for p in spec.get("parameters", []):
        if p.get("capture") != "lab" and ("parameter", p["name"]) not in done:
            problems.append(f"parameter {p['name']} not recorded")
    for c in spec.get("checks", []):
        if ("check", c["name"]) not in done:
            problems.append(f"check {c['name']} not done")
    bom = spec.get("bom", [])
    if bom:
        materials = await lots.active_materials(session, [b["material_code"] for b in bom], "bom")
        rows = await _consumed(session, order, execution_id=ex.id)
        for line in bom:
            m = materials[line["material_code"]]
            consumed = _net([r for r in rows if r[1].material_id == m.id], line["uom"])
            _, low, high = rules.bom_window(line, order.quantity)
            if not low <= consumed <= high:
                problems.append(
                    f"{m.code}: {_plain(consumed)} {line['uom']} consumed, BOM needs "
                    f"{_plain(low)}..{_plain(high)}"
                )
    if spec.get("reports_output") and ("output", "") not in done:
        problems.append("no output reported")
    return problems


async def _execution_facts(session: AsyncSession, execution_id: uuid.UUID) -> set[tuple[str, str]]:
    """What an execution has, in one statement: ("parameter", name) for each parameter with a
    value, ("check", name) for each check done, and ("output", "") once output is reported."""
    parts = (
        select(literal("parameter"), col(ParameterValue.name)).where(
            ParameterValue.execution_id == execution_id
        ),
        select(literal("check"), col(CheckResult.name)).where(
            CheckResult.execution_id == execution_id
        ),
        select(literal("output"), literal("")).where(
            MaterialTransaction.execution_id == execution_id,
            MaterialTransaction.kind == TransactionKind.produced,
        ),
    )
    return {(kind, name) for kind, name in await session.execute(union(*parts))}


async def complete(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """running -> completed with the performer's e-signature: values present, checks done, BOM
    consumed within tolerance and output reported (TR-1), no open deviation (PROC-2)."""
    op, order = await locked(session, ident, expected_version)
    _check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "complete")
    ex = await execution_of(session, op)
    problems = await _completion_problems(session, op, order, ex)
    if problems:
        raise Conflict(
            f"operation {order.number}/{op.seq} cannot complete: " + "; ".join(problems),
            rule="TR-1",
            problems=problems,
        )
    open_devs = await deviations.open_deviations(session, order.id, op.id)
    if open_devs:
        raise Conflict(
            f"operation {order.number}/{op.seq} has open deviations: "
            + ", ".join(d.number for d in open_devs),
            rule="PROC-2",
        )
    now = ctx.clock.now()
    esig = await _sign(
        ctx, session, principal, op, order, ex, "completed", signature, SignatureMeaning.performed
    )
    ex.performer = principal.username
    ex.ended_at = now
    ex.completion_signature_id = esig.id
    session.add(ex)
    await orders.set_operation_status(
        ctx, session, principal, op, order, "complete", signature.comment or "completed"
    )
    unit = await session.get(Equipment, ex.equipment_id, with_for_update=True)
    assert unit is not None  # foreign key
    if unit.status == EquipmentStatus.running:  # a unit reported down meanwhile stays down
        await _set_equipment_status(
            ctx,
            session,
            principal,
            unit,
            EquipmentStatus.idle,
            f"operation {order.number}/{op.seq} completed",
        )
    await orders.advance(ctx, session, principal, order)
    return op, order, esig


async def verify(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """completed -> verified by a second person (AC-2, ES-5), where the work master asks."""
    op, order = await locked(session, ident, expected_version)
    spec = orders.op_spec(order, op.seq)
    if not spec.get("requires_verification"):
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} does not need a second-person verification",
            current_status=str(op.status),
        )
    await orders.require_operation_action(session, principal, op, order, "verify")
    ex = await execution_of(session, op, current=True)
    if principal.username in (ex.performer, ex.started_by):
        raise Forbidden("the verifier must be a different person from the performer", rule="AC-2")
    esig = await _sign(
        ctx, session, principal, op, order, ex, "verified", signature, SignatureMeaning.verified
    )
    ex.verifier = principal.username
    ex.verification_signature_id = esig.id
    session.add(ex)
    await orders.set_operation_status(
        ctx, session, principal, op, order, "verify", signature.comment or "verified"
    )
    await orders.advance(ctx, session, principal, order)
    return op, order, esig


def operation_view(op: Operation, order: WorkOrder, ex: OperationExecution) -> dict[str, Any]:
    """The canonical content of an executed operation (what its signatures sign)."""
    return {
        "work_order": order.number,
        "seq": op.seq,
        "name": op.name,
        "status": str(op.status),
        "execution_id": str(ex.id),
        "equipment_id": str(ex.equipment_id),
        "started_at": ex.started_at,
        "started_by": ex.started_by,
        "performer": ex.performer,
        "verifier": ex.verifier,
    }


async def _sign(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    op: Operation,
    order: WorkOrder,
    ex: OperationExecution,
    target: str,
    signature: SignatureInput,
    meaning: SignatureMeaning,
) -> ESignature:
    content = dict(operation_view(op, order, ex), status=target)
    if meaning in SIGNER_FIELD:
        content[SIGNER_FIELD[meaning]] = principal.username
    return await signatures.sign(
        ctx,
        session,
        principal,
        record_type="operation",
        record_id=str(op.id),
        record_version=op.version + 1,
        current_version=op.version,
        content=content,
        signature=signature,
        allowed_meanings=frozenset({meaning}),
    )


async def _signable(session: AsyncSession, ident: str) -> tuple[int, dict[str, Any]] | None:
    op_id = parse_uuid(ident)
    op = held(session, Operation, op_id) if op_id is not None else None
    if op is not None:  # just signed in this session: no need to read it again
        order = await session.get(WorkOrder, op.work_order_id)
        assert order is not None  # foreign key
    else:
        try:
            op, order = await get(session, ident)
        except NotFound:
            return None
    if op.execution_id is None:
        return None
    ex = await execution_of(session, op)
    return op.version, operation_view(op, order, ex)


signatures.register_signable("operation", _signable)
