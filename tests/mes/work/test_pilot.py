"""Pilot batches and tech transfer: a pilot order runs a draft work master only on pilot-center
equipment (PROC-1, PROC-3); its output lot is flagged and never released for distribution
(RL-1), split parts included; approving the draft names its supporting pilot batches."""

from __future__ import annotations

from decimal import Decimal

from sqlmodel import select

from mes.models import ESignature, Lot
from tests.mes.work.conftest import Shop, mini_master, pilot_master, resin_master, sig

PILOT = "PIL-8515-01"
RELEASE = {"status": "released", "reason": "CoA and tests pass", "signature": sig("released")}


async def pilot_order(shop: Shop, number: str = PILOT) -> None:
    """A released pilot batch (5 kg) of the draft PLGA 85:15 recipe on RDC-ROP-PILOT."""
    if not (await shop.get("/work-masters", code="WM-RES-PLGA8515"))["items"]:
        await shop.ok("/work-masters", "planner", pilot_master(), status=201)
    order = await shop.released_order(number, "WM-RES-PLGA8515", "5", "kg", pilot=True)
    assert (order["pilot"], order["work_master_version"]) == (True, 1)


async def test_pilot_batch_runs_a_draft_on_pilot_equipment_and_is_never_released(
    shop: Shop,
) -> None:
    """PROC-1 / PROC-3 / RL-1: the pilot batch runs its draft recipe on PR-05L and PDV-01; the
    produced lot is a pilot lot in quarantine and QA's release of it is refused."""
    await shop.released_lot("LLA", "LLA-P1", "10", "kg")
    await shop.released_lot("GA", "GA-P1", "2", "kg")
    await shop.released_lot("SNOCT", "SN-P1", "5", "g")
    await pilot_order(shop)
    await shop.start(PILOT, 10, "PR-05L")
    for scan, qty, uom in (("]C0LLA-P1", "4.25", "kg"), ("]C0GA-P1", "0.75", "kg")):
        await shop.act(PILOT, 10, "consume", body={"scan": scan, "quantity": qty, "uom": uom})
    await shop.act(PILOT, 10, "consume", body={"scan": "]C0SN-P1", "quantity": "1", "uom": "g"})
    await shop.work_values(PILOT, 10)
    await shop.act(PILOT, 10, "complete", body={"signature": sig("performed")}, if_match=True)
    await shop.act(PILOT, 10, "verify", "operator2", {"signature": sig("verified")}, if_match=True)
    await shop.work(PILOT, 20, "PDV-01")
    await shop.act(
        PILOT, 20, "report-output", body={"quantity": "4.9", "uom": "kg", "scrap_quantity": "0.1"}
    )
    await shop.act(PILOT, 20, "complete", body={"signature": sig("performed")}, if_match=True)

    record = await shop.get(f"/work-orders/{PILOT}/record")
    assert (record["pilot"], record["work_master_version"]) == (True, 1)
    assert (record["output"]["pilot"], record["output"]["status"]) == (True, "quarantine")
    async with shop.ctx.db.sessionmaker() as session:
        lot = (await session.execute(select(Lot).where(Lot.lot_number == PILOT))).scalar_one()
    assert (lot.is_pilot, lot.remaining_qty) == (True, Decimal("4.9"))

    signatures = await shop.count(ESignature)
    problem = await shop.problem(f"/lots/{PILOT}/status", "qa", RELEASE, status=409, rule="RL-1")
    assert "pilot batches are never released for distribution" in problem["detail"]
    assert problem["current_status"] == "quarantine"
    assert await shop.count(ESignature) == signatures
    assert (await shop.get(f"/lots/{PILOT}"))["status"] == "quarantine"
    rejected = await shop.ok(
        f"/lots/{PILOT}/status",
        "qa",
        {"status": "rejected", "reason": "pilot material", "signature": sig("rejected")},
    )
    assert rejected["lot"]["status"] == "rejected"


async def test_parts_split_from_a_pilot_lot_are_never_released(shop: Shop) -> None:
    """RL-1: splitting pilot material does not make it releasable."""
    await shop.received_lot("RES-PLGA8515", "PIL-LOT-1", "4", "kg")
    async with shop.ctx.db.sessionmaker() as session, session.begin():
        lot = (await session.execute(select(Lot).where(Lot.lot_number == "PIL-LOT-1"))).scalar_one()
        lot.is_pilot = True  # as report-output of a pilot batch leaves it
        session.add(lot)
    await shop.ok(
        "/lots/PIL-LOT-1/split",
        "operator",
        {
            "parts": [
                {"lot_number": "PIL-LOT-1A", "quantity": "1", "uom": "kg"},
                {"lot_number": "PIL-LOT-1B", "quantity": "3", "uom": "kg"},
            ],
            "reason": "sample drums for the lab",
        },
        status=201,
    )
    for number in ("PIL-LOT-1", "PIL-LOT-1A", "PIL-LOT-1B"):
        problem = await shop.problem(
            f"/lots/{number}/status", "qa", RELEASE, status=409, rule="RL-1"
        )
        assert "never released for distribution" in problem["detail"]


