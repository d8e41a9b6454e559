"""Shop-floor execution over HTTP (DOMAIN 3.2): start guards (PROC-3 equipment, line clearance,
AC-7 qualification, AC-3 sequence), consumption (ID-1 identity and status, TR-1 BOM tolerance,
TR-4 never below zero), recording (PROC-2 deviations and holds, AC-4 sources), completion
(TR-1 completeness, PROC-2 open deviations), second-person verification (AC-2, ES-4) and
paused time (PR-1)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlmodel import select

from mes.db import held, hold_objects
from mes.models import (
    AuditEntry,
    CheckResult,
    Deviation,
    ESignature,
    GenealogyEdge,
    MaterialTransaction,
    OperationExecution,
    ParameterValue,
    ScanEvent,
)
from mes.work import execution
from tests.conftest import BACKEND
from tests.mes.work.conftest import (
    Json,
    Shop,
    mini_master,
    mini_order,
    resin_master,
    sig,
    suture_master,
)

WO = "WO-R-01"
MINI = "WO-M-01"


async def resin_order(shop: Shop, number: str = WO, quantity: str = "50") -> None:
    """A released order of the approved PLGA 90:10 resin recipe (op 10 ready, 20 waiting)."""
    await shop.approved_master(resin_master())
    await shop.released_order(number, "WM-RES-PLGA9010", quantity, "kg")


async def running_resin(shop: Shop, number: str = WO) -> None:
    await resin_order(shop, number)
    await shop.start(number, 10, "R-101")


async def running_mini(shop: Shop, number: str = MINI, *, verification: bool = False) -> None:
    await mini_order(shop, number, verification=verification)
    await shop.start(number, 10, "DV-101")


async def clear(shop: Shop, number: str, seq: int, unit: str) -> None:
    await shop.act(number, seq, "line-clearance", body={"equipment_code": unit, "items": ["ok"]})


async def start_problem(
    shop: Shop, number: str, seq: int, unit: str, *, status: int, rule: str | None = None
) -> Json:
    """A start on ``unit`` (with If-Match) that must fail."""
    return await shop.act_problem(
        number, seq, "start", body={"equipment_code": unit}, if_match=True, status=status, rule=rule
    )


async def equipment_status(shop: Shop, code: str) -> str:
    status: str = (await shop.get(f"/equipment/{code}"))["status"]
    return status


async def lapse_calibration(shop: Shop, code: str) -> None:
    """Set the unit's calibration due date to yesterday through the equipment API."""
    unit = await shop.client.get(f"/api/v1/equipment/{code}", headers=shop.h("supervisor"))
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    patched = await shop.client.patch(
        f"/api/v1/equipment/{code}",
        json={"calibration_due_at": yesterday, "reason": "calibration lapsed"},
        headers={**shop.h("supervisor"), "If-Match": unit.headers["ETag"]},
    )
    assert patched.status_code == 200, patched.text


def value(name: str, amount: str, uom: str, **extra: str) -> Json:
    return {"name": name, "value": amount, "uom": uom, **extra}


# --- start guards ------------------------------------------------------------------------------


async def test_start_on_an_ineligible_unit_is_409(shop: Shop) -> None:
    """PROC-3: the charge step runs only on ROP reactors of ROP-TRAIN-1."""
    await resin_order(shop)
    problem = await start_problem(shop, WO, 10, "DV-101", status=409, rule="PROC-3")
    assert problem["field"] == "equipment_code"
    assert "eligible: R-101, R-102" in problem["detail"]
    await shop.act_problem(
        WO,
        10,
        "line-clearance",
        body={"equipment_code": "SW-401", "items": ["clear"]},
        status=409,
        rule="PROC-3",
    )
    assert (await shop.op(WO, 10))["status"] == "ready"


async def test_start_on_a_unit_being_cleaned_is_409(shop: Shop) -> None:
    """PROC-3: R-102 is 'cleaning' in the plant file; a unit must be idle to start."""
    await resin_order(shop)
    await clear(shop, WO, 10, "R-102")
    problem = await start_problem(shop, WO, 10, "R-102", status=409, rule="PROC-3")
    assert problem["current_status"] == "cleaning"
    assert (await shop.op(WO, 10))["status"] == "ready"
    assert (await shop.get(f"/work-orders/{WO}"))["status"] == "released"


