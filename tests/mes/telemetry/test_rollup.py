"""Hourly roll-up (idempotent; late values rolled up by the ingest that stored them) and
raw-value retention (both databases)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from connectors.base import Observation, Quality
from mes.context import AppContext
from mes.db import Database
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.rollup import LOOKBACK, LateRollup, hour_floor, roll_up_recent
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.conftest import Actors

OVEN = "LAB/OVEN-1/temp"  # raw values kept one day
KILN = "LAB/KILN-1/temp"  # raw values kept


@pytest.fixture
async def ingest(ctx: AppContext, tmp_path: Path) -> AsyncIterator[Ingest]:
    await register_tags(
        ctx.db, [TagSpec(tag=OVEN, uom="degC", raw_retention_days=1), TagSpec(tag=KILN)]
    )
    effect = LateRollup(
        ctx.db, ctx.clock, pause=timedelta(0), retry_after=timedelta(milliseconds=10)
    )
    pipeline = Ingest(SampleStore(ctx.db), Spool(tmp_path / "s.db"), ctx.clock, effects=[effect])
    await pipeline.start()
    yield pipeline
    await pipeline.stop()
    await effect.stop()


def late_rollup(ingest: Ingest) -> LateRollup:
    effect = ingest.effects[0]
    assert isinstance(effect, LateRollup)
    return effect


def value(tag: str, at: datetime, v: float, quality: Quality = Quality.good) -> Observation:
    return Observation(
        source="plc", tag=tag, value=v, quality=quality, source_ts=at, received_ts=at
    )


async def hourly(
    client: httpx.AsyncClient, actors: Actors, tag: str, start: datetime, end: datetime
) -> list[dict[str, object]]:
    found = await client.get(
        f"/api/v1/tags/{tag}/hourly",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers=actors["qa"],
    )
    assert found.status_code == 200, found.text
    hours: list[dict[str, object]] = found.json()["hours"]
    return hours


async def test_roll_up_then_retention(
    ingest: Ingest,
    ctx: AppContext,
    client: httpx.AsyncClient,
    actors: Actors,
) -> None:
    now = ctx.clock.now()
    old = hour_floor(now - timedelta(days=3))
    recent = hour_floor(now - timedelta(hours=1))
    await ingest.emit(
        [
            value(OVEN, old + timedelta(minutes=5), 1.0),
            value(OVEN, old + timedelta(minutes=6), 2.0),
            value(OVEN, old + timedelta(minutes=7), 3.0),
            value(OVEN, old + timedelta(minutes=8), 99.0, Quality.bad),  # not counted
            value(OVEN, recent + timedelta(minutes=1), 10.0),
            value(OVEN, recent + timedelta(minutes=2), 20.0),
            value(KILN, old + timedelta(minutes=5), 500.0),
        ]
    )
    first = await roll_up_recent(ctx.db, ctx.clock)
    again = await roll_up_recent(ctx.db, ctx.clock)  # idempotent: the same rows
    assert first["deleted"] == {OVEN: 4}
    assert again["deleted"] == {}

    window = (old - timedelta(hours=1), now + timedelta(hours=1))
    assert await hourly(client, actors, OVEN, *window) == [
        {
            "start": old.isoformat().replace("+00:00", "Z"),
            "count": 3,
            "min": 1.0,
            "max": 3.0,
            "mean": 2.0,
        },
        {
            "start": recent.isoformat().replace("+00:00", "Z"),
            "count": 2,
            "min": 10.0,
            "max": 20.0,
            "mean": 15.0,
        },
    ]
    raw = await client.get(
        f"/api/v1/tags/{OVEN}/samples",
        params={"start": old.isoformat(), "end": (old + timedelta(hours=1)).isoformat()},
        headers=actors["qa"],
    )
    assert raw.json()["samples"] == []  # past retention, rolled up first
    kiln = await client.get(
        f"/api/v1/tags/{KILN}/samples",
        params={"start": old.isoformat(), "end": (old + timedelta(hours=1)).isoformat()},
        headers=actors["qa"],
    )
    assert [s["value"] for s in kiln.json()["samples"]] == [500.0]  # no retention: kept

    # A value older than the job's lookback arrives late (from a spool): the ingest that stored
    # it rolls its hour up right after the batch, as the job will not look back that far.
    late = hour_floor(now - LOOKBACK - timedelta(hours=3))
    await ingest.emit([value(KILN, late + timedelta(minutes=30), 510.0)])
    await late_rollup(ingest).flush()
    hours = await hourly(client, actors, KILN, late, late + timedelta(hours=1))
    assert [(h["count"], h["mean"]) for h in hours] == [(1, 510.0)]


async def test_recent_values_are_left_to_the_job(
    ingest: Ingest, ctx: AppContext, client: httpx.AsyncClient, actors: Actors
) -> None:
    """Values the background job still covers are not rolled up by ingest (one roll-up a
    minute, not one per batch); the job's run covers them."""
    now = ctx.clock.now()
    recent = hour_floor(now)
    await ingest.emit([value(KILN, recent + timedelta(seconds=1), 7.0)])
    window = (recent, recent + timedelta(hours=1))
    assert await hourly(client, actors, KILN, *window) == []
    await roll_up_recent(ctx.db, ctx.clock)
    assert [h["count"] for h in await hourly(client, actors, KILN, *window)] == [1]


async def test_a_failed_late_roll_up_is_retried(
    ingest: Ingest,
    ctx: AppContext,
    tmp_path: Path,
    client: httpx.AsyncClient,
    actors: Actors,
) -> None:
    """The late hours stay noted until a roll-up of them succeeds: here the first attempts
    cannot open their database (a directory), a later one can."""
    effect = late_rollup(ingest)
    unreachable = Database.from_url(f"sqlite+aiosqlite:///{tmp_path}")
    effect.db = unreachable
    now = ctx.clock.now()
    late = hour_floor(now - LOOKBACK - timedelta(hours=4))
    try:
        await ingest.emit([value(KILN, late + timedelta(minutes=10), 42.0)])  # stored
        for _ in range(1000):
            if effect.failures:
                break
            await asyncio.sleep(0.01)
    finally:
        await unreachable.dispose()
    assert effect.failures
    hours = await hourly(client, actors, KILN, late, late + timedelta(hours=1))
    assert hours == []

    effect.db = ctx.db
    await effect.flush()
    assert effect.pending is None
    hours = await hourly(client, actors, KILN, late, late + timedelta(hours=1))
    assert [(h["count"], h["mean"]) for h in hours] == [(1, 42.0)]


def test_room_conditions_keep_their_raw_values() -> None:
    with pytest.raises(ValidationError, match="PR-5"):
        TagSpec(tag="CORE/RM-1/rh", room="RM-1", raw_retention_days=30)
