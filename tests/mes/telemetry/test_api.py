"""Telemetry API: tags with latest values, samples raw and per bucket, gaps, the live stream."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from connectors.base import Gap, Observation, Quality
from mes.context import AppContext
from mes.models import TagKind
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore
from tests.conftest import Actors

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
MELT = "CORE/ROP-TRAIN-1/R-101/melt_temp"
STATE = "CORE/ROP-TRAIN-1/R-101/state"


def value(tag: str, v: object, at: datetime, quality: Quality = Quality.good) -> Observation:
    return Observation(
        source="plc-1",
        tag=tag,
        value=v,  # type: ignore[arg-type]
        quality=quality,
        source_ts=at,
        received_ts=at,
    )


@pytest.fixture
async def plant(ctx: AppContext) -> None:
    from mes.plant.loader import load_plant_file
    from mes.principal import system_principal

    await load_plant_file(ctx, system_principal("test"), ctx.settings.plant_file)


@pytest.fixture
async def ingest(plant: None, ctx: AppContext, tmp_path: Path) -> AsyncIterator[Ingest]:
    await register_tags(
        ctx.db,
        [
            TagSpec(tag=MELT, uom="degC", equipment="R-101"),
            TagSpec(tag=STATE, kind=TagKind.text, equipment="R-101"),
            TagSpec(tag="CORE/CR-101/rh", uom="%"),
        ],
    )
    pipeline = Ingest(SampleStore(ctx.db), Spool(tmp_path / "spool.db"), ctx.clock)
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


async def test_tags_samples_and_buckets(
    ingest: Ingest, client: httpx.AsyncClient, actors: Actors
) -> None:
    # 120 values a second apart: 150.0 .. 209.5, one bad value in the middle.
    await ingest.emit(
        [value(MELT, 150.0 + i / 2, T0 + timedelta(seconds=i)) for i in range(120) if i != 60]
        + [value(MELT, None, T0 + timedelta(seconds=60), Quality.bad)]
        + [value(STATE, "HOLD", T0 + timedelta(seconds=30))]
    )
    listed = await client.get(
        "/api/v1/tags", params={"equipment_code": "R-101"}, headers=actors["operator"]
    )
    assert listed.status_code == 200
    by_tag = {t["tag"]: t for t in listed.json()["items"]}
    assert by_tag[MELT]["value"] == 209.5
    assert by_tag[MELT]["uom"] == "degC"
    assert by_tag[STATE]["value"] == "HOLD"
    assert "CORE/CR-101/rh" not in by_tag

    window = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=2)).isoformat()}
    raw = await client.get(f"/api/v1/tags/{MELT}/samples", params=window, headers=actors["qa"])
    assert raw.status_code == 200
    series = raw.json()
    assert len(series["samples"]) == 120
    assert series["samples"][0] == {
        "ts": "2026-11-20T08:00:00Z",
        "value": 150.0,
        "quality": "good",
        "flags": [],
    }
    assert series["samples"][60]["quality"] == "bad"
    assert series["truncated"] is False

    per_minute = await client.get(
        f"/api/v1/tags/{MELT}/samples", params={**window, "bucket_s": 60}, headers=actors["qa"]
    )
    buckets = per_minute.json()["buckets"]
    assert buckets == [
        {"start": "2026-11-20T08:00:00Z", "count": 60, "min": 150.0, "max": 179.5, "mean": 164.75},
        # the bad value at 08:01:00 is left out of the statistics
        {"start": "2026-11-20T08:01:00Z", "count": 59, "min": 180.5, "max": 209.5, "mean": 195.0},
    ]


async def test_bad_requests_name_the_problem(
    ingest: Ingest, client: httpx.AsyncClient, actors: Actors
) -> None:
    headers = actors["operator"]
    unknown = await client.get("/api/v1/tags/NO/SUCH/tag/samples", headers=headers)
    assert unknown.status_code == 404
    assert "NO/SUCH/tag" in unknown.json()["detail"]
    backwards = await client.get(
        f"/api/v1/tags/{MELT}/samples",
        params={"start": T0.isoformat(), "end": (T0 - timedelta(hours=1)).isoformat()},
        headers=headers,
    )
    assert backwards.status_code == 422
    assert "start" in backwards.text
    too_fine = await client.get(
        f"/api/v1/tags/{MELT}/samples",
        params={
            "start": T0.isoformat(),
            "end": (T0 + timedelta(days=7)).isoformat(),
            "bucket_s": 1,
        },
        headers=headers,
    )
    assert too_fine.status_code == 422
    assert "bucket" in too_fine.text
    naive = await client.get(
        f"/api/v1/tags/{MELT}/samples", params={"start": "2026-11-20T08:00:00"}, headers=headers
    )
    assert naive.status_code == 422
    anonymous = await client.get("/api/v1/tags")
    assert anonymous.status_code == 401


async def test_gaps_are_listed(
    ingest: Ingest, client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    now = ctx.clock.now()
    await ingest.report_gap(Gap("broker-1", now - timedelta(minutes=5), now, "session lost"))
    listed = await client.get("/api/v1/telemetry/gaps", headers=actors["supervisor"])
    assert [(g["source"], g["reason"]) for g in listed.json()["items"]] == [
        ("broker-1", "session lost")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_live_stream_sends_the_latest_values_then_each_new_one(
    ingest: Ingest, app: FastAPI, actors: Actors, ctx: AppContext
) -> None:
    now = ctx.clock.now()
    await ingest.emit([value(MELT, 151.0, now - timedelta(seconds=2))])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(400):
            if server.started:
                break
            await asyncio.sleep(0.05)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http,
            http.stream(
                "GET", "/api/v1/live", params={"tag": MELT}, headers=actors["operator"]
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = aiter_events(response)
            first = await asyncio.wait_for(anext(events), 20)
            assert (first["tag"], first["value"]) == (MELT, 151.0)
            await ingest.emit([value(MELT, 152.5, now)])
            second = await asyncio.wait_for(anext(events), 20)
            assert (second["tag"], second["value"]) == (MELT, 152.5)
    finally:
        server.should_exit = True
        await serving


async def aiter_events(response: httpx.Response) -> AsyncIterator[dict[str, object]]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))