async def test_start_on_a_unit_reported_down_is_409(shop: Shop) -> None:
    """PROC-3: a unit reported down cannot start work."""
    await resin_order(shop)
    await clear(shop, WO, 10, "R-101")
    await shop.ok("/equipment/R-101/status", "operator", {"status": "down", "reason": "agitator"})
    problem = await start_problem(shop, WO, 10, "R-101", status=409, rule="PROC-3")
    assert "status is down" in problem["detail"]


async def test_start_with_calibration_overdue_is_409(shop: Shop) -> None:
    """PROC-3: no start on equipment overdue for calibration."""
    await resin_order(shop)
    await clear(shop, WO, 10, "R-101")
    await lapse_calibration(shop, "R-101")
    problem = await start_problem(shop, WO, 10, "R-101", status=409, rule="PROC-3")
    assert "calibration overdue" in problem["detail"]
    assert await equipment_status(shop, "R-101") == "idle"


async def test_start_without_line_clearance_is_409(shop: Shop) -> None:
    """DOMAIN 3.2 (ready -> running guard): the line clearance of the very unit comes first."""
    await resin_order(shop)
    problem = await start_problem(shop, WO, 10, "R-101", status=409)
    assert "line clearance of R-101 is not confirmed" in problem["detail"]
    await shop.ok("/equipment/R-102/status", "operator", {"status": "idle", "reason": "cleaned"})
    await clear(shop, WO, 10, "R-102")
    problem = await start_problem(shop, WO, 10, "R-101", status=409)
    assert problem["field"] == "equipment_code"
    started = await shop.act(WO, 10, "start", body={"equipment_code": "R-102"}, if_match=True)
    assert (started["status"], started["equipment_code"]) == ("running", "R-102")


async def test_start_without_the_qualification_is_403(shop: Shop) -> None:
    """AC-7: needle attachment needs a current SWAGING qualification: missing, then expired,
    then current."""
    await shop.approved_master(suture_master())
    number = "WO-S-01"
    await shop.released_order(number, "WM-SUT-PLGA-4-0-45", "100", "each")
    await clear(shop, number, 10, "SW-401")
    problem = await start_problem(shop, number, 10, "SW-401", status=403, rule="AC-7")
    assert "SWAGING (missing)" in problem["detail"]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    grant = {"code": "SWAGING", "valid_until": past, "reason": "training lapsed"}
    await shop.ok("/users/operator/qualifications", "supervisor", grant)
    problem = await start_problem(shop, number, 10, "SW-401", status=403, rule="AC-7")
    assert "SWAGING (expired)" in problem["detail"]
    assert await equipment_status(shop, "SW-401") == "idle"
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    await shop.ok(
        "/users/operator/qualifications",
        "qa",
        {"code": "SWAGING", "valid_until": future, "reason": "retrained"},
    )
    started = await shop.act(number, 10, "start", body={"equipment_code": "SW-401"}, if_match=True)
    assert started["status"] == "running"


async def test_nobody_grants_their_own_qualification(shop: Shop) -> None:
    """AC-2: a qualification is granted by someone else."""
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    await shop.problem(
        "/users/supervisor/qualifications",
        "supervisor",
        {"code": "SWAGING", "valid_until": future, "reason": "self"},
        status=422,
        rule="AC-2",
    )


async def test_start_of_a_waiting_step_is_409(shop: Shop) -> None:
    """AC-3: the second step waits for the first; an out-of-sequence start is refused."""
    await resin_order(shop)
    await clear(shop, WO, 20, "DV-101")
    problem = await start_problem(shop, WO, 20, "DV-101", status=409, rule="AC-3")
    assert problem["current_status"] == "waiting"
    assert await equipment_status(shop, "DV-101") == "idle"


async def test_complete_of_a_step_not_started_is_409(shop: Shop) -> None:
    """AC-3: an out-of-sequence complete is refused and nothing is signed."""
    await resin_order(shop)
    before = await shop.count(ESignature)
    problem = await shop.act_problem(
        WO,
        10,
        "complete",
        body={"signature": sig("performed")},
        if_match=True,
        status=409,
        rule="AC-3",
    )
    assert problem["current_status"] == "ready"
    assert await shop.count(ESignature) == before


