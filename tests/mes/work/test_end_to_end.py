"""End to end: a PLGA 90:10 resin batch and a suture work order driven through every step by a
performer and a second-person verifier; the production records are asserted exactly
(PR-1..PR-7, TR-1, ES-2, AT-7)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.base import Observation, Quality
from mes.context import AppContext
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.conftest import FakeClock
from tests.mes.work.conftest import Floor, Json, resin_master, sig, suture_master

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
DEV = re.compile(r"^DEV-\d{6}-[0-9A-F]{6}$")


def normal(value: Any) -> Any:
    """Times, ids and hashes replaced by placeholders so the rest compares exactly."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str):
        if UUID.match(value):
            return "<id>"
        if STAMP.match(value):
            return "<ts>"
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return "<hash>"
    return value


MELT = "CORE/ROP-TRAIN-1/R-101/melt_temp"
ROOM_RH = "CORE/RM-POLY-01/rh"


async def line_data(ctx: AppContext, spool: Path, start: datetime) -> None:
    """What the reactor's PLC and the room's sensor report around the charge started at
    ``start``: the melt above its alert limit (175 degC) for 30 s, the room's humidity above
    its alert limit (30 %) for 10 s; each series has a value standing before the start."""
    await register_tags(
        ctx.db,
        [
            TagSpec(tag=MELT, uom="degC", equipment="R-101"),
            TagSpec(tag=ROOM_RH, uom="%", room="RM-POLY-01", alert_high=30, action_high=40),
        ],
    )
    ingest = Ingest(SampleStore(ctx.db), Spool(spool), ctx.clock)
    series = [
        (MELT, -60, 158.0),
        (MELT, 10, 165.0),
        (MELT, 20, 177.0),
        (MELT, 50, 171.0),
        (ROOM_RH, -5, 25.0),
        (ROOM_RH, 30, 32.0),
        (ROOM_RH, 40, 26.0),
    ]
    await ingest.start()
    try:
        await ingest.emit(
            [
                Observation(
                    source="plc-r101",
                    tag=tag,
                    value=value,
                    quality=Quality.good,
                    source_ts=start + timedelta(seconds=offset),
                    received_ts=start + timedelta(seconds=offset),
                )
                for tag, offset, value in series
            ]
        )
    finally:
        await ingest.stop()


def trail(record: Json) -> list[tuple[str, str, str]]:
    return [(e["username"], e["entity_type"], e["action"]) for e in record["audit_trail"]]


