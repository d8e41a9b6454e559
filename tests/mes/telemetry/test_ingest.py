"""Ingest: observations stored once, bad values refused with a reason, gaps kept (both
databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.base import Gap, Observation, Quality, Rejected
from mes.context import AppContext
from mes.models import IngestReject, TagKind, TelemetryGap, TelemetryLatest, TelemetrySample
from mes.telemetry import store as store_module
from mes.telemetry.config import TagSpec, TelemetryConfigError, parse_config, register_tags
from mes.telemetry.ingest import Ingest
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
TAGS = [
    TagSpec(tag="R-101/melt_temp", uom="degC"),
    TagSpec(tag="R-101/agitator_on", kind=TagKind.boolean),
    TagSpec(tag="R-101/state", kind=TagKind.text),
]


def obs(
    tag: str, value: object, at: datetime, *, source: str = "plc-1", **kw: object
) -> Observation:
    return Observation(
        source=source,
        tag=tag,
        value=value,  # type: ignore[arg-type]
        quality=kw.pop("quality", Quality.good),  # type: ignore[arg-type]
        source_ts=at,
        received_ts=at + timedelta(milliseconds=5),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def ingest(ctx: AppContext, tmp_path: Path) -> AsyncIterator[Ingest]:
    await register_tags(ctx.db, TAGS)
    pipeline = Ingest(SampleStore(ctx.db), Spool(tmp_path / "spool.db"), ctx.clock)
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


async def samples(ctx: AppContext) -> list[tuple[object, ...]]:
    async with ctx.db.sessionmaker() as session:
        rows = await session.execute(
            select(
                TelemetrySample.source_ts,
                TelemetrySample.value_num,
                TelemetrySample.value_text,
                TelemetrySample.quality,
            ).order_by(TelemetrySample.tag_id, TelemetrySample.source_ts)
        )
        return [tuple(row) for row in rows]


async def test_values_are_stored_once_whatever_is_redelivered(
    ctx: AppContext, ingest: Ingest
) -> None:
    batch = [obs("R-101/melt_temp", 150.0 + i, T0 + timedelta(seconds=i)) for i in range(3)]
    await ingest.emit(batch)
    # A broker redelivers what was not acknowledged: the same values again, and one new.
    await ingest.emit([*batch, obs("R-101/melt_temp", 160.5, T0 + timedelta(seconds=3))])
    await ingest.emit(
        [
            obs("R-101/agitator_on", True, T0),
            obs("R-101/state", "HOLD", T0),
            obs("R-101/melt_temp", None, T0 + timedelta(seconds=4), quality=Quality.bad),
        ]
    )
    assert await samples(ctx) == [
        (T0, 150.0, None, "good"),
        (T0 + timedelta(seconds=1), 151.0, None, "good"),
        (T0 + timedelta(seconds=2), 152.0, None, "good"),
        (T0 + timedelta(seconds=3), 160.5, None, "good"),
        (T0 + timedelta(seconds=4), None, None, "bad"),
        (T0, 1.0, None, "good"),
        (T0, None, "HOLD", "good"),
    ]
    assert ingest.stored == 10  # rows handed to the database, duplicates included
    async with ctx.db.sessionmaker() as session:
        latest = (await session.execute(select(TelemetryLatest))).scalars().all()
    newest = {row.tag_id: (row.source_ts, row.value_num, row.value_text) for row in latest}
    assert sorted(newest.values(), key=str) == sorted(
        [
            (T0 + timedelta(seconds=4), None, None),
            (T0, 1.0, None),
            (T0, None, "HOLD"),
        ],
        key=str,
    )


async def test_an_older_value_never_replaces_the_latest(ctx: AppContext, ingest: Ingest) -> None:
    await ingest.emit([obs("R-101/melt_temp", 170.0, T0 + timedelta(minutes=5))])
    await ingest.emit([obs("R-101/melt_temp", 150.0, T0)])  # late, from a spool
    async with ctx.db.sessionmaker() as session:
        latest = (await session.execute(select(TelemetryLatest))).scalars().one()
    assert (latest.source_ts, latest.value_num) == (T0 + timedelta(minutes=5), 170.0)


async def test_bad_values_are_refused_with_a_reason_and_the_rest_stored(
    ctx: AppContext, ingest: Ingest
) -> None:
    future = ctx.clock.now() + timedelta(hours=1)
    await ingest.emit(
        [
            obs("R-101/unknown", 1.0, T0),
            obs("R-101/melt_temp", "hot", T0),
            obs("R-101/state", "x" * 201, T0),
            obs("R-101/melt_temp", 155.0, future),
            obs("R-101/melt_temp", 155.0, T0),
        ]
    )
    ingest.reject(Rejected("broker-1", "invalid_json", "line 1 column 2", b"{oops"))
    await ingest.emit([obs("R-101/melt_temp", 156.0, T0 + timedelta(seconds=1))])
    assert [row[1] for row in await samples(ctx)] == [155.0, 156.0]
    assert ingest.rejected == {
        ("plc-1", "unknown_tag"): 1,
        ("plc-1", "wrong_type"): 1,
        ("plc-1", "oversize"): 1,
        ("plc-1", "future_timestamp"): 1,
        ("broker-1", "invalid_json"): 1,
    }
    async with ctx.db.sessionmaker() as session:
        kept = (await session.execute(select(IngestReject).order_by(IngestReject.seq))).scalars()
        rows = [(r.source, r.reason, r.payload) for r in kept]
    assert ("broker-1", "invalid_json", b"{oops") in rows
    assert {reason for _, reason, _ in rows} == {
        "unknown_tag",
        "wrong_type",
        "oversize",
        "future_timestamp",
        "invalid_json",
    }


async def test_a_gap_is_recorded(ctx: AppContext, ingest: Ingest) -> None:
    await ingest.report_gap(
        Gap("broker-1", T0, T0 + timedelta(seconds=40), "broker restarted without the session")
    )
    async with ctx.db.sessionmaker() as session:
        gap = (await session.execute(select(TelemetryGap))).scalars().one()
    assert (gap.source, gap.start, gap.end) == ("broker-1", T0, T0 + timedelta(seconds=40))
    assert "without the session" in gap.reason


async def test_tags_must_name_known_equipment(ctx: AppContext) -> None:
    with pytest.raises(TelemetryConfigError, match=r"tags\[0\]\.equipment: no equipment 'NOPE'"):
        await register_tags(ctx.db, [TagSpec(tag="X/y", equipment="NOPE")])


def test_config_errors_name_the_yaml_path() -> None:
    with pytest.raises(TelemetryConfigError, match=r"tags\[1\]\.kind"):
        parse_config({"tags": [{"tag": "a"}, {"tag": "b", "kind": "colour"}]}, kinds={})
    with pytest.raises(TelemetryConfigError, match=r"tags\[1\]\.tag: 'a' listed twice"):
        parse_config({"tags": [{"tag": "a"}, {"tag": "a"}]}, kinds={})
    with pytest.raises(TelemetryConfigError, match=r"connectors\[0\]\.kind: 'opcx'"):
        parse_config({"connectors": [{"name": "c", "kind": "opcx"}]}, kinds={})
    with pytest.raises(TelemetryConfigError, match="unknown keys"):
        parse_config({"tagz": []}, kinds={})


async def test_a_caller_giving_up_does_not_cancel_the_batch(
    ctx: AppContext, ingest: Ingest
) -> None:
    """Every caller of a batch waits on it; one of them cancelled (a connector stopping) must
    not cancel the batch for the others nor stop the writer."""
    import asyncio

    impatient = asyncio.ensure_future(ingest.emit([obs("R-101/melt_temp", 150.0, T0)]))
    patient = ingest.emit([obs("R-101/melt_temp", 151.0, T0 + timedelta(seconds=1))])
    impatient.cancel()
    await patient
    await ingest.emit([obs("R-101/melt_temp", 152.0, T0 + timedelta(seconds=2))])
    assert [row[1] for row in await samples(ctx)] == [150.0, 151.0, 152.0]


async def test_a_batch_repeating_a_value_is_stored_once_and_the_next_batch_goes_straight_in(
    ctx: AppContext, ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch holding the same value twice (a QoS 1 redelivery inside one batch) cannot go
    # straight into the table; it is stored through the de-duplicating path instead, and
    # the next batch goes straight in again (no waiting time here).
    monkeypatch.setattr(store_module, "SAFE_AFTER_CONFLICT_S", 0.0)
    first = obs("R-101/melt_temp", 150.0, T0)
    await ingest.emit([first, obs("R-101/melt_temp", 151.0, T0 + timedelta(seconds=1)), first])
    await ingest.emit([obs("R-101/melt_temp", 152.0, T0 + timedelta(seconds=2))])
    await ingest.emit([first])
    assert await samples(ctx) == [
        (T0, 150.0, None, "good"),
        (T0 + timedelta(seconds=1), 151.0, None, "good"),
        (T0 + timedelta(seconds=2), 152.0, None, "good"),
    ]
    async with ctx.db.sessionmaker() as session:
        latest = (await session.execute(select(TelemetryLatest))).scalars().one()
    assert (latest.source_ts, latest.value_num) == (T0 + timedelta(seconds=2), 152.0)