async def test_out_of_sequence_start_is_logged(shop: Shop) -> None:
    """AC-3: an out-of-sequence start is refused and logged (an audit entry on the step)."""
    await resin_order(shop)
    op = await shop.op(WO, 20)
    before = len(await shop.audit("operation", op["id"]))
    await start_problem(shop, WO, 20, "DV-101", status=409, rule="AC-3")
    assert len(await shop.audit("operation", op["id"])) > before


async def test_start_needs_if_match(shop: Shop) -> None:
    """API.md: start changes the operation: If-Match required (428), stale refused (412)."""
    await resin_order(shop)
    await clear(shop, WO, 10, "R-101")
    problem = await shop.act_problem(WO, 10, "start", body={"equipment_code": "R-101"}, status=428)
    assert problem["field"] == "header.If-Match"
    op = await shop.op(WO, 10)
    await shop.problem(
        f"/operations/{op['id']}/start",
        "operator",
        {"equipment_code": "R-101"},
        version=op["version"] - 1,
        status=412,
    )


async def test_start_runs_the_unit_and_the_order(shop: Shop) -> None:
    """PR-1 / DOMAIN 3.1: the first start puts the order in progress and the unit running."""
    await running_resin(shop)
    op = await shop.op(WO, 10)
    assert (op["status"], op["equipment_code"], op["started_at"] is not None) == (
        "running",
        "R-101",
        True,
    )
    assert (await shop.get(f"/work-orders/{WO}"))["status"] == "in_progress"
    assert await equipment_status(shop, "R-101") == "running"


# --- consumption -------------------------------------------------------------------------------


async def test_consume_a_material_not_on_the_bom_is_409(shop: Shop) -> None:
    """ID-1: a wrong definition is refused; nothing is written."""
    await shop.released_lot("DLLA", "DLLA-01", "20", "kg")
    await running_resin(shop)
    before = await shop.count(MaterialTransaction, AuditEntry)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0DLLA-01", "quantity": "5", "uom": "kg"},
        status=409,
        rule="ID-1",
    )
    assert "DLLA (lot DLLA-01) is not on the bill of materials" in problem["detail"]
    assert await shop.count(MaterialTransaction, AuditEntry) == before


async def test_consume_a_quarantined_lot_is_409(shop: Shop) -> None:
    """ID-1: only released lots are consumed."""
    await shop.received_lot("LLA", "LLA-Q1", "50", "kg")
    await running_resin(shop)
    before = await shop.count(MaterialTransaction)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0LLA-Q1", "quantity": "45", "uom": "kg"},
        status=409,
        rule="ID-1",
    )
    assert problem["current_status"] == "quarantine"
    assert await shop.count(MaterialTransaction) == before


async def test_consume_beyond_the_bom_tolerance_is_409(shop: Shop) -> None:
    """TR-1: LLA 0.9 kg/kg x 50 kg, 1 % -> at most 45.45 kg in total."""
    await shop.released_lot("LLA", "LLA-01", "100", "kg")
    await running_resin(shop)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0LLA-01", "quantity": "45.46", "uom": "kg"},
        status=409,
        rule="TR-1",
    )
    assert problem["field"] == "quantity"
    await shop.act(WO, 10, "consume", body={"scan": "]C0LLA-01", "quantity": "45", "uom": "kg"})
    await shop.act(
        WO, 10, "consume", body={"scan": "]C0LLA-01", "quantity": "450", "uom": "g"}
    )  # 45.45 kg: the inclusive maximum
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0LLA-01", "quantity": "1", "uom": "g"},
        status=409,
        rule="TR-1",
    )
    assert problem["detail"].startswith(
        "LLA: 45.450000 kg consumed, 0.001000 more exceeds the BOM maximum 45.45"
    )
    lot = await shop.get("/lots/LLA-01")
    assert Decimal(lot["quantity"]) == Decimal("54.55")


