"""Alarms from line data during a running operation: delay, hysteresis, a deviation opened by
an action-level excursion (PROC-2), acknowledgement by a supervisor (both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from connectors.base import Observation, Quality
from mes.context import AppContext
from mes.telemetry.alarms import AlarmEngine
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.mes.work.conftest import Floor, resin_master

MELT = "CORE/ROP-TRAIN-1/R-101/melt_temp"
WO = "WO-R-2611-07"


@pytest.fixture
async def ingest(floor: Floor, ctx: AppContext, tmp_path: Path) -> AsyncIterator[Ingest]:
    await register_tags(
        ctx.db,
        [TagSpec(tag=MELT, uom="degC", equipment="R-101", alarm_delay_s=10, hysteresis=2)],
    )
    pipeline = Ingest(
        SampleStore(ctx.db),
        Spool(tmp_path / "spool.db"),
        ctx.clock,
        effects=[AlarmEngine(ctx.db, ctx.clock, refresh=timedelta(0))],
    )
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


async def melt(ingest: Ingest, start: datetime, *series: tuple[float, float | None]) -> None:
    await ingest.emit(
        [
            Observation(
                source="plc-r101",
                tag=MELT,
                value=value,
                quality=Quality.good if value is not None else Quality.bad,
                source_ts=start + timedelta(seconds=offset),
                received_ts=start + timedelta(seconds=offset),
            )
            for offset, value in series
        ]
    )


async def test_an_action_excursion_opens_a_deviation_and_alarms_clear_with_hysteresis(
    floor: Floor, ingest: Ingest
) -> None:
    await floor.released_lot("LLA", "LLA-2611-07", "100", "kg")
    await floor.approved_master(resin_master())
    await floor.released_order(WO, "WM-RES-PLGA9010", "50", "kg")
    await floor.start(WO, 10, "R-101")
    record = await floor.get(f"/work-orders/{WO}/record")
    start = datetime.fromisoformat(record["operations"][0]["started_at"])

    # Limits of melt_temp: alert 145..175, action 140..180 degC; delay 10 s, hysteresis 2.
    await melt(ingest, start, (1, 170.0), (2, 182.0), (5, 176.0), (6, 183.0), (8, 181.0))
    assert (await floor.get("/alarms"))["items"] == []  # not yet 10 s outside
    await melt(ingest, start, (9, 178.0))  # a short dip back under the action limit...
    await melt(ingest, start, (11, 181.0))
    assert (await floor.get("/alarms"))["items"] == []  # ...restarts the action delay
    await melt(ingest, start, (9.5, None), (12, 185.0), (21, 184.0))

    alarms = {a["level"]: a for a in (await floor.get("/alarms", active="true"))["items"]}
    assert set(alarms) == {"alert", "action"}
    action, alert = alarms["action"], alarms["alert"]
    assert (action["direction"], action["limit"], action["value"], action["peak"]) == (
        "high",
        180.0,
        184.0,
        185.0,
    )
    assert datetime.fromisoformat(action["started_at"]) == start + timedelta(seconds=11)
    assert datetime.fromisoformat(action["raised_at"]) == start + timedelta(seconds=21)
    assert datetime.fromisoformat(alert["started_at"]) == start + timedelta(seconds=2)
    assert datetime.fromisoformat(alert["raised_at"]) == start + timedelta(seconds=12)
    assert (action["work_order"], action["parameter"]) == (WO, "melt_temp")
    assert alert["deviation"] is None  # an alert-level excursion only alarms

    deviation = await floor.get(f"/deviations/{action['deviation']}")
    assert deviation["status"] == "open"
    assert deviation["kind"] == "cpp"
    assert deviation["work_order"] == WO
    assert deviation["description"].startswith(
        "PROC-2: melt_temp 184 degC above its action limit 180 degC"
    )

    # Back under 178 (= 180 - 2) for 10 s clears the action alarm; 176 is still above the
    # alert limit less the hysteresis (173), so the alert alarm stays.
    await melt(ingest, start, (30, 179.0), (32, 176.0), (43, 176.5))
    alarms = {a["level"]: a for a in (await floor.get("/alarms"))["items"]}
    assert datetime.fromisoformat(alarms["action"]["cleared_at"]) == start + timedelta(seconds=43)
    assert alarms["alert"]["cleared_at"] is None
    await melt(ingest, start, (50, 172.0), (61, 171.0))
    assert (await floor.get("/alarms", active="true"))["items"] == []


async def test_acknowledging_an_alarm_is_audited_and_checked(floor: Floor, ingest: Ingest) -> None:
    await floor.released_lot("LLA", "LLA-2611-07", "100", "kg")
    await floor.approved_master(resin_master())
    await floor.released_order(WO, "WM-RES-PLGA9010", "50", "kg")
    await floor.start(WO, 10, "R-101")
    record = await floor.get(f"/work-orders/{WO}/record")
    start = datetime.fromisoformat(record["operations"][0]["started_at"])
    await melt(ingest, start, (1, 176.0), (12, 177.0))
    (alarm,) = (await floor.get("/alarms"))["items"]
    path = f"/alarms/{alarm['id']}/acknowledge"
    body = {"reason": "operator informed, jacket valve checked"}

    assert (await floor.post(path, "supervisor", body)).status_code == 428
    assert (await floor.post(path, "operator", body, version=1)).status_code == 403
    stale = await floor.post(path, "supervisor", body, version=7)
    assert stale.status_code == 412
    done = await floor.ok(path, "supervisor", body, version=1)
    assert (done["acknowledged_by"], done["version"], done["active"]) == ("supervisor", 2, True)
    again = await floor.post(path, "qa", body, version=2)
    assert again.status_code == 409
    assert "already acknowledged by supervisor" in again.json()["detail"]
    trail = await floor.get("/audit", "qa", entity_type="alarm")
    assert [(e["action"], e["username"], e["reason"]) for e in trail["items"]] == [
        ("acknowledge", "supervisor", body["reason"])
    ]
