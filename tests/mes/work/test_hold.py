"""A critical value outside its action limits: kept as measured, a deviation opened, the
operation held until QA closes the deviation and releases the hold (PROC-2, DOMAIN 3.2)."""

from __future__ import annotations

from tests.mes.work.conftest import Floor, resin_master, sig


async def test_critical_excursion_holds_the_operation_until_qa_releases_it_proc_2(
    floor: Floor,
) -> None:
    await floor.released_lot("LLA", "LLA-H1", "100", "kg")
    await floor.approved_master(resin_master())
    wo = "WO-HOLD-1"
    await floor.released_order(wo, "WM-RES-PLGA9010", "50", "kg")
    await floor.start(wo, 10, "R-101")
    recorded = await floor.act(
        wo,
        10,
        "record",
        "machine",
        {"parameters": [{"name": "melt_temp", "value": "185", "uom": "degC", "source": "auto"}]},
    )
    value = recorded["parameters"][0]
    assert (value["value"], value["limit_state"]) == ("185.000000", "action")
    number = value["deviation"]
    assert recorded["operation"]["status"] == "held"

    # nothing more is recorded on a held operation, and QA cannot lift the hold yet
    refused = await floor.act(
        wo,
        10,
        "consume",
        body={"scan": "]C0LLA-H1", "quantity": "45", "uom": "kg"},
        status=409,
    )
    assert refused["current_status"] == "held"
    blocked = await floor.act(
        wo, 10, "release-hold", "qa", {"signature": sig("approved")}, if_match=True, status=409
    )
    assert blocked["rule"] == "PROC-2"
    assert number in blocked["detail"]

    dev = await floor.get(f"/deviations/{number}")
    assert (dev["status"], dev["kind"], dev["work_order"], dev["operation_seq"]) == (
        "open",
        "cpp",
        wo,
        10,
    )
    await floor.ok(
        f"/deviations/{number}/close",
        "qa",
        {"disposition": "thermocouple drift; batch within IV spec", "signature": sig("approved")},
    )
    released = await floor.act(
        wo, 10, "release-hold", "qa", {"signature": sig("approved")}, if_match=True
    )
    assert released["operation"]["status"] == "running"
    assert released["signature"]["meaning"] == "approved"

    record = await floor.get(f"/work-orders/{wo}/record")
    assert [(p["name"], p["value"], p["passed"], p["deviation"]) for p in record["parameters"]] == [
        ("melt_temp", "185.000000", False, number)
    ]
    assert [(d["number"], d["status"], d["closed_by"]) for d in record["deviations"]] == [
        (number, "closed", "qa")
    ]
