"""Dispatch queue of a work center (API.md: ready operations in dispatch order: planned start
with unplanned last, then priority, then due date) and rescheduling when a unit goes down
(PROC-3: no work is dispatched to a unit that is down)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.mes.work.conftest import Shop, mini_master, problem_of, resin_master

T0 = datetime(2027, 1, 4, 6, 0, tzinfo=UTC)


def at(hours: int) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


async def test_queue_orders_by_planned_start_then_priority_then_due(shop: Shop) -> None:
    """API.md dispatch queue: planned start (unplanned last), then priority, then due date (none
    last); only ready steps of active orders of this work center are listed."""
    await shop.approved_master(mini_master())
    plan = [  # number, priority, due, planned start
        ("WO-A", 5, None, T0 + timedelta(hours=2)),
        ("WO-B", 1, at(48), None),
        ("WO-C", 9, None, T0 + timedelta(hours=1)),
        ("WO-D", 1, at(24), None),
        ("WO-E", 1, None, None),
        ("WO-F", 3, at(1), None),
    ]
    for number, priority, due, _ in plan:
        extra = {"priority": priority} | ({"due_at": due} if due else {})
        await shop.released_order(number, "WM-MINI", "10", "kg", **extra)
    for number, _, _, start in plan:
        if start is not None:
            await shop.set_operation(number, 10, planned_start=start)
    await shop.order("WO-DRAFT", "WM-MINI", "10", "kg", priority=1)  # not released
    await shop.released_order("WO-RUN", "WM-MINI", "10", "kg", priority=1)
    await shop.start("WO-RUN", 10, "DV-101")  # running, not ready
    await shop.approved_master(resin_master())
    await shop.released_order("WO-RES", "WM-RES-PLGA9010", "50", "kg", priority=1)

    queue = await shop.get("/work-centers/ROP-TRAIN-1/queue")
    assert queue["work_center_code"] == "ROP-TRAIN-1"
    assert [(i["work_order"], i["seq"]) for i in queue["items"]] == [
        ("WO-C", 10),
        ("WO-A", 10),
        ("WO-D", 10),
        ("WO-B", 10),
        ("WO-E", 10),  # no due date: after the dated ones, then by number
        ("WO-RES", 10),
        ("WO-F", 10),
    ]
    first = queue["items"][0]
    assert (first["status"], first["priority"], first["planned_start"]) == (
        "ready",
        9,
        "2027-01-04T07:00:00Z",
    )
    assert (await shop.get("/work-centers/PKG-LINE-1/queue"))["items"] == []


async def test_queue_of_unknown_work_center_is_404(shop: Shop) -> None:
    """API.md: the queue belongs to an existing work center."""
    response = await shop.client.get(
        "/api/v1/work-centers/NO-SUCH-WC/queue", headers=shop.h("operator")
    )
    problem_of(response, 404)


async def test_unit_down_marks_its_planned_steps_for_rescheduling(shop: Shop) -> None:
    """PROC-3: when DV-101 goes down, the ready and waiting steps planned on it need a new
    slot (flag, reason, audit entry); steps on other units and running steps are untouched."""
    await shop.approved_master(mini_master())
    await shop.approved_master(resin_master())
    await shop.released_order("WO-M-01", "WM-MINI", "10", "kg")
    await shop.released_order("WO-M-02", "WM-MINI", "10", "kg")
    await shop.released_order("WO-R-01", "WM-RES-PLGA9010", "50", "kg")
    await shop.released_order("WO-M-03", "WM-MINI", "10", "kg")
    dv101, pz101 = await shop.equipment_id("DV-101"), await shop.equipment_id("PZ-101")
    await shop.set_operation("WO-M-01", 10, equipment_id=dv101)  # ready
    await shop.set_operation("WO-R-01", 20, equipment_id=dv101)  # waiting
    await shop.set_operation("WO-M-02", 10, equipment_id=pz101)  # another unit
    await shop.start("WO-M-03", 10, "DV-101")  # running on DV-101
    before = {n: await shop.op(n, s) for n, s in (("WO-M-01", 10), ("WO-R-01", 20))}

    unit = await shop.ok(
        "/equipment/DV-101/status", "supervisor", {"status": "down", "reason": "vacuum pump"}
    )
    assert unit["status"] == "down"

    marked = {(n, s): await shop.op(n, s) for n, s in (("WO-M-01", 10), ("WO-R-01", 20))}
    for (number, seq), op in marked.items():
        assert (op["needs_reschedule"], op["reschedule_reason"]) == (
            True,
            "DV-101 down: vacuum pump",
        )
        assert op["version"] == before[number]["version"] + 1
        assert op["status"] == before[number]["status"]
        [entry] = [
            e for e in await shop.audit("operation", op["id"]) if e.action == "needs_reschedule"
        ]
        assert (entry.username, entry.reason) == ("supervisor", "DV-101 down: vacuum pump")
        assert seq in (10, 20)
    for number in ("WO-M-02", "WO-M-03"):
        op = await shop.op(number, 10)
        assert (op["needs_reschedule"], op["reschedule_reason"]) == (False, None)
    queued = (await shop.get("/work-centers/ROP-TRAIN-1/queue"))["items"]
    assert {i["work_order"]: i["needs_reschedule"] for i in queued} == {
        "WO-M-01": True,
        "WO-M-02": False,
        "WO-R-01": False,
    }
