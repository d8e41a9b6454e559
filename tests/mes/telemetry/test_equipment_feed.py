"""A unit's state signal drives its status (audited, cleaning and maintenance left to people),
and its state and counters give its OEE (both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from connectors.base import Observation, Quality
from mes.context import AppContext
from mes.models import EquipmentStatus, TagKind, TagRole
from mes.plant.loader import load_plant_file
from mes.principal import system_principal
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.equipment_feed import EquipmentFeed
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.conftest import Actors

UNIT = "IM-501"
STATE = "CORE/IM-CELL-1/IM-501/state"
GOOD = "CORE/IM-CELL-1/IM-501/good_count"
REJECTS = "CORE/IM-CELL-1/IM-501/reject_count"


@pytest.fixture
async def ingest(ctx: AppContext, tmp_path: Path) -> AsyncIterator[Ingest]:
    await load_plant_file(ctx, system_principal("test"), ctx.settings.plant_file)
    await register_tags(
        ctx.db,
        [
            TagSpec(
                tag=STATE,
                kind=TagKind.text,
                equipment=UNIT,
                role=TagRole.equipment_state,
                states={
                    "IDLE": EquipmentStatus.idle,
                    "RUNNING": EquipmentStatus.running,
                    "DOWN": EquipmentStatus.down,
                },
            ),
            TagSpec(tag=GOOD, equipment=UNIT, role=TagRole.good_count, ideal_cycle_s=25),
            TagSpec(tag=REJECTS, equipment=UNIT, role=TagRole.reject_count),
        ],
    )
    pipeline = Ingest(
        SampleStore(ctx.db),
        Spool(tmp_path / "spool.db"),
        ctx.clock,
        effects=[EquipmentFeed(ctx)],
    )
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


def at(tag: str, when: datetime, value: object, quality: Quality = Quality.good) -> Observation:
    return Observation(
        source="edge-im",
        tag=tag,
        value=value,  # type: ignore[arg-type]
        quality=quality,
        source_ts=when,
        received_ts=when,
    )


async def status(client: httpx.AsyncClient, actors: Actors) -> str:
    found = await client.get(f"/api/v1/equipment/{UNIT}", headers=actors["operator"])
    return str(found.json()["status"])


async def test_the_state_signal_drives_the_unit_status(
    ingest: Ingest, client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    t0 = ctx.clock.now() - timedelta(hours=1)
    assert await status(client, actors) == "idle"
    await ingest.emit([at(STATE, t0, "RUNNING")])
    assert await status(client, actors) == "running"
    await ingest.emit([at(STATE, t0 + timedelta(minutes=1), "WARMUP")])  # not in its states
    await ingest.emit([at(STATE, t0 + timedelta(minutes=2), "DOWN", Quality.bad)])
    assert await status(client, actors) == "running"
    await ingest.emit([at(STATE, t0 + timedelta(minutes=3), "DOWN")])
    assert await status(client, actors) == "down"

    # People put it into maintenance; the machine's own RUNNING does not end that.
    unit = await client.get(f"/api/v1/equipment/{UNIT}", headers=actors["supervisor"])
    moved = await client.post(
        f"/api/v1/equipment/{UNIT}/status",
        json={"status": "maintenance", "reason": "hydraulic leak"},
        headers={**actors["supervisor"], "If-Match": unit.headers["ETag"]},
    )
    assert moved.status_code == 200, moved.text
    await ingest.emit([at(STATE, t0 + timedelta(minutes=4), "RUNNING")])
    assert await status(client, actors) == "maintenance"

    trail = await client.get(
        "/api/v1/audit",
        params={"entity_type": "equipment", "entity_id": UNIT},
        headers=actors["qa"],
    )
    changes = [
        (e["username"], e["changes"][0]["new"], e["reason"])
        for e in trail.json()["items"]
        if e["action"] == "status"
    ]
    assert changes == [
        ("system:telemetry", "running", f"state signal {STATE} = RUNNING at {t0.isoformat()}"),
        (
            "system:telemetry",
            "down",
            f"state signal {STATE} = DOWN at {(t0 + timedelta(minutes=3)).isoformat()}",
        ),
        ("supervisor", "maintenance", "hydraulic leak"),
    ]


async def test_oee_over_a_shift(
    ingest: Ingest, client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    t0 = (ctx.clock.now() - timedelta(hours=3)).replace(microsecond=0)

    def m(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    await ingest.emit(
        [
            at(STATE, m(-5), "IDLE"),  # standing when the shift opens
            at(STATE, m(10), "RUNNING"),
            at(STATE, m(70), "DOWN"),
            at(STATE, m(90), "RUNNING"),
            at(GOOD, m(-1), 1000),
            at(GOOD, m(30), 1050),
            at(GOOD, m(60), 1110),
            at(GOOD, m(80), 5),  # the counter was reset
            at(GOOD, m(110), 65),
            at(REJECTS, m(-1), 10),
            at(REJECTS, m(60), 16),
        ]
    )
    found = await client.get(
        f"/api/v1/equipment/{UNIT}/oee",
        params={"start": t0.isoformat(), "end": m(120).isoformat()},
        headers=actors["supervisor"],
    )
    assert found.status_code == 200, found.text
    figures = found.json()
    assert figures["seconds"] == {"down": 1200.0, "idle": 600.0, "running": 5400.0}
    assert (figures["planned_s"], figures["running_s"]) == (7200.0, 5400.0)
    assert (figures["good"], figures["rejects"]) == (175.0, 6.0)
    assert figures["availability"] == pytest.approx(0.75)
    assert figures["performance"] == pytest.approx(25 * 181 / 5400)
    assert figures["quality"] == pytest.approx(175 / 181)
    assert figures["oee"] == pytest.approx(0.75 * 25 * 181 / 5400 * 175 / 181)

    # Before the signal's first value the time is unknown, not a loss.
    early = await client.get(
        f"/api/v1/equipment/{UNIT}/oee",
        params={"start": m(-65).isoformat(), "end": m(-5).isoformat()},
        headers=actors["supervisor"],
    )
    assert early.json()["seconds"] == {"unknown": 3600.0}
    assert early.json()["availability"] is None

    no_signal = await client.get("/api/v1/equipment/IM-502/oee", headers=actors["supervisor"])
    assert no_signal.status_code == 404
    assert "no state signal" in no_signal.json()["detail"]
