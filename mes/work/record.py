"""The production record (device history record) of a work order, assembled from what was
recorded as the work happened (ISO 13485 7.5.1; PR-1..PR-7, AT-7), as JSON and as PDF."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit.schemas import AuditEntryPublic
from mes.clock import utc_now
from mes.equipment import service as equipment_service
from mes.models import (
    AuditEntry,
    CheckResult,
    Deviation,
    ESignature,
    Lot,
    MaterialDefinition,
    MaterialTransaction,
    Operation,
    OperationExecution,
    ParameterValue,
    SerialUnit,
    TransactionKind,
    WorkMaster,
    WorkOrder,
)
from mes.signature import service as signatures
from mes.signature.schemas import SignaturePublic
from mes.telemetry.context import ExecutionWindow, SignalSummary, line_data
from mes.udi.label import build_label
from mes.work import deviations, orders, rules
from mes.work.schemas import DeviationPublic

# --- record content --------------------------------------------------------------------------


class Quantities(BaseModel):
    uom: str
    started: Decimal
    good: Decimal
    scrap: Decimal
    sampled: Decimal
    reconciled: bool
    reconciliation_problem: str | None


class OutputLot(BaseModel):
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    status: str
    pilot: bool
    manufactured_at: datetime | None
    expires_at: datetime | None
    serials: int
    udi_di: str | None
    udi_element_string: str | None
    udi_hri: str | None


class LineClearanceRecord(BaseModel):
    equipment_code: str | None
    by: str
    at: datetime
    items: list[str]


class ConsumedLot(BaseModel):
    operation_seq: int
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    at: datetime
    username: str
    reason: str


class ParameterRecord(BaseModel):
    operation_seq: int
    name: str
    value: Decimal
    uom: str
    target: Decimal | None
    alert_low: Decimal | None
    alert_high: Decimal | None
    action_low: Decimal | None
    action_high: Decimal | None
    critical: bool
    limit_state: str
    passed: bool
    source: str
    instrument: str | None
    at: datetime
    username: str
    deviation: str | None


class CheckRecord(BaseModel):
    operation_seq: int
    name: str
    passed: bool
    note: str | None
    instrument: str | None
    at: datetime
    username: str
    deviation: str | None


class OperationRecord(BaseModel):
    seq: int
    name: str
    status: str
    work_center_code: str
    equipment_code: str | None
    room_code: str | None
    started_at: datetime | None
    started_by: str | None
    ended_at: datetime | None
    paused_min: Decimal
    performer: str | None
    verifier: str | None
    line_clearance: LineClearanceRecord | None


class ProductionRecord(BaseModel):
    work_order: str
    status: str
    pilot: bool
    product_code: str
    product_name: str
    work_master_code: str
    work_master_version: int
    lot_number: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    closed_at: datetime | None
    quantities: Quantities
    output: OutputLot | None
    operations: list[OperationRecord]
    materials: list[ConsumedLot]
    parameters: list[ParameterRecord]
    checks: list[CheckRecord]
    process_data: list[SignalSummary]
    environment: list[SignalSummary]
    deviations: list[DeviationPublic]
    signatures: list[SignaturePublic]
    audit_trail: list[AuditEntryPublic]


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


async def assemble(
    session: AsyncSession, number: str, now: datetime | None = None
) -> ProductionRecord:
    """The production record of work order ``number``; an operation still running is shown
    with its line data up to ``now``."""
    order = await orders.get(session, number)
    product = await session.get(MaterialDefinition, order.product_id)
    wm = await session.get(WorkMaster, order.work_master_id)
    assert product is not None  # foreign key
    assert wm is not None  # foreign key
    ops = await orders.operations_of(session, order)
    execs = {
        ex.operation_id: ex
        for ex in (
            await session.execute(
                select(OperationExecution).where(OperationExecution.work_order_id == order.id)
            )
        ).scalars()
    }
    seq_of_exec = {ex.id: op.seq for op in ops if (ex := execs.get(op.id)) is not None}
    codes = await equipment_service.codes_of(
        session,
        {op.work_center_id for op in ops}
        | {op.clearance_equipment_id for op in ops}
        | {ex.equipment_id for ex in execs.values()}
        | {ex.room_id for ex in execs.values()},
    )
    dev_rows = list(
        (
            await session.execute(
                select(Deviation)
                .where(Deviation.work_order_id == order.id)
                .order_by(col(Deviation.opened_at), col(Deviation.number))
            )
        ).scalars()
    )
    dev_numbers = {d.id: d.number for d in dev_rows}
    operations = _operations(ops, execs, codes)
    process_data, environment = await line_data(
        await session.connection(), _windows(order, operations, now or utc_now())
    )
    materials = await _materials(session, execs, seq_of_exec)
    parameters = await _parameters(session, order, seq_of_exec, dev_numbers)
    checks = await _checks(session, order, seq_of_exec, dev_numbers)
    seq_of_op = {op.id: op.seq for op in ops}
    dev_public = [
        deviations.view_public(
            d, order.number, seq_of_op.get(d.operation_id) if d.operation_id else None
        )
        for d in dev_rows
    ]
    record_keys = (
        [("work_order", order.number)]
        + [("operation", str(op.id)) for op in ops]
        + [("deviation", d.number) for d in dev_rows]
    )
    sigs, trail = await _signed_trail(session, record_keys)
    problem = rules.reconciliation_problem(
        order.quantity,
        order.good_qty,
        order.scrap_qty,
        order.sampled_qty,
        wm.reconciliation_tolerance_pct,
    )
    return ProductionRecord(
        work_order=order.number,
        status=str(order.status),
        pilot=order.is_pilot,
        product_code=product.code,
        product_name=product.name,
        work_master_code=order.master_code,
        work_master_version=order.master_revision,
        lot_number=order.lot_number,
        created_at=order.created_at,
        started_at=order.started_at,
        completed_at=order.completed_at,
        closed_at=order.closed_at,
        quantities=Quantities(
            uom=order.uom,
            started=order.quantity,
            good=order.good_qty,
            scrap=order.scrap_qty,
            sampled=order.sampled_qty,
            reconciled=problem is None,
            reconciliation_problem=problem,
        ),
        output=await _output(session, order, product),
        operations=operations,
        materials=materials,
        parameters=parameters,
        checks=checks,
        process_data=process_data,
        environment=environment,
        deviations=dev_public,
        signatures=sigs,
        audit_trail=trail,
    )


def _operations(
    ops: list[Operation],
    execs: dict[uuid.UUID, OperationExecution],
    codes: dict[uuid.UUID, str],
) -> list[OperationRecord]:
    """Each operation with who, when, unit, room, pauses and line clearance (PR-1)."""
    return [
        OperationRecord(
            seq=op.seq,
            name=op.name,
            status=str(op.status),
            work_center_code=codes[op.work_center_id],
            equipment_code=codes.get(ex.equipment_id) if ex else None,
            room_code=codes.get(ex.room_id) if ex and ex.room_id else None,
            started_at=ex.started_at if ex else None,
            started_by=ex.started_by if ex else None,
            ended_at=ex.ended_at if ex else None,
            paused_min=(ex.paused_min if ex else Decimal(0)).quantize(Decimal("0.01")),
            performer=ex.performer if ex else None,
            verifier=ex.verifier if ex else None,
            line_clearance=LineClearanceRecord(
                equipment_code=codes.get(op.clearance_equipment_id)
                if op.clearance_equipment_id
                else None,
                by=op.clearance_by,
                at=op.clearance_at,
                items=list(op.clearance_items or []),
            )
            if op.clearance_by is not None and op.clearance_at is not None
            else None,
        )
        for op in ops
        for ex in [execs.get(op.id)]
    ]


def _windows(
    order: WorkOrder, operations: list[OperationRecord], now: datetime
) -> list[ExecutionWindow]:
    """The executed operations, each with its interval and its frozen parameter specs."""
    specs = {spec["seq"]: spec.get("parameters", []) for spec in order.snapshot["operations"]}
    return [
        ExecutionWindow(
            operation_seq=op.seq,
            unit_code=op.equipment_code,
            room_code=op.room_code,
            start=op.started_at,
            end=op.ended_at or now,
            parameters=specs.get(op.seq, []),
        )
        for op in operations
        if op.started_at is not None
    ]


async def _materials(
    session: AsyncSession,
    execs: dict[uuid.UUID, OperationExecution],
    seq_of_exec: dict[uuid.UUID, int],
) -> list[ConsumedLot]:
    """Every consumed lot with its quantity (PR-4)."""
    exec_ids = [ex.id for ex in execs.values()]
    materials: list[ConsumedLot] = []
    if exec_ids:
        rows = await session.execute(
            select(MaterialTransaction, Lot.lot_number, MaterialDefinition.code)
            .join(Lot, col(Lot.id) == MaterialTransaction.lot_id)
            .join(MaterialDefinition, col(MaterialDefinition.id) == Lot.material_id)
            .where(
                col(MaterialTransaction.execution_id).in_(exec_ids),
                MaterialTransaction.kind == TransactionKind.consumed,
            )
            .order_by(col(MaterialTransaction.seq))
        )
        materials = [
            ConsumedLot(
                operation_seq=seq_of_exec.get(tx.execution_id, 0) if tx.execution_id else 0,
                lot_number=lot_number,
                material_code=code,
                quantity=-tx.quantity,
                uom=tx.uom,
                at=tx.at,
                username=tx.username,
                reason=tx.reason,
            )
            for tx, lot_number, code in rows.all()
        ]
    return materials


async def _parameters(
    session: AsyncSession,
    order: WorkOrder,
    seq_of_exec: dict[uuid.UUID, int],
    dev_numbers: dict[uuid.UUID, str],
) -> list[ParameterRecord]:
    """Recorded values beside their limits, pass/fail and deviation (PROC-2)."""
    specs = {
        (spec["seq"], p["name"]): p
        for spec in order.snapshot["operations"]
        for p in spec.get("parameters", [])
    }
    values = (
        await session.execute(
            select(ParameterValue)
            .where(ParameterValue.work_order_id == order.id)
            .order_by(col(ParameterValue.seq))
        )
    ).scalars()
    parameters: list[ParameterRecord] = []
    for v in values:
        seq = seq_of_exec[v.execution_id]
        spec = specs[(seq, v.name)]
        parameters.append(
            ParameterRecord(
                operation_seq=seq,
                name=v.name,
                value=v.value,
                uom=v.uom,
                target=_dec(spec.get("target")),
                alert_low=_dec(spec.get("alert_low")),
                alert_high=_dec(spec.get("alert_high")),
                action_low=_dec(spec.get("action_low")),
                action_high=_dec(spec.get("action_high")),
                critical=bool(spec.get("critical")),
                limit_state=v.limit_state,
                passed=v.limit_state != "action",
                source=v.source,
                instrument=v.instrument,
                at=v.at,
                username=v.username,
                deviation=dev_numbers.get(v.deviation_id) if v.deviation_id else None,
            )
        )
    return parameters


async def _checks(
    session: AsyncSession,
    order: WorkOrder,
    seq_of_exec: dict[uuid.UUID, int],
    dev_numbers: dict[uuid.UUID, str],
) -> list[CheckRecord]:
    """In-process checks with performer and instrument (PR-3)."""
    check_rows = (
        await session.execute(
            select(CheckResult)
            .where(CheckResult.work_order_id == order.id)
            .order_by(col(CheckResult.seq))
        )
    ).scalars()
    return [
        CheckRecord(
            operation_seq=seq_of_exec[c.execution_id],
            name=c.name,
            passed=c.passed,
            note=c.note,
            instrument=c.instrument,
            at=c.at,
            username=c.username,
            deviation=dev_numbers.get(c.deviation_id) if c.deviation_id else None,
        )
        for c in check_rows
    ]


async def _signed_trail(
    session: AsyncSession, record_keys: list[tuple[str, str]]
) -> tuple[list[SignaturePublic], list[AuditEntryPublic]]:
    """Signatures (ES-2) and audit entries (AT-7) of the order, its operations and deviations."""
    sig_rows = (
        await session.execute(
            select(ESignature)
            .where(
                or_(
                    *(
                        (col(ESignature.record_type) == t) & (col(ESignature.record_id) == i)
                        for t, i in record_keys
                    )
                )
            )
            .order_by(col(ESignature.signed_at), col(ESignature.id))
        )
    ).scalars()
    sigs = [await signatures.public(session, s) for s in sig_rows]
    audit_rows = (
        await session.execute(
            select(AuditEntry)
            .where(
                or_(
                    *(
                        (col(AuditEntry.entity_type) == t) & (col(AuditEntry.entity_id) == i)
                        for t, i in record_keys
                    )
                )
            )
            .order_by(col(AuditEntry.seq))
        )
    ).scalars()
    trail = [AuditEntryPublic.model_validate(e, from_attributes=True) for e in audit_rows]
    return sigs, trail


async def _output(
    session: AsyncSession, order: WorkOrder, product: MaterialDefinition
) -> OutputLot | None:
    if order.output_lot_id is None:
        return None
    lot = await session.get(Lot, order.output_lot_id)
    assert lot is not None  # foreign key
    serials = (
        await session.execute(select(SerialUnit.id).where(SerialUnit.lot_id == lot.id))
    ).all()
    label = None
    if product.gtin is not None:
        label = build_label(
            product.gtin,
            lot=lot.lot_number,
            production_date=lot.manufactured_at.date() if lot.manufactured_at else None,
            expiry_date=lot.expires_at.date() if lot.expires_at else None,
        )
    return OutputLot(
        lot_number=lot.lot_number,
        material_code=product.code,
        quantity=lot.initial_qty,
        uom=lot.uom,
        status=str(lot.status),
        pilot=lot.is_pilot,
        manufactured_at=lot.manufactured_at,
        expires_at=lot.expires_at,
        serials=len(serials),
        udi_di=product.gtin,
        udi_element_string=label.element_string_display if label else None,
        udi_hri=label.hri if label else None,
    )