async def test_consume_more_than_the_lot_holds_is_409_and_writes_nothing(shop: Shop) -> None:
    """TR-4: the remaining quantity never goes below zero; the refused request writes no
    transaction, genealogy edge or audit entry (the output lot already exists, so an accepted
    consumption would add an edge)."""
    bom = [{"material_code": "LLA", "qty_per_unit": "1", "uom": "kg", "tolerance_pct": "1"}]
    await shop.released_lot("LLA", "LLA-S1", "5", "kg")
    await shop.approved_master(mini_master(bom=bom))
    await shop.released_order(MINI, "WM-MINI", "10", "kg")
    await shop.start(MINI, 10, "DV-101")
    await shop.act(MINI, 10, "report-output", body={"quantity": "1", "uom": "kg"})
    tables = (MaterialTransaction, GenealogyEdge, AuditEntry)
    before = await shop.count(*tables)
    await shop.act_problem(
        MINI,
        10,
        "consume",
        body={"scan": "]C0LLA-S1", "quantity": "8", "uom": "kg"},
        status=409,
        rule="TR-4",
    )
    assert await shop.count(*tables) == before
    assert Decimal((await shop.get("/lots/LLA-S1"))["quantity"]) == Decimal("5")
    await shop.act(MINI, 10, "consume", body={"scan": "]C0LLA-S1", "quantity": "5", "uom": "kg"})
    after = await shop.count(*tables)
    assert after["genealogy_edge"] == before["genealogy_edge"] + 1
    assert after["material_transaction"] == before["material_transaction"] + 1
    assert Decimal((await shop.get("/lots/LLA-S1"))["quantity"]) == Decimal("0")


async def test_typed_lot_without_reason_is_422(shop: Shop) -> None:
    """ID-1: a lot typed instead of scanned needs a reason."""
    await shop.released_lot("LLA", "LLA-01", "100", "kg")
    await running_resin(shop)
    before = await shop.count(MaterialTransaction)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"lot_number": "LLA-01", "quantity": "45", "uom": "kg"},
        status=422,
    )
    assert "a typed lot number needs a reason (ID-1)" in str(problem["errors"])
    assert await shop.count(MaterialTransaction) == before


async def test_bad_gs1_scan_is_422_and_the_scan_is_recorded(shop: Shop) -> None:
    """ID-1 / DOMAIN 6: a scan with a wrong GTIN check digit is refused and still logged."""
    await running_resin(shop)
    before = await shop.count(ScanEvent, MaterialTransaction)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]d20100812345000017" + "10LLA-01", "quantity": "45", "uom": "kg"},
        status=422,
        rule="ID-1",
    )
    assert problem["field"] == "scan"
    after = await shop.count(ScanEvent, MaterialTransaction)
    assert after == {
        "scan_event": before["scan_event"] + 1,
        "material_transaction": before["material_transaction"],
    }


async def test_unknown_lot_label_is_404_and_the_scan_is_recorded(shop: Shop) -> None:
    """ID-1: an internal label naming no lot is refused; the attempt is kept."""
    await running_resin(shop)
    before = await shop.count(ScanEvent)
    await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0NO-SUCH-LOT", "quantity": "1", "uom": "kg"},
        status=404,
        rule="ID-1",
    )
    assert (await shop.count(ScanEvent))["scan_event"] == before["scan_event"] + 1


async def test_consume_on_a_step_that_is_not_running_is_409(shop: Shop) -> None:
    """AC-3: material is consumed only while the step runs."""
    await shop.released_lot("LLA", "LLA-01", "100", "kg")
    await resin_order(shop)
    problem = await shop.act_problem(
        WO,
        10,
        "consume",
        body={"scan": "]C0LLA-01", "quantity": "45", "uom": "kg"},
        status=409,
        rule="AC-3",
    )
    assert problem["current_status"] == "ready"


def label_master() -> Json:
    """Two packaging steps on PS-601 that each put one LBL-POUCH label on every unit."""
    step: Json = {
        "work_center_code": "PKG-LINE-1",
        "eligible_equipment": ["PS-601"],
        "bom": [{"material_code": "LBL-POUCH", "qty_per_unit": "1", "uom": "each"}],
    }
    return {
        "code": "WM-LABELS",
        "name": "Pouch label and carton label",
        "product_code": "SUT-PLGA9010-4-0-45",
        "batch_size": "10",
        "uom": "each",
        "operations": [
            {**step, "seq": 10, "name": "Label inner pouch"},
            {**step, "seq": 20, "name": "Label outer pouch", "reports_output": True},
        ],
    }


async def labelled_first_step(shop: Shop) -> None:
    """WO-L-01 (10 each): step 10 consumed its 10 labels and completed; step 20 started."""
    await shop.released_lot("LBL-POUCH", "LBL-01", "50", "each")
    await shop.approved_master(label_master())
    await shop.released_order("WO-L-01", "WM-LABELS", "10", "each")
    await shop.start("WO-L-01", 10, "PS-601")
    await shop.act(
        "WO-L-01", 10, "consume", body={"scan": "]C0LBL-01", "quantity": "10", "uom": "each"}
    )
    await shop.act("WO-L-01", 10, "complete", body={"signature": sig("performed")}, if_match=True)
    await shop.start("WO-L-01", 20, "PS-601")


