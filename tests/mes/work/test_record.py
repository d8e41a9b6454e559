"""The production record (device history record) of a work order as JSON and PDF (AT-7):
failed parameters and checks with their deviations (PROC-2, PR-3), deviation closures with
their signatures (ES-2), and the audit trail."""

from __future__ import annotations

from tests.mes.work.conftest import Shop, mini_order, problem_of, sig

MINI = "WO-M-01"


async def test_record_shows_deviations_and_failed_values(shop: Shop) -> None:
    """AT-7 / PROC-2 / PR-3: a value beyond the action limits is listed as measured with
    passed=false and its deviation; a failed check likewise; the closed deviations carry
    their disposition and QA's signature; the PDF is served as application/pdf."""
    await mini_order(shop)
    await shop.work(MINI, 10, "DV-101")
    recorded = await shop.act(
        MINI,
        10,
        "record",
        body={
            "parameters": [{"name": "strand_speed", "value": "31.5", "uom": "m/min"}],
            "checks": [{"name": "strands_intact", "passed": False, "note": "one strand broke"}],
        },
    )
    speed_dev = recorded["parameters"][0]["deviation"]
    check_dev = recorded["checks"][0]["deviation"]
    for number, disposition in ((speed_dev, "speed re-set"), (check_dev, "strand re-threaded")):
        await shop.ok(
            f"/deviations/{number}/close",
            "qa",
            {"disposition": disposition, "signature": sig("approved")},
        )
    await shop.act(MINI, 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act(MINI, 10, "complete", body={"signature": sig("performed")}, if_match=True)

    record = await shop.get(f"/work-orders/{MINI}/record")
    assert [
        (p["name"], p["value"], p["limit_state"], p["passed"], p["deviation"])
        for p in record["parameters"]
    ] == [
        ("devol_pressure", "2.000000", "ok", True, None),
        ("strand_speed", "20.000000", "ok", True, None),
        ("strand_speed", "31.500000", "action", False, speed_dev),
    ]
    failed = record["parameters"][2]
    assert (failed["action_low"], failed["action_high"], failed["critical"]) == (
        "10",
        "30",
        False,
    )
    assert [(c["name"], c["passed"], c["deviation"], c["note"]) for c in record["checks"]] == [
        ("strands_intact", True, None, None),
        ("strands_intact", False, check_dev, "one strand broke"),
    ]
    assert [
        (d["number"], d["kind"], d["status"], d["operation_seq"], d["disposition"], d["closed_by"])
        for d in record["deviations"]
    ] == [
        (speed_dev, "parameter", "closed", 10, "speed re-set", "qa"),
        (check_dev, "check", "closed", 10, "strand re-threaded", "qa"),
    ]
    deviation_signatures = [
        (s["record_id"], s["meaning"], s["signer_username"], s["verification"])
        for s in record["signatures"]
        if s["record_type"] == "deviation"
    ]
    assert deviation_signatures == [
        (speed_dev, "approved", "qa", "valid"),
        (check_dev, "approved", "qa", "valid"),
    ]
    for s in record["signatures"]:  # ES-2
        assert s["printed_name"] in s["manifestation"]
        assert s["manifestation"].endswith(" UTC")
    trail = [(e["entity_type"], e["action"]) for e in record["audit_trail"]]
    assert trail.count(("deviation", "open")) == 2
    assert trail.count(("deviation", "close")) == 2

    pdf = await shop.client.get(f"/api/v1/work-orders/{MINI}/record.pdf", headers=shop.h("qa"))
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert f'filename="{MINI}-record.pdf"' in pdf.headers["content-disposition"]
    assert pdf.content.startswith(b"%PDF-")


async def test_record_of_an_order_not_started(shop: Shop) -> None:
    """PR-1 / PR-2: before any work the record lists the step without execution data and the
    quantities do not reconcile yet."""
    await mini_order(shop)
    record = await shop.get(f"/work-orders/{MINI}/record")
    assert record["status"] == "released"
    assert record["output"] is None
    [op] = record["operations"]
    assert (op["status"], op["started_at"], op["performer"], op["line_clearance"]) == (
        "ready",
        None,
        None,
        None,
    )
    assert record["quantities"]["reconciled"] is False
    pdf = await shop.client.get(f"/api/v1/work-orders/{MINI}/record.pdf", headers=shop.h("qa"))
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF-")


async def test_record_of_an_unknown_order_is_404(shop: Shop) -> None:
    """API.md: both formats answer 404 for an unknown order."""
    for suffix in ("record", "record.pdf"):
        response = await shop.client.get(
            f"/api/v1/work-orders/WO-NONE/{suffix}", headers=shop.h("qa")
        )
        problem_of(response, 404)
