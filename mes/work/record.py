"""The production record (device history record) of a work order, assembled from what was
recorded as the work happened (ISO 13485 7.5.1; PR-1..PR-7, AT-7), as JSON and as PDF."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from fpdf import FPDF
from pydantic import BaseModel
from sqlalchemy import or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit.schemas import AuditEntryPublic
from mes.models import (
    AuditEntry,
    CheckResult,
    Deviation,
    Equipment,
    ESignature,
    Lot,
    MaterialDefinition,
    MaterialTransaction,
    OperationExecution,
    ParameterValue,
    SerialUnit,
    TransactionKind,
    WorkMaster,
    WorkOrder,
)
from mes.signature import service as signatures
from mes.signature.schemas import SignaturePublic
from mes.udi.label import build_label
from mes.work import orders, rules
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
    deviations: list[DeviationPublic]
    signatures: list[SignaturePublic]
    audit_trail: list[AuditEntryPublic]


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


async def _codes(session: AsyncSession, ids: set[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(Equipment.id, Equipment.code).where(col(Equipment.id).in_(wanted))
    )
    return {r.id: r.code for r in rows}


async def assemble(session: AsyncSession, number: str) -> ProductionRecord:
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
    codes = await _codes(
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
    seq_of_op = {op.id: op.seq for op in ops}
    operations = [
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
    parameters = []
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
    check_rows = (
        await session.execute(
            select(CheckResult)
            .where(CheckResult.work_order_id == order.id)
            .order_by(col(CheckResult.seq))
        )
    ).scalars()
    checks = [
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
    dev_public = [
        DeviationPublic(
            number=d.number,
            kind=d.kind,
            status=d.status,
            work_order=order.number,
            operation_seq=seq_of_op.get(d.operation_id) if d.operation_id else None,
            description=d.description,
            opened_at=d.opened_at,
            opened_by=d.opened_by,
            disposition=d.disposition,
            closed_at=d.closed_at,
            closed_by=d.closed_by,
            version=d.version,
        )
        for d in dev_rows
    ]
    record_keys = (
        [("work_order", order.number)]
        + [("operation", str(op.id)) for op in ops]
        + [("deviation", d.number) for d in dev_rows]
    )
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
        deviations=dev_public,
        signatures=sigs,
        audit_trail=trail,
    )


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


# --- PDF -----------------------------------------------------------------------------------


def _latin(text: Any) -> str:
    """The PDF's core fonts carry Latin-1; other characters are transliterated."""
    s = "" if text is None else str(text)
    s = s.replace("\u2013", "-").replace("\u2014", "-").replace("\u00b5", "u")
    return unicodedata.normalize("NFKD", s).encode("latin-1", "replace").decode("latin-1")


def _range(low: Decimal | None, high: Decimal | None) -> str:
    if low is None and high is None:
        return "-"
    return f"{'' if low is None else low} .. {'' if high is None else high}".strip()


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