async def test_bom_window_is_per_step_when_two_steps_use_a_material(shop: Shop) -> None:
    """TR-1: each step consumes its own BOM line; step 20 takes its 10 labels."""
    await labelled_first_step(shop)
    await shop.act(
        "WO-L-01", 20, "consume", body={"scan": "]C0LBL-01", "quantity": "10", "uom": "each"}
    )


async def test_step_completion_needs_its_own_bom_consumption(shop: Shop) -> None:
    """TR-1: completion needs all BOM consumptions of the step itself."""
    await labelled_first_step(shop)
    await shop.act("WO-L-01", 20, "report-output", body={"quantity": "10", "uom": "each"})
    problem = await shop.act_problem(
        "WO-L-01",
        20,
        "complete",
        body={"signature": sig("performed")},
        if_match=True,
        status=409,
        rule="TR-1",
    )
    assert problem["problems"] == ["LBL-POUCH: 0 each consumed, BOM needs 10..10"]


# --- recording ---------------------------------------------------------------------------------


async def test_values_inside_and_outside_the_limits(shop: Shop) -> None:
    """PROC-2: values are kept as measured; an alert value opens nothing, a non-critical value
    beyond the action limits opens a deviation and the step keeps running."""
    await running_mini(shop)
    recorded = await shop.act(
        MINI,
        10,
        "record",
        body={
            "parameters": [
                value("strand_speed", "20", "m/min"),
                value("strand_speed", "27", "m/min", instrument="TACH-3"),
                value("strand_speed", "35", "m/min"),
            ]
        },
    )
    states = [(p["value"], p["limit_state"], p["deviation"]) for p in recorded["parameters"]]
    assert [s[:2] for s in states] == [
        ("20.000000", "ok"),
        ("27.000000", "alert"),
        ("35.000000", "action"),
    ]
    assert [s[2] for s in states[:2]] == [None, None]
    number = states[2][2]
    assert recorded["operation"]["status"] == "running"
    dev = await shop.get(f"/deviations/{number}")
    assert (dev["kind"], dev["status"], dev["work_order"], dev["operation_seq"]) == (
        "parameter",
        "open",
        MINI,
        10,
    )
    assert "strand_speed = 35" in dev["description"]
    assert recorded["parameters"][1]["instrument"] == "TACH-3"


async def test_critical_value_beyond_action_limits_holds_the_step(shop: Shop) -> None:
    """PROC-2 / DOMAIN 3.2: a CPP out of limits opens a deviation and puts the step on hold;
    nothing more is recorded or completed on it."""
    await running_mini(shop)
    recorded = await shop.act(
        MINI,
        10,
        "record",
        body={"parameters": [value("devol_pressure", "0.6", "kPa")]},
    )
    [pv] = recorded["parameters"]
    assert (pv["value"], pv["uom"], pv["limit_state"]) == ("6.000000", "mbar", "action")
    assert recorded["operation"]["status"] == "held"
    dev = await shop.get(f"/deviations/{pv['deviation']}")
    assert (dev["kind"], dev["status"]) == ("cpp", "open")
    await shop.act_problem(
        MINI,
        10,
        "record",
        body={"parameters": [value("devol_pressure", "2", "mbar")]},
        status=409,
        rule="AC-3",
    )
    problem = await shop.act_problem(
        MINI,
        10,
        "complete",
        body={"signature": sig("performed")},
        if_match=True,
        status=409,
        rule="AC-3",
    )
    assert problem["current_status"] == "held"
    async with shop.ctx.db.sessionmaker() as session:
        found = await session.execute(
            select(ParameterValue).where(ParameterValue.id == uuid.UUID(pv["id"]))
        )
        stored = found.scalar_one()
    assert (stored.entered_value, stored.entered_uom) == (Decimal("0.6"), "kPa")


