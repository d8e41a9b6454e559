"""The production record rendered as PDF (AT-7): the same content as the JSON, with each
signature's printed name, UTC date/time and meaning (ES-2)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from decimal import Decimal
from typing import Any

from fpdf import FPDF

from mes.telemetry.context import SignalSummary
from mes.work.record import ProductionRecord


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


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def _signals(pdf: _Pdf, summaries: list[SignalSummary]) -> None:
    """One row per tag and execution: statistics and time outside the limits."""
    pdf.rows(
        [
            "Op",
            "Tag",
            "Parameter / room",
            "Unit",
            "Values",
            "Min",
            "Max",
            "Mean",
            "Alert limits",
            "Action limits",
            "Outside alert",
            "Outside action",
            "No data",
            "Problem",
        ],
        [
            [
                x.operation_seq,
                x.tag,
                x.parameter or x.room_code,
                x.uom,
                x.samples,
                _num(x.min),
                _num(x.max),
                _num(x.mean),
                f"{_num(x.alert_low)} .. {_num(x.alert_high)}",
                f"{_num(x.action_low)} .. {_num(x.action_high)}",
                _duration(x.outside_alert_s),
                _duration(x.outside_action_s),
                _duration(x.unknown_s),
                x.problem,
            ]
            for x in summaries
        ],
        [8, 58, 26, 10, 12, 14, 14, 14, 22, 22, 18, 18, 15, 26],
    )


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
    pdf.section("Process data from the line (batch context)")
    _signals(pdf, rec.process_data)
    pdf.section("Environmental conditions of the rooms (PR-5)")
    _signals(pdf, rec.environment)
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