class _Pdf(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.title_text = title
        self.set_auto_page_break(auto=True, margin=14)
        self.set_margins(10, 10, 10)

    def header(self) -> None:
        self.set_font("Helvetica", "B", 10)
        self.cell(0, 6, _latin(self.title_text), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def footer(self) -> None:
        self.set_y(-10)
        self.set_font("Helvetica", "", 7)
        self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="R")

    def section(self, title: str) -> None:
        self.ln(2)
        self.set_font("Helvetica", "B", 10)
        self.cell(0, 6, _latin(title), new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", "", 8)

    def line_text(self, text: str) -> None:
        self.set_font("Helvetica", "", 8)
        self.multi_cell(0, 4.5, _latin(text), new_x="LMARGIN", new_y="NEXT")

    def rows(self, headings: list[str], data: list[list[Any]], widths: list[int]) -> None:
        if not data:
            self.line_text("(none)")
            return
        self.set_font("Helvetica", "", 7)
        with self.table(
            col_widths=tuple(widths), text_align="LEFT", line_height=4, first_row_as_headings=True
        ) as table:
            row = table.row()
            for h in headings:
                row.cell(_latin(h))
            for values in data:
                row = table.row()
                for v in values:
                    row.cell(_latin("-" if v is None else v))


def render_pdf(rec: ProductionRecord) -> bytes:
    pdf = _Pdf(f"Production record {rec.work_order} - {rec.product_code} lot {rec.lot_number}")
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.section("Header")
    q = rec.quantities
    pdf.line_text(
        f"Work order {rec.work_order} ({rec.status}{', PILOT BATCH' if rec.pilot else ''}); "
        f"product {rec.product_code} {rec.product_name}; work master "
        f"{rec.work_master_code} version {rec.work_master_version}; lot {rec.lot_number}"
    )
    pdf.line_text(
        f"Created {_ts(rec.created_at)}; started {_ts(rec.started_at)}; completed "
        f"{_ts(rec.completed_at)}; closed {_ts(rec.closed_at)}"
    )
    pdf.line_text(
        f"Quantities ({q.uom}): started {q.started}, good {q.good}, scrap {q.scrap}, samples "
        f"{q.sampled}; reconciliation "
        + ("balanced" if q.reconciled else f"NOT balanced: {q.reconciliation_problem}")
    )
    if rec.output is not None:
        o = rec.output
        pdf.line_text(
            f"Output lot {o.lot_number} ({o.material_code}): {o.quantity} {o.uom}, status "
            f"{o.status}{', pilot - not for distribution' if o.pilot else ''}; manufactured "
            f"{_ts(o.manufactured_at)}; expires {_ts(o.expires_at)}; serials {o.serials}"
        )
        if o.udi_hri:
            pdf.line_text(f"UDI-DI {o.udi_di}; UDI {o.udi_hri}; AIDC {o.udi_element_string}")
    pdf.section("Operations")
    pdf.rows(
        [
            "Seq",
            "Operation",
            "Status",
            "Work center",
            "Equipment",
            "Room",
            "Started",
            "By",
            "Ended",
            "Paused min",
            "Performer",
            "Verifier",
            "Line clearance",
        ],
        [
            [
                o.seq,
                o.name,
                o.status,
                o.work_center_code,
                o.equipment_code,
                o.room_code,
                _ts(o.started_at),
                o.started_by,
                _ts(o.ended_at),
                o.paused_min,
                o.performer,
                o.verifier,
                f"{o.line_clearance.by} {_ts(o.line_clearance.at)}: "
                + "; ".join(o.line_clearance.items)
                if o.line_clearance
                else None,
            ]
            for o in rec.operations
        ],
        [8, 30, 16, 22, 18, 18, 28, 16, 28, 12, 18, 18, 45],
    )
    pdf.section("Materials consumed (PR-4)")
    pdf.rows(
        ["Op", "Material", "Lot", "Quantity", "Unit", "At", "By", "Reason"],
        [
            [
                m.operation_seq,
                m.material_code,
                m.lot_number,
                m.quantity,
                m.uom,
                _ts(m.at),
                m.username,
                m.reason,
            ]
            for m in rec.materials
        ],
        [10, 40, 30, 25, 15, 35, 20, 102],
    )
    pdf.section("Process parameters")
    pdf.rows(
        [
            "Op",
            "Parameter",
            "Value",
            "Unit",
            "Target",
            "Action limits",
            "Alert limits",
            "CPP",
            "Result",
            "Source",
            "Instrument",
            "At",
            "By",
            "Deviation",
        ],
        [
            [
                p.operation_seq,
                p.name,
                p.value,
                p.uom,
                p.target,
                f"{p.action_low} .. {p.action_high}",
                f"{p.alert_low} .. {p.alert_high}",
                "yes" if p.critical else "no",
                "PASS" if p.passed else f"FAIL ({p.limit_state})",
                p.source,
                p.instrument,
                _ts(p.at),
                p.username,
                p.deviation,
            ]
            for p in rec.parameters
        ],
        [8, 28, 18, 12, 14, 28, 28, 9, 18, 13, 20, 32, 16, 33],
    )
    pdf.section("In-process checks (PR-3)")
    pdf.rows(
        ["Op", "Check", "Result", "Note", "Instrument", "At", "By", "Deviation"],
        [
            [
                c.operation_seq,
                c.name,
                "PASS" if c.passed else "FAIL",
                c.note,
                c.instrument,
                _ts(c.at),
                c.username,
                c.deviation,
            ]
            for c in rec.checks
        ],
        [10, 35, 15, 80, 25, 35, 20, 57],
    )
    pdf.section("Deviations")
    pdf.rows(
        ["Number", "Kind", "Status", "Op", "Description", "Opened", "Disposition", "Closed by"],
        [
            [
                d.number,
                d.kind,
                d.status,
                d.operation_seq,
                d.description,
                f"{_ts(d.opened_at)} {d.opened_by}",
                d.disposition,
                d.closed_by,
            ]
            for d in rec.deviations
        ],
        [28, 18, 14, 8, 80, 45, 56, 28],
    )
    pdf.section("Electronic signatures (21 CFR 11.50)")
    pdf.rows(
        ["Printed name", "User", "Meaning", "Signed (UTC)", "Record", "Comment", "Verification"],
        [
            [
                s.printed_name,
                s.signer_username,
                s.meaning,
                _ts(s.signed_at),
                f"{s.record_type} {s.record_id} v{s.record_version}",
                s.comment,
                s.verification,
            ]
            for s in rec.signatures
        ],
        [40, 22, 20, 35, 80, 60, 20],
    )
    pdf.section("Audit trail")
    pdf.rows(
        ["Seq", "At (UTC)", "User", "Action", "Entity", "Changes", "Reason"],
        [
            [
                e.seq,
                _ts(e.at),
                e.username,
                e.action,
                f"{e.entity_type} {e.entity_id} v{e.entity_version}",
                "; ".join(f"{c.field}: {c.old} -> {c.new}" for c in e.changes),
                e.reason,
            ]
            for e in rec.audit_trail
        ],
        [10, 32, 20, 24, 55, 80, 56],
    )
    return bytes(pdf.output())