async def test_qa_releases_a_held_step_after_the_deviation_is_closed(shop: Shop) -> None:
    """DOMAIN 3.2 / PROC-2: held -> running by QA with an e-signature (approved), refused while
    the deviation is open; the step can then complete."""
    await running_mini(shop)
    recorded = await shop.act(
        MINI, 10, "record", body={"parameters": [value("devol_pressure", "6", "mbar")]}
    )
    number = recorded["parameters"][0]["deviation"]
    release = {"signature": sig("approved")}
    await shop.act_problem(
        MINI, 10, "release-hold", "supervisor", release, if_match=True, status=403
    )
    before = await shop.count(ESignature)
    problem = await shop.act_problem(
        MINI, 10, "release-hold", "qa", release, if_match=True, status=409, rule="PROC-2"
    )
    assert number in problem["detail"]
    assert await shop.count(ESignature) == before
    await shop.ok(
        f"/deviations/{number}/close",
        "qa",
        {"disposition": "vacuum leak fixed; retest passed", "signature": sig("approved")},
    )
    assert (await shop.op(MINI, 10))["status"] == "held"
    released = await shop.act(MINI, 10, "release-hold", "qa", release, if_match=True)
    assert released["operation"]["status"] == "running"
    assert released["signature"]["meaning"] == "approved"
    await shop.work_values(MINI)
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    done = await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    assert done["operation"]["status"] == "completed"


async def test_failed_check_opens_a_deviation(shop: Shop) -> None:
    """PR-3 / PROC-2: a failed check names its performer and instrument and opens a
    deviation; the step keeps running."""
    await running_mini(shop)
    recorded = await shop.act(
        MINI,
        10,
        "record",
        body={
            "checks": [
                {"name": "strands_intact", "passed": False, "note": "2 broken", "instrument": "V1"}
            ]
        },
    )
    [check] = recorded["checks"]
    assert (check["passed"], check["username"], check["instrument"]) == (False, "operator", "V1")
    dev = await shop.get(f"/deviations/{check['deviation']}")
    assert dev["kind"] == "check"
    assert recorded["operation"]["status"] == "running"


async def test_auto_source_from_a_person_is_403(shop: Shop) -> None:
    """AC-4: automatic values come only from registered equipment (an API key)."""
    await running_resin(shop)
    before = await shop.count(ParameterValue)
    problem = await shop.act_problem(
        WO,
        10,
        "record",
        body={"parameters": [value("melt_temp", "160", "degC", source="auto")]},
        status=403,
        rule="AC-4",
    )
    assert problem["field"] == "parameters[0].source"
    assert await shop.count(ParameterValue) == before


async def test_auto_value_from_a_unit_overdue_for_calibration_is_refused(shop: Shop) -> None:
    """AC-4: automatic values come only from registered, usable equipment."""
    await running_resin(shop)
    await lapse_calibration(shop, "R-101")
    op = await shop.op(WO, 10)
    response = await shop.post(
        f"/operations/{op['id']}/record",
        "machine",
        {"parameters": [value("melt_temp", "160", "degC", source="auto")]},
    )
    assert response.status_code in (403, 409), response.text
    assert response.json()["rule"] == "AC-4"


async def test_manual_value_of_an_auto_parameter_needs_a_reason(shop: Shop) -> None:
    """AC-4: a manual value for an automatically captured parameter is flagged and needs a
    reason."""
    await running_resin(shop)
    problem = await shop.act_problem(
        WO,
        10,
        "record",
        body={"parameters": [value("melt_temp", "160", "degC")]},
        status=422,
        rule="AC-4",
    )
    assert problem["field"] == "parameters[0].reason"
    recorded = await shop.act(
        WO,
        10,
        "record",
        body={"parameters": [value("melt_temp", "160", "degC", reason="tag offline; probe TP-4")]},
    )
    assert recorded["parameters"][0]["source"] == "manual"


async def test_unknown_parameter_or_check_is_422(shop: Shop) -> None:
    """PROC-2: values belong to the step's parameter specs."""
    await running_mini(shop)
    problem = await shop.act_problem(
        MINI, 10, "record", body={"parameters": [value("melt_temp", "1", "degC")]}, status=422
    )
    assert problem["field"] == "parameters[0].name"
    problem = await shop.act_problem(
        MINI, 10, "record", body={"checks": [{"name": "seal_ok", "passed": True}]}, status=422
    )
    assert problem["field"] == "checks[0].name"
    assert (await shop.count(ParameterValue, CheckResult, Deviation)) == {
        "parameter_value": 0,
        "check_result": 0,
        "deviation": 0,
    }


# --- completion --------------------------------------------------------------------------------


