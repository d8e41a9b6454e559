"""The registered jobs on the demo plant: orders made ready at their release date (WO-REL),
units past a due date taken out of use (PROC-3), the telemetry roll-up."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from connectors.base import Observation, Quality
from mes.background.jobs import JOBS, when
from mes.background.runner import BackgroundRunner
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.models import EquipmentStatus, Operation
from mes.principal import system_principal
from mes.telemetry import rollup
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.conftest import login, make_settings
from tests.mes.work.conftest import PEOPLE, Shop, mini_order

BACKGROUND = "system:background"


async def days_later(shop: Shop, days: int) -> None:
    """Move the clock on; everyone signs in again (their sessions have ended meanwhile)."""
    shop.clock.advance(timedelta(days=days))
    for username, _ in PEOPLE:
        shop.actors.headers[username] = await login(shop.client, username)


async def test_an_order_released_ahead_of_its_date_waits_for_it(shop: Shop) -> None:
    """WO-REL: released ahead of ``release_at``, the first operation stays waiting (it cannot
    be started and is in no queue); the job makes it ready once the date has come."""
    now = shop.clock.now()
    tomorrow = now + timedelta(days=1)
    await mini_order(shop, "WO-M-01", release_at=tomorrow.isoformat())
    await mini_order(shop, "WO-M-02", release_at=(now + timedelta(days=3)).isoformat())
    await mini_order(shop, "WO-M-03")  # no release date: ready at once
    await mini_order(shop, "WO-M-04", release_at=(now - timedelta(hours=1)).isoformat())

    order = await shop.get("/work-orders/WO-M-01")
    assert order["status"] == "released"
    assert [op["status"] for op in order["operations"]] == ["waiting"]
    for number, status in (("WO-M-02", "waiting"), ("WO-M-03", "ready"), ("WO-M-04", "ready")):
        assert (await shop.op(number, 10))["status"] == status
    queue = await shop.get("/work-centers/ROP-TRAIN-1/queue")
    assert [i["work_order"] for i in queue["items"]] == ["WO-M-03", "WO-M-04"]
    await shop.act(
        "WO-M-01", 10, "line-clearance", body={"equipment_code": "DV-101", "items": ["clear"]}
    )
    await shop.act_problem(
        "WO-M-01",
        10,
        "start",
        body={"equipment_code": "DV-101"},
        if_match=True,
        status=409,
        rule="AC-3",
    )

    runner = BackgroundRunner(shop.ctx)
    assert await runner.run_once("release-due-orders") == {"advanced": []}  # not yet
    await days_later(shop, 2)
    assert await runner.run_once("release-due-orders") == {"advanced": ["WO-M-01"]}
    assert await runner.run_once("release-due-orders") == {"advanced": []}  # done already
    assert (await shop.op("WO-M-01", 10))["status"] == "ready"
    assert (await shop.op("WO-M-02", 10))["status"] == "waiting"

    op = await shop.op("WO-M-01", 10)
    entry = (await shop.audit("operation", op["id"]))[-1]
    assert (entry.username, entry.action) == (BACKGROUND, "operation_ready")
    assert entry.reason == f"release date {when(tomorrow)} reached (WO-REL)"
    await shop.start("WO-M-01", 10, "DV-101")
    assert (await shop.op("WO-M-01", 10))["status"] == "running"


async def test_units_past_a_due_date_go_to_maintenance_when_idle(shop: Shop) -> None:
    """PROC-3: idle DV-101 past its calibration date goes to maintenance (audited, the date
    named) and its planned operation is marked for rescheduling; R-101, past its maintenance
    date but running, is left until it is idle."""
    ctx = shop.ctx
    now = shop.clock.now()
    calibration_due = now - timedelta(hours=2)
    maintenance_due = now - timedelta(hours=1)
    await mini_order(shop, "WO-M-01")
    await shop.set_operation("WO-M-01", 10, equipment_id=await shop.equipment_id("DV-101"))
    async with ctx.db.sessionmaker() as session, session.begin():
        dv = await equipment.get(session, "DV-101", lock=True)
        dv.calibration_due_at = calibration_due
        r101 = await equipment.get(session, "R-101", lock=True)
        r101.maintenance_due_at = maintenance_due
        session.add_all([dv, r101])
        await equipment.change_status(
            ctx,
            session,
            system_principal("test"),
            "R-101",
            EquipmentStatus.running,
            "state signal",
            None,
            by_telemetry=True,
        )

    runner = BackgroundRunner(shop.ctx)
    moved = (await runner.run_once("equipment-due-check"))["maintenance"]
    assert "DV-101" in moved
    assert "R-101" not in moved
    unit = await shop.get("/equipment/DV-101")
    assert (unit["status"], unit["is_usable"]) == ("maintenance", False)
    assert "status is maintenance" in unit["blocking_reasons"]
    entry = (await shop.audit("equipment", "DV-101"))[-1]
    assert (entry.username, entry.action) == (BACKGROUND, "status")
    assert entry.reason == (
        f"calibration due {when(calibration_due)} passed: out of use until done (PROC-3)"
    )
    op = await shop.op("WO-M-01", 10)
    assert op["needs_reschedule"] is True
    assert f"calibration due {when(calibration_due)}" in op["reschedule_reason"]
    assert (await shop.get("/equipment/R-101"))["status"] == "running"

    # Idle again: the next check takes it. DV-101 is in maintenance and is left alone.
    async with ctx.db.sessionmaker() as session, session.begin():
        await equipment.change_status(
            ctx,
            session,
            system_principal("test"),
            "R-101",
            EquipmentStatus.idle,
            "state signal",
            None,
            by_telemetry=True,
        )
    moved = (await runner.run_once("equipment-due-check"))["maintenance"]
    assert "R-101" in moved
    assert "DV-101" not in moved
    entry = (await shop.audit("equipment", "R-101"))[-1]
    assert entry.reason == (
        f"maintenance due {when(maintenance_due)} passed: out of use until done (PROC-3)"
    )
    assert (await runner.run_once("equipment-due-check"))["maintenance"] == []


async def test_rollup_job_and_late_hours(ctx: AppContext, tmp_path: Path) -> None:
    """The job rolls up the hours it looks back to; older hours a spool drain delivers are
    rolled up by the ingest that stores them, so together every hour is covered."""
    tag = "LAB/KILN-1/temp"
    await register_tags(ctx.db, [TagSpec(tag=tag)])
    late_hours = rollup.LateRollup(ctx.db, ctx.clock)
    pipeline = Ingest(
        SampleStore(ctx.db), Spool(tmp_path / "spool.db"), ctx.clock, effects=[late_hours]
    )
    now = ctx.clock.now()
    recent = rollup.hour_floor(now)
    late = rollup.hour_floor(now - rollup.LOOKBACK - timedelta(hours=6))
    await pipeline.start()
    try:
        await pipeline.emit(
            [
                Observation("plc", tag, 10.0, Quality.good, recent, recent),
                Observation("plc", tag, 30.0, Quality.good, late, late),
                Observation("plc", tag, 50.0, Quality.good, late + timedelta(minutes=5), late),
            ]
        )
        await late_hours.flush()
    finally:
        await pipeline.stop()
        await late_hours.stop()
    runner = BackgroundRunner(ctx)
    result = await runner.run_once("telemetry-rollup")
    assert result["since"] == rollup.hour_floor(now - rollup.LOOKBACK)
    tag_id = (await SampleStore(ctx.db).tag_ids())[tag][0]
    async with ctx.db.engine.connect() as conn:
        hours = await rollup.hourly(conn, tag_id, late, recent + timedelta(hours=1))
    assert [(h.hour_start, h.count, h.sum) for h in hours] == [
        (late, 2, 80.0),
        (recent, 1, 10.0),
    ]


def test_the_periodic_schedule_runs_only_when_configured(database_url: str, tmp_path: Path) -> None:
    names = [spec.name for spec in JOBS]
    assert names == [
        "release-due-orders",
        "equipment-due-check",
        "telemetry-rollup",
        "periodic-schedule",
        "late-operations",
    ]
    default = make_settings(database_url, tmp_path)
    every = make_settings(database_url, tmp_path, schedule_every=timedelta(minutes=15))
    enabled = {spec.name: spec.interval(every) for spec in JOBS if spec.enabled(every)}
    assert enabled["periodic-schedule"] == timedelta(minutes=15)
    assert enabled["late-operations"] == timedelta(seconds=60)
    assert enabled["equipment-due-check"] == timedelta(seconds=300)
    assert not next(s for s in JOBS if s.name == "periodic-schedule").enabled(default)


async def test_operations_not_due_are_untouched(shop: Shop) -> None:
    """The job reads its work from the database: a released order without a date, or one in
    progress, is not its business."""
    await mini_order(shop, "WO-M-01")
    await shop.start("WO-M-01", 10, "DV-101")
    runner = BackgroundRunner(shop.ctx)
    assert await runner.run_once("release-due-orders") == {"advanced": []}
    async with shop.ctx.db.sessionmaker() as session:
        statuses = list((await session.execute(select(Operation.status))).scalars())
    assert statuses == ["running"]