async def test_ordinary_lot_release_still_works(shop: Shop) -> None:
    """RL-1 touches pilot material only: a received lot is released as before."""
    await shop.received_lot("LLA", "LLA-OK", "5", "kg")
    released = await shop.ok("/lots/LLA-OK/status", "qa", RELEASE)
    assert released["lot"]["status"] == "released"


async def test_pilot_batch_on_core_equipment_is_409(shop: Shop) -> None:
    """PROC-3: a pilot batch runs only on pilot-center (RDC) equipment, even where the draft
    names a CORE work center."""
    await shop.ok("/work-masters", "planner", resin_master(), status=201)
    await shop.released_order("PIL-9010-01", "WM-RES-PLGA9010", "5", "kg", pilot=True)
    problem = await shop.act_problem(
        "PIL-9010-01",
        10,
        "line-clearance",
        body={"equipment_code": "R-101", "items": ["clear"]},
        status=409,
        rule="PROC-3",
    )
    assert "pilot-center equipment" in problem["detail"]
    problem = await shop.act_problem(
        "PIL-9010-01",
        10,
        "start",
        body={"equipment_code": "R-101"},
        if_match=True,
        status=409,
        rule="PROC-3",
    )
    assert "R-101 is at CORE" in problem["detail"]
    assert (await shop.get("/equipment/R-101"))["status"] == "idle"


async def test_pilot_batch_needs_a_draft(shop: Shop) -> None:
    """PROC-1: pilot batches run draft versions; an approved-only master has none."""
    await shop.approved_master(mini_master())
    body = {
        "number": "PIL-M-01",
        "work_master_code": "WM-MINI",
        "quantity": "5",
        "uom": "kg",
        "pilot": True,
    }
    await shop.problem("/work-orders", "planner", body, status=409, rule="PROC-1")
    problem = await shop.problem(
        "/work-orders", "planner", {**body, "work_master_version": 1}, status=409, rule="PROC-1"
    )
    assert problem["field"] == "work_master_version"


async def test_tech_transfer_keeps_the_supporting_pilot_batches(shop: Shop) -> None:
    """PROC-1 / VAL-1: QA approves the pilot-proven draft naming its pilot batches; the
    approved version shows them."""
    await pilot_order(shop)
    await pilot_order(shop, "PIL-8515-02")
    draft = await shop.get("/work-masters/WM-RES-PLGA8515")
    assert draft["pilot_orders"] == [PILOT, "PIL-8515-02"]
    approved = await shop.ok(
        "/work-masters/WM-RES-PLGA8515/versions/1/approve",
        "qa",
        {"signature": sig("approved"), "supporting_pilot_orders": [PILOT, PILOT]},
        version=draft["record_version"],
    )
    assert approved["signature"]["verification"] == "valid"
    master = await shop.get("/work-masters/WM-RES-PLGA8515")
    assert (master["status"], master["supporting_pilot_orders"]) == ("approved", [PILOT])
    assert master["pilot_orders"] == [PILOT, "PIL-8515-02"]
    order = await shop.released_order("WO-8515-01", "WM-RES-PLGA8515", "5", "kg")
    assert order["pilot"] is False


async def test_tech_transfer_naming_a_non_pilot_order_is_422(shop: Shop) -> None:
    """PROC-1: only pilot batches of the same work master support a tech transfer."""
    await shop.approved_master(pilot_master())
    await shop.order("WO-8515-01", "WM-RES-PLGA8515", "5", "kg")
    draft = await shop.ok("/work-masters", "planner", pilot_master(), status=201)
    for pilots, field in (
        (["WO-8515-01"], "supporting_pilot_orders[0]"),
        (["PIL-NONE", "WO-8515-01"], "supporting_pilot_orders[0]"),
    ):
        problem = await shop.problem(
            "/work-masters/WM-RES-PLGA8515/versions/2/approve",
            "qa",
            {"signature": sig("approved"), "supporting_pilot_orders": pilots},
            version=draft["record_version"],
            status=422,
        )
        assert problem["field"] == field
    assert (await shop.get("/work-masters/WM-RES-PLGA8515/versions/2"))["status"] == "draft"