async def test_complete_with_missing_work_lists_the_problems(shop: Shop) -> None:
    """TR-1: completion needs every value, check and BOM consumption, and an output row."""
    bom = [{"material_code": "LLA", "qty_per_unit": "1", "uom": "kg", "tolerance_pct": "1"}]
    await shop.approved_master(mini_master(bom=bom))
    await shop.released_order(MINI, "WM-MINI", "10", "kg")
    await shop.start(MINI, 10, "DV-101")
    problem = await shop.act_problem(
        MINI,
        10,
        "complete",
        body={"signature": sig("performed")},
        if_match=True,
        status=409,
        rule="TR-1",
    )
    assert problem["problems"] == [
        "parameter devol_pressure not recorded",
        "parameter strand_speed not recorded",
        "check strands_intact not done",
        "LLA: 0 kg consumed, BOM needs 9.9..10.1",
        "no output reported",
    ]
    assert (await shop.op(MINI, 10))["status"] == "running"


async def test_complete_with_an_open_deviation_is_409(shop: Shop) -> None:
    """PROC-2: an open deviation blocks completion until QA closes it."""
    await running_mini(shop)
    await shop.work_values(MINI)
    recorded = await shop.act(
        MINI, 10, "record", body={"parameters": [value("strand_speed", "9", "m/min")]}
    )
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    number = recorded["parameters"][0]["deviation"]
    problem = await shop.act_problem(
        MINI,
        10,
        "complete",
        body={"signature": sig("performed")},
        if_match=True,
        status=409,
        rule="PROC-2",
    )
    assert number in problem["detail"]
    await shop.ok(
        f"/deviations/{number}/close",
        "qa",
        {"disposition": "re-measured in limits", "signature": sig("approved")},
    )
    done = await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    assert done["operation"]["status"] == "completed"
    assert await equipment_status(shop, "DV-101") == "idle"


async def test_complete_with_a_wrong_password_changes_nothing(shop: Shop) -> None:
    """ES-4: a wrong password signs nothing; the step and its unit keep running."""
    await running_mini(shop)
    await shop.work_values(MINI)
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    before = await shop.count(ESignature)
    await shop.act_problem(
        MINI,
        10,
        "complete",
        body={"signature": sig("performed", password="wrong-password-9")},
        if_match=True,
        status=401,
        rule="ES-4",
    )
    assert await shop.count(ESignature) == before
    assert (await shop.op(MINI, 10))["status"] == "running"
    assert await equipment_status(shop, "DV-101") == "running"


async def test_unit_reported_down_while_running_stays_down(shop: Shop) -> None:
    """PROC-3: completing a step does not undo a 'down' report on its unit."""
    await running_mini(shop)
    await shop.work_values(MINI)
    await shop.ok(
        "/equipment/DV-101/status", "supervisor", {"status": "down", "reason": "vacuum pump"}
    )
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    assert await equipment_status(shop, "DV-101") == "down"


async def test_output_on_a_step_that_does_not_report_it_is_409(shop: Shop) -> None:
    """TR-1: the output is reported by the step the master names."""
    await running_resin(shop)
    await shop.act_problem(
        WO,
        10,
        "report-output",
        body={"quantity": "48", "uom": "kg"},
        status=409,
        rule="TR-1",
    )


# --- verification ------------------------------------------------------------------------------


async def completed_mini(shop: Shop) -> None:
    await running_mini(shop, verification=True)
    await shop.work_values(MINI)
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)


async def test_verify_by_the_performer_is_403(shop: Shop) -> None:
    """AC-2 / ES-5: the performer never verifies their own work."""
    await completed_mini(shop)
    before = await shop.count(ESignature)
    await shop.act_problem(
        MINI,
        10,
        "verify",
        body={"signature": sig("verified")},
        if_match=True,
        status=403,
        rule="AC-2",
    )
    assert await shop.count(ESignature) == before
    assert (await shop.op(MINI, 10))["status"] == "completed"