async def test_resin_batch_and_suture_order_end_to_end(
    floor: Floor, ctx: AppContext, clock: FakeClock, tmp_path: Path
) -> None:
    # --- resin: raw materials, approved master recipe, released order ---------------------
    await floor.released_lot("LLA", "LLA-2611-01", "100", "kg")
    await floor.released_lot("GA", "GA-2611-01", "20", "kg")
    await floor.released_lot("SNOCT", "SN-2611-01", "50", "g")
    master = await floor.approved_master(resin_master())
    assert (master["status"], master["version"]) == ("approved", 1)
    order = await floor.released_order("WO-R-2611-01", "WM-RES-PLGA9010", "50", "kg")
    assert [op["status"] for op in order["operations"]] == ["ready", "waiting"]

    wo = "WO-R-2611-01"
    await floor.start(wo, 10, "R-101")
    unit = await floor.get("/equipment/R-101")
    assert unit["status"] == "running"
    started = (await floor.get(f"/work-orders/{wo}/record"))["operations"][0]["started_at"]
    await line_data(ctx, tmp_path / "spool.db", datetime.fromisoformat(started))
    await floor.act(
        wo, 10, "consume", body={"scan": "]C0LLA-2611-01", "quantity": "45", "uom": "kg"}
    )
    await floor.act(wo, 10, "consume", body={"scan": "]C0GA-2611-01", "quantity": "5", "uom": "kg"})
    await floor.act(
        wo,
        10,
        "consume",
        body={
            "lot_number": "SN-2611-01",
            "quantity": "10",
            "uom": "g",
            "reason": "vial label smudged; lot read from the CoA",
        },
    )
    await floor.act(
        wo,
        10,
        "record",
        body={
            "parameters": [{"name": "catalyst_charge", "value": "210", "uom": "ppm"}],
            "checks": [{"name": "reactor_inerted", "passed": True, "instrument": "O2-7"}],
        },
    )
    await floor.act(
        wo,
        10,
        "record",
        "machine",
        {"parameters": [{"name": "melt_temp", "value": "162.5", "uom": "degC", "source": "auto"}]},
    )
    clock.advance(timedelta(minutes=2))  # the charge takes two minutes
    done = await floor.act(wo, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    assert done["operation"]["status"] == "completed"
    assert done["signature"]["manifestation"].startswith("Operator Person (operator) - performed")
    assert (await floor.op(wo, 20))["status"] == "waiting"  # verification first
    verified = await floor.act(
        wo, 10, "verify", "operator2", {"signature": sig("verified")}, if_match=True
    )
    assert verified["operation"]["status"] == "verified"
    assert (await floor.op(wo, 20))["status"] == "ready"

    await floor.start(wo, 20, "DV-101")
    await floor.act(
        wo,
        20,
        "record",
        body={"parameters": [{"name": "devol_pressure", "value": "2.4", "uom": "mbar"}]},
    )
    output = await floor.act(
        wo,
        20,
        "report-output",
        body={"quantity": "48.5", "uom": "kg", "scrap_quantity": "1", "sampled_quantity": "0.5"},
    )
    assert (output["lot_number"], output["quantity"]) == (wo, "48.500000")
    await floor.act(wo, 20, "complete", body={"signature": sig("performed")}, if_match=True)
    current = await floor.get(f"/work-orders/{wo}")
    completed = await floor.ok(
        f"/work-orders/{wo}/complete",
        "supervisor",
        {"reason": "all steps done"},
        version=current["version"],
    )
    closed = await floor.ok(
        f"/work-orders/{wo}/close",
        "qa",
        {"reason": "record reviewed", "signature": sig("approved")},
        version=completed["version"],
    )
    assert closed["work_order"]["status"] == "closed"

    record = await floor.get(f"/work-orders/{wo}/record")
    header = {k: v for k, v in record.items() if k not in ("audit_trail", "signatures")}
    assert normal(header) == {
        "work_order": wo,
        "status": "closed",
        "pilot": False,
        "product_code": "RES-PLGA9010",
        "product_name": record["product_name"],
        "work_master_code": "WM-RES-PLGA9010",
        "work_master_version": 1,
        "lot_number": wo,
        "created_at": "<ts>",
        "started_at": "<ts>",
        "completed_at": "<ts>",
        "closed_at": "<ts>",
        "quantities": {
            "uom": "kg",
            "started": "50.000000",
            "good": "48.500000",
            "scrap": "1.000000",
            "sampled": "0.500000",
            "reconciled": True,
            "reconciliation_problem": None,
        },
        "output": {
            "lot_number": wo,
            "material_code": "RES-PLGA9010",
            "quantity": "48.500000",
            "uom": "kg",
            "status": "quarantine",
            "pilot": False,
            "manufactured_at": "<ts>",
            "expires_at": "<ts>",
            "serials": 0,
            "udi_di": None,
            "udi_element_string": None,
            "udi_hri": None,
        },
        "operations": [
            {
                "seq": 10,
                "name": "Charge and polymerize",
                "status": "verified",
                "work_center_code": "ROP-TRAIN-1",
                "equipment_code": "R-101",
                "room_code": "RM-POLY-01",
                "started_at": "<ts>",
                "started_by": "operator",
                "ended_at": "<ts>",
                "paused_min": "0.00",
                "performer": "operator",
                "verifier": "operator2",
                "line_clearance": {
                    "equipment_code": "R-101",
                    "by": "operator",
                    "at": "<ts>",
                    "items": ["previous product removed", "documents cleared"],
                },
            },
            {
                "seq": 20,
                "name": "Devolatilize and pelletize",
                "status": "completed",
                "work_center_code": "ROP-TRAIN-1",
                "equipment_code": "DV-101",
                "room_code": "RM-POLY-01",
                "started_at": "<ts>",
                "started_by": "operator",
                "ended_at": "<ts>",
                "paused_min": "0.00",
                "performer": "operator",
                "verifier": None,
                "line_clearance": {
                    "equipment_code": "DV-101",
                    "by": "operator",
                    "at": "<ts>",
                    "items": ["previous product removed", "documents cleared"],
                },
            },
        ],
        "materials": [
            {
                "operation_seq": 10,
                "lot_number": "LLA-2611-01",
                "material_code": "LLA",
                "quantity": "45.000000",
                "uom": "kg",
                "at": "<ts>",
                "username": "operator",
                "reason": f"consumed for {wo}/10 (scanned)",
            },
            {
                "operation_seq": 10,
                "lot_number": "GA-2611-01",
                "material_code": "GA",
                "quantity": "5.000000",
                "uom": "kg",
                "at": "<ts>",
                "username": "operator",
                "reason": f"consumed for {wo}/10 (scanned)",
            },
            {
                "operation_seq": 10,
                "lot_number": "SN-2611-01",
                "material_code": "SNOCT",
                "quantity": "10.000000",
                "uom": "g",
                "at": "<ts>",
                "username": "operator",
                "reason": "vial label smudged; lot read from the CoA",
            },
        ],
        "parameters": [
            {
                "operation_seq": 10,
                "name": "catalyst_charge",
                "value": "210.000000",
                "uom": "ppm",
                "target": "200",
                "alert_low": None,
                "alert_high": None,
                "action_low": "100",
                "action_high": "500",
                "critical": True,
                "limit_state": "ok",
                "passed": True,
                "source": "manual",
                "instrument": None,
                "at": "<ts>",
                "username": "operator",
                "deviation": None,
            },
            {
                "operation_seq": 10,
                "name": "melt_temp",
                "value": "162.500000",
                "uom": "degC",
                "target": "160",
                "alert_low": "145",
                "alert_high": "175",
                "action_low": "140",
                "action_high": "180",
                "critical": True,
                "limit_state": "ok",
                "passed": True,
                "source": "auto",
                "instrument": None,
                "at": "<ts>",
                "username": "key:line-gw-1",
                "deviation": None,
            },
            {
                "operation_seq": 20,
                "name": "devol_pressure",
                "value": "2.400000",
                "uom": "mbar",
                "target": "2",
                "alert_low": None,
                "alert_high": None,
                "action_low": None,
                "action_high": "5",
                "critical": True,
                "limit_state": "ok",
                "passed": True,
                "source": "manual",
                "instrument": None,
                "at": "<ts>",
                "username": "operator",
                "deviation": None,
            },
        ],
        "checks": [
            {
                "operation_seq": 10,
                "name": "reactor_inerted",
                "passed": True,
                "note": None,
                "instrument": "O2-7",
                "at": "<ts>",
                "username": "operator",
                "deviation": None,
            }
        ],
        # Batch context (PR-5): the line data of each execution's unit and room.
        "process_data": [
            {
                "operation_seq": 10,
                "tag": MELT,
                "parameter": "melt_temp",
                "room_code": None,
                "critical": True,
                "uom": "degC",
                "start": "<ts>",
                "end": "<ts>",
                "samples": 3,
                "min": 165.0,
                "max": 177.0,
                "mean": 171.0,
                "alert_low": 145.0,
                "alert_high": 175.0,
                "action_low": 140.0,
                "action_high": 180.0,
                "outside_alert_s": 30.0,
                "outside_action_s": 0.0,
                "unknown_s": 0.0,
                "problem": None,
            }
        ],
        "environment": [
            {
                "operation_seq": 10,
                "tag": ROOM_RH,
                "parameter": None,
                "room_code": "RM-POLY-01",
                "critical": False,
                "uom": "%",
                "start": "<ts>",
                "end": "<ts>",
                "samples": 2,
                "min": 26.0,
                "max": 32.0,
                "mean": 29.0,
                "alert_low": None,
                "alert_high": 30.0,
                "action_low": None,
                "action_high": 40.0,
                "outside_alert_s": 10.0,
                "outside_action_s": 0.0,
                "unknown_s": 0.0,
                "problem": None,
            },
            {
                # The devolatilizer ran later in the same room: the humidity stood at 26 %.
                "operation_seq": 20,
                "tag": ROOM_RH,
                "parameter": None,
                "room_code": "RM-POLY-01",
                "critical": False,
                "uom": "%",
                "start": "<ts>",
                "end": "<ts>",
                "samples": 0,
                "min": None,
                "max": None,
                "mean": None,
                "alert_low": None,
                "alert_high": 30.0,
                "action_low": None,
                "action_high": 40.0,
                "outside_alert_s": 0.0,
                "outside_action_s": 0.0,
                "unknown_s": 0.0,
                "problem": None,
            },
        ],
        "deviations": [],
    }
    assert [
        (s["signer_username"], s["meaning"], s["record_type"], s["verification"])
        for s in record["signatures"]
    ] == [
        ("operator", "performed", "operation", "superseded"),
        ("operator2", "verified", "operation", "valid"),
        ("operator", "performed", "operation", "valid"),
        ("qa", "approved", "work_order", "valid"),
    ]
    for s in record["signatures"]:  # ES-2: printed name, UTC time and meaning on every view
        assert s["printed_name"] in s["manifestation"]
        assert s["meaning"] in s["manifestation"]
        assert s["manifestation"].endswith(" UTC")
    assert trail(record) == [
        ("planner", "work_order", "create"),
        ("planner", "work_order", "release"),
        ("planner", "operation", "operation_ready"),
        ("operator", "operation", "line_clearance"),
        ("operator", "operation", "operation_start"),
        ("operator", "work_order", "start"),
        ("operator", "operation", "record"),
        ("key:line-gw-1", "operation", "record"),
        ("operator", "operation", "sign"),
        ("operator", "operation", "operation_complete"),
        ("operator2", "operation", "sign"),
        ("operator2", "operation", "operation_verify"),
        ("operator2", "operation", "operation_ready"),
        ("operator", "operation", "line_clearance"),
        ("operator", "operation", "operation_start"),
        ("operator", "operation", "record"),
        ("operator", "work_order", "output"),
        ("operator", "operation", "sign"),
        ("operator", "operation", "operation_complete"),
        ("supervisor", "work_order", "complete"),
        ("qa", "work_order", "sign"),
        ("qa", "work_order", "close"),
    ]
    pdf = await floor.client.get(f"/api/v1/work-orders/{wo}/record.pdf", headers=floor.actors["qa"])
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")

    # genealogy: the resin lot comes from exactly the three consumed lots
    trace = await floor.get(f"/lots/{wo}/genealogy", direction="backward")
    assert sorted(n["lot_number"] for n in trace["nodes"]) == sorted(
        [wo, "LLA-2611-01", "GA-2611-01", "SN-2611-01"]
    )

    # --- suture: needle attachment (qualified operator) and packaging (verified) --------------
    await floor.released_lot("BRD-PLGA9010-4-0-CTD", "BRD-2611-07", "60", "m")
    await floor.released_lot("NDL-38RC-19", "NDL-2611-03", "150", "each")
    await floor.released_lot("PKG-FOIL-POUCH", "PCH-2611-11", "150", "each")
    await floor.released_lot("LBL-POUCH", "LBL-2611-02", "150", "each")
    await floor.approved_master(suture_master())
    until = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    await floor.ok(
        "/users/operator/qualifications",
        "supervisor",
        {"code": "SWAGING", "valid_until": until, "reason": "swaging training passed"},
    )
    so = "WO-S-2611-01"
    await floor.released_order(so, "WM-SUT-PLGA-4-0-45", "100", "each", due_at=until)
    await floor.start(so, 10, "SW-401")
    await floor.act(
        so, 10, "consume", body={"scan": "]C0BRD-2611-07", "quantity": "45", "uom": "m"}
    )
    await floor.act(
        so, 10, "consume", body={"scan": "]C0NDL-2611-03", "quantity": "100", "uom": "each"}
    )
    await floor.act(
        so,
        10,
        "record",
        body={"parameters": [{"name": "swage_pressure", "value": "6.2", "uom": "bar"}]},
    )
    await floor.act(so, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    assert (await floor.op(so, 20))["status"] == "ready"  # no verification asked at 10
    await floor.start(so, 20, "PS-601", who="operator2")
    await floor.act(
        so, 20, "consume", "operator2", {"scan": "]C0PCH-2611-11", "quantity": "100", "uom": "each"}
    )
    await floor.act(
        so, 20, "consume", "operator2", {"scan": "]C0LBL-2611-02", "quantity": "100", "uom": "each"}
    )
    await floor.act(
        so,
        20,
        "record",
        "operator2",
        {
            "parameters": [
                {"name": "seal_temp", "value": "172", "uom": "degC", "instrument": "TC-12"}
            ],
            "checks": [{"name": "label_verified", "passed": True, "instrument": "LV-601"}],
        },
    )
    await floor.act(
        so,
        20,
        "report-output",
        "operator2",
        {"quantity": "98", "uom": "each", "scrap_quantity": "2", "serials": ["S0001", "S0002"]},
    )
    await floor.act(so, 20, "complete", "operator2", {"signature": sig("performed")}, if_match=True)
    await floor.act(so, 20, "verify", "operator", {"signature": sig("verified")}, if_match=True)
    current = await floor.get(f"/work-orders/{so}")
    completed = await floor.ok(
        f"/work-orders/{so}/complete",
        "supervisor",
        {"reason": "packed"},
        version=current["version"],
    )
    await floor.ok(
        f"/work-orders/{so}/close",
        "qa2",
        {"reason": "record reviewed", "signature": sig("approved")},
        version=completed["version"],
    )
    suture = await floor.get(f"/work-orders/{so}/record")
    assert suture["status"] == "closed"
    assert suture["quantities"] == {
        "uom": "each",
        "started": "100.000000",
        "good": "98.000000",
        "scrap": "2.000000",
        "sampled": "0.000000",
        "reconciled": True,
        "reconciliation_problem": None,
    }
    out = suture["output"]
    assert (out["lot_number"], out["quantity"], out["serials"], out["udi_di"]) == (
        so,
        "98.000000",
        2,
        "00812345000030",
    )
    made = datetime.fromisoformat(out["manufactured_at"]).strftime("%y%m%d")
    expires = datetime.fromisoformat(out["expires_at"]).strftime("%y%m%d")
    assert out["udi_element_string"] == f"0100812345000030{'11' + made}{'17' + expires}10{so}"
    assert [
        (m["operation_seq"], m["material_code"], m["lot_number"], m["quantity"])
        for m in suture["materials"]
    ] == [
        (10, "BRD-PLGA9010-4-0-CTD", "BRD-2611-07", "45.000000"),
        (10, "NDL-38RC-19", "NDL-2611-03", "100.000000"),
        (20, "PKG-FOIL-POUCH", "PCH-2611-11", "100.000000"),
        (20, "LBL-POUCH", "LBL-2611-02", "100.000000"),
    ]
    assert [
        (o["seq"], o["equipment_code"], o["room_code"], o["performer"], o["verifier"])
        for o in suture["operations"]
    ] == [
        (10, "SW-401", suture["operations"][0]["room_code"], "operator", None),
        (20, "PS-601", suture["operations"][1]["room_code"], "operator2", "operator"),
    ]
    assert [
        (p["name"], p["value"], p["instrument"], p["passed"]) for p in suture["parameters"]
    ] == [
        ("swage_pressure", "6.200000", None, True),
        ("seal_temp", "172.000000", "TC-12", True),
    ]
    assert [(c["name"], c["passed"], c["instrument"], c["username"]) for c in suture["checks"]] == [
        ("label_verified", True, "LV-601", "operator2")
    ]
    assert [(s["signer_username"], s["meaning"]) for s in suture["signatures"]] == [
        ("operator", "performed"),
        ("operator2", "performed"),
        ("operator", "verified"),
        ("qa2", "approved"),
    ]
    back = await floor.get(
        f"/lots/{so}/genealogy", direction="backward", material_code="SUT-PLGA9010-4-0-45"
    )
    assert sorted(n["lot_number"] for n in back["nodes"]) == sorted(
        [so, "BRD-2611-07", "NDL-2611-03", "PCH-2611-11", "LBL-2611-02"]
    )
