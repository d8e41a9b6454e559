"""Scheduling runs through the API on the demo plant: start, solve, read, publish, repair after
a breakdown or a late operation, and the bad requests (SCH-1..SCH-5)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from mes.models import Operation
from mes.models.scheduling import ScheduleRun
from mes.scheduling import jobs, loader
from mes.scheduling.problem import Assignment, Objective
from mes.scheduling.rules import violations
from mes.scheduling.runner import SolverRunner
from tests.mes.work.conftest import Shop, problem_of

Json = dict[str, Any]

BRAIDERS = ["BR-301", "BR-302"]


def braid_master(code: str, family: str, eligible: list[str] | None = None) -> Json:
    """Braid (either of two braiders, at different speeds per metre), then coat on CT-311."""
    return {
        "code": code,
        "name": f"Braid and coat {family} 3-0",
        "kind": "routing",
        "product_code": "BRD-PGA-3-0-CTD",
        "batch_size": "1000",
        "uom": "m",
        "operations": [
            {
                "seq": 10,
                "name": "Braid",
                "work_center_code": "BRAID-BANK-1",
                "eligible_equipment": eligible or BRAIDERS,
                "setup_min": "20",
                "run_min_per_unit": "0.1",
                # the older braider is slower
                "unit_run_min_per_unit": {"BR-302": "0.15"},
                "changeover_family": family,
                "cleaning_min": "15",
                "transfer_lag_min": "10",
            },
            {
                "seq": 20,
                "name": "Coat",
                "work_center_code": "COAT-LINE-1",
                "eligible_equipment": ["CT-311"],
                "setup_min": "10",
                "run_min_per_unit": "0.05",
                "changeover_family": family,
                "reports_output": True,
            },
        ],
    }


async def orders(shop: Shop, count: int = 4) -> list[str]:
    await shop.approved_master(braid_master("WM-SCH-PGA", "PGA"))
    await shop.approved_master(braid_master("WM-SCH-PLGA", "PLGA9010"))
    now = shop.clock.now()
    numbers = []
    for i in range(count):
        number = f"WO-S-{i:02d}"
        master = "WM-SCH-PGA" if i % 2 == 0 else "WM-SCH-PLGA"
        due = (now + timedelta(hours=3 + i)).isoformat()
        await shop.released_order(number, master, "1000", "m", due_at=due, priority=1 + i)
        numbers.append(number)
    return numbers


async def solved(shop: Shop, body: Json | None = None, executor: str = "thread") -> Json:
    started = await shop.ok("/schedules", "planner", body or {"time_limit_s": 5}, status=202)
    assert started["status"] == "queued"
    assert await SolverRunner(shop.ctx, executor=executor).run_next()
    run = await shop.get(f"/schedules/{started['id']}")
    assert run["status"] == "solved", run
    return run


async def check_feasible(shop: Shop, run: Json) -> None:
    """Load the problem the run solved and check its assignments against every rule."""
    origin = datetime.fromisoformat(run["horizon_start"])
    async with shop.ctx.db.sessionmaker() as session:
        loaded = await loader.load(
            session,
            horizon_start=origin,
            firm=shop.ctx.settings.schedule_firm_horizon,
            objective=Objective(run["objective"]),
        )
    scheduled = {j.key for j in loaded.problem.jobs}
    assignments = [
        Assignment(
            a["operation_id"],
            a["work_order"],
            a["seq"],
            a["equipment_code"],
            loader.minutes_from(origin, datetime.fromisoformat(a["start"])),
            loader.minutes_until(origin, datetime.fromisoformat(a["end"])),
        )
        for a in run["assignments"]
        if a["work_order"] in scheduled
    ]
    assert violations(loaded.problem, assignments) == []


async def test_a_run_schedules_every_operation_and_publishing_orders_the_queues(
    shop: Shop,
) -> None:
    numbers = await orders(shop)
    run = await solved(shop, {"time_limit_s": 5, "objective": "weighted_tardiness"})
    assert run["kind"] == "full"
    assert run["trigger"] == "planner"
    assert run["method"] in ("cp-sat", "dispatch")
    assert run["solver_status"] in ("optimal", "feasible")
    assert run["problems"] == []
    assert len(run["assignments"]) == 2 * len(numbers)
    braids = [a for a in run["assignments"] if a["seq"] == 10]
    assert {a["equipment_code"] for a in braids} <= set(BRAIDERS)
    for a in braids:  # 20 min setup + 1000 m at the unit's own rate
        took = datetime.fromisoformat(a["end"]) - datetime.fromisoformat(a["start"])
        assert took == timedelta(minutes=170 if a["equipment_code"] == "BR-302" else 120)
    assert run["makespan_min"] > 0
    assert run["objective_value"] is not None
    assert run["bound"] is not None
    assert run["bound"] <= run["objective_value"]
    await check_feasible(shop, run)
    # different families one after the other on a unit need their changeover
    by_unit: dict[str, list[Json]] = {}
    for a in run["assignments"]:
        by_unit.setdefault(a["equipment_code"], []).append(a)
    for items in by_unit.values():
        items.sort(key=lambda a: a["start"])
        for before, after in itertools.pairwise(items):
            gap = datetime.fromisoformat(after["start"]) - datetime.fromisoformat(before["end"])
            assert gap >= timedelta(minutes=after["changeover_min"])

    gantt = await shop.get(f"/schedules/{run['id']}/gantt", by="unit")
    assert {r["key"] for r in gantt["rows"]} == set(by_unit)
    per_order = await shop.get(f"/schedules/{run['id']}/gantt", by="work_order")
    assert {r["key"] for r in per_order["rows"]} == set(numbers)

    published = await shop.ok(
        f"/schedules/{run['id']}/publish", "planner", {"reason": "weekly plan"}, run["version"]
    )
    assert published["published"] == len(run["assignments"])
    assert published["skipped"] == []
    assert published["schedule"]["status"] == "published"
    op = await shop.op(numbers[0], 10)
    planned = next(
        a for a in run["assignments"] if a["work_order"] == numbers[0] and a["seq"] == 10
    )
    assert datetime.fromisoformat(op["planned_start"]) == datetime.fromisoformat(planned["start"])
    assert op["planned_equipment_code"] == planned["equipment_code"]
    queue = await shop.get("/work-centers/BRAID-BANK-1/queue")
    starts = [item["planned_start"] for item in queue["items"]]
    assert starts == sorted(starts)
    assert len(starts) == len(numbers)
    plans = await shop.audit("operation", op["id"])
    assert plans[-1].action == "plan"
    again = await shop.post(
        f"/schedules/{run['id']}/publish", "planner", {}, published["schedule"]["version"]
    )
    problem_of(again, 409)

    # a second published run supersedes the first
    second = await solved(shop)
    await shop.ok(f"/schedules/{second['id']}/publish", "planner", {}, second["version"])
    first = await shop.get(f"/schedules/{run['id']}")
    assert first["status"] == "superseded"
    listed = await shop.get("/schedules")
    assert [i["id"] for i in listed["items"]][:2] == [second["id"], run["id"]]


async def test_running_operations_stay_where_they_run(shop: Shop) -> None:
    numbers = await orders(shop, 2)
    await shop.start(numbers[0], 10, "BR-302")
    run = await solved(shop)
    running = next(
        a for a in run["assignments"] if a["work_order"] == numbers[0] and a["seq"] == 10
    )
    assert running["fixed"] is True
    assert running["equipment_code"] == "BR-302"
    after = next(a for a in run["assignments"] if a["work_order"] == numbers[0] and a["seq"] == 20)
    assert after["start"] >= running["end"]
    published = await shop.ok(f"/schedules/{run['id']}/publish", "planner", {}, run["version"])
    # the running one is not re-planned
    assert published["published"] == len(run["assignments"]) - 1


async def test_bad_requests_are_refused_or_reported_per_order(shop: Shop) -> None:
    for limit in (0, 601):
        body = problem_of(await shop.post("/schedules", "planner", {"time_limit_s": limit}), 422)
        assert "time_limit_s" in str(body)
    body = problem_of(
        await shop.post("/schedules", "planner", {"work_orders": ["WO-NOPE"], "time_limit_s": 2}),
        422,
    )
    assert "WO-NOPE" in body["detail"]
    problem_of(await shop.post("/schedules", "operator", {"time_limit_s": 2}), 403)
    async with shop.ctx.db.sessionmaker() as session:
        assert (await session.execute(select(ScheduleRun))).first() is None

    await shop.approved_master(braid_master("WM-SCH-DOWN", "PGA", eligible=["BR-304"]))
    await shop.released_order("WO-S-DOWN", "WM-SCH-DOWN", "1000", "m")
    await shop.approved_master(braid_master("WM-SCH-OK", "PGA"))
    await shop.order("WO-S-DRAFT", "WM-SCH-OK", "1000", "m")
    await shop.released_order("WO-S-OK", "WM-SCH-OK", "1000", "m")
    run = await solved(
        shop, {"time_limit_s": 3, "work_orders": ["WO-S-DOWN", "WO-S-DRAFT", "WO-S-OK"]}
    )
    reasons = {p["work_order"]: p["reason"] for p in run["problems"]}
    assert "draft" in reasons["WO-S-DRAFT"]
    assert "SCH-4" in reasons["WO-S-DRAFT"]
    assert "BR-304" in reasons["WO-S-DOWN"]
    assert "SCH-4" in reasons["WO-S-DOWN"]
    assert {a["work_order"] for a in run["assignments"]} == {"WO-S-OK"}


async def test_a_breakdown_asks_for_a_repair_that_keeps_the_rest(shop: Shop) -> None:
    await orders(shop, 6)
    run = await solved(shop, {"time_limit_s": 5})
    await shop.ok(f"/schedules/{run['id']}/publish", "planner", {}, run["version"])
    broken = next(a["equipment_code"] for a in run["assignments"] if a["seq"] == 10)
    unit = await shop.get(f"/equipment/{broken}")
    await shop.ok(
        f"/equipment/{broken}/status",
        "supervisor",
        {"status": "down", "reason": "spindle bearing seized"},
        unit["version"],
    )
    repairs = await shop.get("/schedules", kind="repair")
    assert len(repairs["items"]) == 1
    assert repairs["items"][0]["status"] == "queued"
    assert await SolverRunner(shop.ctx, executor="thread").run_next()
    repair = await shop.get(f"/schedules/{repairs['items'][0]['id']}")
    assert repair["status"] == "solved"
    assert repair["trigger"] == "equipment_down"
    assert broken in repair["trigger_detail"]
    assert not any(a["equipment_code"] == broken for a in repair["assignments"])
    assert repair["moved"] is not None
    assert repair["moved"] < len(repair["assignments"])
    await check_feasible(shop, repair)
    # not published until a planner accepts it
    async with shop.ctx.db.sessionmaker() as session:
        ops = list(
            (
                await session.execute(
                    select(Operation).where(col(Operation.schedule_run_id) == uuid.UUID(run["id"]))
                )
            ).scalars()
        )
    assert len(ops) == len(run["assignments"])
    await shop.ok(f"/schedules/{repair['id']}/publish", "planner", {}, repair["version"])


async def repair_runs(shop: Shop) -> list[ScheduleRun]:
    """Straight from the database: the test's clock has moved past the sessions' idle time."""
    async with shop.ctx.db.sessionmaker() as session:
        rows = await session.execute(
            select(ScheduleRun).where(ScheduleRun.kind == "repair").order_by(col(ScheduleRun.id))
        )
        return list(rows.scalars())


async def test_late_operations_ask_for_one_repair(shop: Shop) -> None:
    await orders(shop, 2)
    run = await solved(shop)
    await shop.ok(f"/schedules/{run['id']}/publish", "planner", {}, run["version"])
    await jobs.check_late_operations(shop.ctx)
    assert await repair_runs(shop) == []
    shop.clock.advance(timedelta(hours=8))
    await jobs.check_late_operations(shop.ctx)
    repairs = await repair_runs(shop)
    assert len(repairs) == 1
    assert repairs[0].trigger == "late_operation"
    assert "WO-S-00/10" in (repairs[0].trigger_detail or "")
    assert await SolverRunner(shop.ctx, executor="thread").run_next()
    # solved, waiting for a planner: the same lateness does not ask again
    shop.clock.advance(timedelta(minutes=5))
    await jobs.check_late_operations(shop.ctx)
    repairs = await repair_runs(shop)
    assert [r.status for r in repairs] == ["solved"]


async def test_a_periodic_run_uses_the_schedule_in_force_and_a_worker_process(
    shop: Shop,
) -> None:
    await orders(shop, 2)
    run = await solved(shop, {"time_limit_s": 3, "objective": "mixed", "makespan_weight": 5})
    await shop.ok(f"/schedules/{run['id']}/publish", "planner", {}, run["version"])
    await jobs.periodic_schedule(shop.ctx)
    items = (await shop.get("/schedules"))["items"]
    periodic = await shop.get(f"/schedules/{items[0]['id']}")
    assert periodic["trigger"] == "periodic"
    assert periodic["objective"] == "mixed"
    assert periodic["requested_by"] == "system:scheduler"
    assert await SolverRunner(shop.ctx, executor="process").run_next()
    done = await shop.get(f"/schedules/{periodic['id']}")
    assert done["status"] == "solved"
    assert len(done["assignments"]) == 4


@pytest.mark.parametrize("horizon", ["2026-01-01T00:00:00", "not a time"])
async def test_a_horizon_start_needs_a_time_zone(shop: Shop, horizon: str) -> None:
    problem_of(await shop.post("/schedules", "planner", {"horizon_start": horizon}), 422)


def test_times_are_whole_minutes() -> None:
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    assert loader.minutes_from(origin, origin + timedelta(seconds=119)) == 1
    assert loader.minutes_until(origin, origin + timedelta(seconds=61)) == 2


def test_every_process_that_changes_unit_status_asks_for_repairs() -> None:
    """The ingest process (a unit's state signal) and the background jobs (due dates) change
    units' status without the API loaded: the repair listener must be registered there too."""
    for module in ("mes.telemetry.runtime", "mes.background.jobs"):
        code = f"import sys, {module}; sys.exit('mes.scheduling.service' not in sys.modules)"
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0, module