async def test_verify_with_a_wrong_password_is_401_and_signs_nothing(shop: Shop) -> None:
    """ES-4: the attempt is audited, nothing is signed, the step stays completed."""
    await completed_mini(shop)
    op = await shop.op(MINI, 10)
    before = await shop.count(ESignature)
    await shop.act_problem(
        MINI,
        10,
        "verify",
        "operator2",
        {"signature": sig("verified", password="wrong-password-9")},
        if_match=True,
        status=401,
        rule="ES-4",
    )
    assert await shop.count(ESignature) == before
    now = await shop.op(MINI, 10)
    assert (now["status"], now["version"], now["verifier"]) == ("completed", op["version"], None)
    failed = [e for e in await shop.audit("operation", op["id"]) if e.action == "sign_failed"]
    assert [e.username for e in failed] == ["operator2"]
    verified = await shop.act(
        MINI, 10, "verify", "operator2", {"signature": sig("verified")}, if_match=True
    )
    assert (verified["operation"]["verifier"], verified["signature"]["meaning"]) == (
        "operator2",
        "verified",
    )


async def test_verify_of_a_step_without_verification_is_409(shop: Shop) -> None:
    """DOMAIN 3.2: completed -> verified only when requires_verification."""
    await running_mini(shop)
    await shop.work_values(MINI)
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    await shop.act_problem(
        MINI,
        10,
        "verify",
        "operator2",
        {"signature": sig("verified")},
        if_match=True,
        status=409,
    )


# --- pause and resume --------------------------------------------------------------------------


async def test_paused_minutes_are_accounted(shop: Shop) -> None:
    """PR-1: pauses are recorded on the execution (5 + 3 minutes); nothing is recorded while
    paused."""
    await running_mini(shop)
    paused = await shop.act(MINI, 10, "pause", body={"reason": "shift change"}, if_match=True)
    assert paused["status"] == "paused"
    await shop.act_problem(
        MINI,
        10,
        "record",
        body={"parameters": [value("devol_pressure", "2", "mbar")]},
        status=409,
        rule="AC-3",
    )
    shop.clock.advance(timedelta(minutes=5))
    resumed = await shop.act(MINI, 10, "resume", if_match=True)
    assert resumed["status"] == "running"
    await shop.act(MINI, 10, "pause", body={"reason": "material fetch"}, if_match=True)
    shop.clock.advance(timedelta(minutes=3))
    await shop.act(MINI, 10, "resume", if_match=True)
    await shop.act_problem(MINI, 10, "resume", if_match=True, status=409, rule="AC-3")
    record = await shop.get(f"/work-orders/{MINI}/record")
    assert record["operations"][0]["paused_min"] == "8.00"
    actions = [e.action for e in await shop.audit("operation", resumed["id"])]
    assert actions.count("operation_pause") == 2
    assert actions.count("operation_resume") == 2


async def test_pause_needs_a_reason(shop: Shop) -> None:
    """AT-3: a status change carries a reason."""
    await running_mini(shop)
    await shop.act_problem(MINI, 10, "pause", body={}, if_match=True, status=422)


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite runs one writer at a time")
async def test_an_action_that_waited_for_the_lock_reads_the_execution_as_committed(
    shop: Shop,
) -> None:
    """A locked read of an operation that had to wait for another transaction gets the
    operation as that transaction left it but the execution read along with it as it was
    before the wait (PostgreSQL, READ COMMITTED): what may have changed (pauses, performer,
    verifier) is read again (``execution_of(current=True)``)."""
    await running_mini(shop)
    ident = str((await shop.op(MINI, 10))["id"])
    sm = shop.ctx.db.sessionmaker
    async with sm() as first, sm() as second:
        hold_objects(first)
        hold_objects(second)
        await first.begin()
        op, _ = await execution.get(first, ident, lock=True)
        ex = await execution.execution_of(first, op)
        ex.paused_at = datetime.now(UTC)
        op.version += 1
        first.add_all([ex, op])
        await first.flush()
        await second.begin()
        waiting = asyncio.create_task(execution.get(second, ident, lock=True))
        await _until_waiting_for_a_lock(shop)
        await first.commit()
        op2, _ = await waiting
        assert op2.version == op.version  # the locked row, as committed
        joined = held(second, OperationExecution, ex.id)
        assert joined is not None
        assert joined.paused_at is None  # read before the wait
        current = await execution.execution_of(second, op2, current=True)
        assert current is joined
        assert current.paused_at is not None
        await second.rollback()


async def _until_waiting_for_a_lock(shop: Shop) -> None:
    """Until a backend of this database waits for a lock (at most 10 s)."""
    async with shop.ctx.db.sessionmaker() as probe:
        for _ in range(200):
            found = await probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
            if found.scalar_one():
                return
            await probe.rollback()
            await asyncio.sleep(0.05)
    raise AssertionError("no transaction waited for the lock")
