"""Telemetry API: tags with their latest values, a tag's samples (raw or per bucket), gaps
in the data, and the live stream (Server-Sent Events).

The API reads what ``mes ingest`` stored; it never talks to equipment. Tag names contain
slashes (``CORE/ROP-TRAIN-1/R-101/melt_temp``), so the samples route takes the tag as a path.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from mes.clock import UtcDateTime
from mes.errors import InvalidInput
from mes.http import ContextDep, LimitQuery, SessionDep, VersionDep, etag
from mes.identity.deps import ANY_HUMAN, Allow
from mes.models import Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.schemas import InputModel
from mes.telemetry import alarm_service, oee, query, rollup, setpoints
from mes.telemetry.config import TAG_PATTERN
from mes.telemetry.schemas import (
    AlarmList,
    AlarmPublic,
    GapList,
    HourlySeries,
    OeePublic,
    SampleSeries,
    SetpointDownload,
    TagList,
)

router = APIRouter(prefix=API_PREFIX, tags=["telemetry"])

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
Operator = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor))]
Acknowledger = Annotated[Principal, Depends(Allow(Role.supervisor, Role.qa))]


class AlarmAcknowledge(InputModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


DEFAULT_WINDOW = timedelta(hours=1)
SHIFT = timedelta(hours=8)
LIVE_POLL_S = 1.0
LIVE_HEARTBEAT_S = 15.0


def _before(moment: datetime, span: timedelta, name: str) -> datetime:
    try:
        return moment - span
    except OverflowError:
        raise InvalidInput(f"{name} is too early", field=name) from None


def _window(
    ctx: Any, start: datetime | None, end: datetime | None, bucket_s: float | None
) -> query.Window:
    end = end or ctx.clock.now()
    start = start or _before(end, DEFAULT_WINDOW, "end")
    if start >= end:
        raise InvalidInput("start must be before end", field="start")
    bucket = None
    if bucket_s is not None:
        bucket = timedelta(seconds=bucket_s)
        if (end - start) / bucket > query.MAX_BUCKETS:
            raise InvalidInput(
                f"{(end - start) / bucket:.0f} buckets: at most {query.MAX_BUCKETS}; "
                "widen the bucket or shorten the range",
                field="bucket_s",
            )
    return query.Window(start, end, bucket)


@router.get("/tags", response_model=TagList)
async def list_tags(
    session: SessionDep,
    _: Reader,
    equipment_code: str | None = None,
    room_code: str | None = None,
) -> dict[str, Any]:
    """Registered tags with their latest stored values."""
    conn = await session.connection()
    rows = await query.tags(conn, equipment_code=equipment_code, room_code=room_code)
    return {"items": [query.tag_view(r) for r in rows]}


@router.get("/tags/{tag:path}/samples", response_model=SampleSeries)
async def tag_samples(
    ctx: ContextDep,
    session: SessionDep,
    _: Reader,
    tag: Annotated[str, Path(max_length=200, pattern=TAG_PATTERN)],
    start: UtcDateTime | None = None,
    end: UtcDateTime | None = None,
    bucket_s: Annotated[
        float | None,
        Query(ge=1, le=86400 * 31, description="Bucket width in seconds: min/max/mean per bucket"),
    ] = None,
) -> dict[str, Any]:
    """The samples of one tag in [start, end) (default: the last hour), raw or downsampled."""
    window = _window(ctx, start, end, bucket_s)
    return await query.samples(await session.connection(), tag, window)


@router.get("/tags/{tag:path}/hourly", response_model=HourlySeries)
async def tag_hourly(
    ctx: ContextDep,
    session: SessionDep,
    _: Reader,
    tag: Annotated[str, Path(max_length=200, pattern=TAG_PATTERN)],
    start: UtcDateTime | None = None,
    end: UtcDateTime | None = None,
) -> dict[str, Any]:
    """The hourly roll-up of one tag (default: the last 7 days): count, min, max, mean of the
    good values of each hour, kept after raw values are deleted by retention."""
    end = end or ctx.clock.now()
    start = start or _before(end, timedelta(days=7), "end")
    if start >= end:
        raise InvalidInput("start must be before end", field="start")
    if end - start > timedelta(days=3660):
        raise InvalidInput("at most ten years at a time", field="start")
    conn = await session.connection()
    info = await query.tag_row(conn, tag)
    rows = await rollup.hourly(conn, info.id, start, end)
    return {
        "tag": tag,
        "uom": info.uom,
        "hours": [
            {
                "start": r.hour_start,
                "count": r.count,
                "min": r.min,
                "max": r.max,
                "mean": r.sum / r.count if r.count else None,
            }
            for r in rows
        ],
    }


@router.get("/telemetry/gaps", response_model=GapList)
async def list_gaps(
    ctx: ContextDep,
    session: SessionDep,
    _: Reader,
    source: str | None = None,
    start: UtcDateTime | None = None,
    end: UtcDateTime | None = None,
    limit: LimitQuery = 100,
) -> dict[str, Any]:
    """Stretches of time for which a source's values may be missing (default: last 24 h)."""
    end = end or ctx.clock.now()
    start = start or _before(end, timedelta(hours=24), "end")
    conn = await session.connection()
    rows = await query.gaps(conn, source=source, start=start, end=end, limit=limit)
    return {"items": [dict(r._mapping) for r in rows]}


@router.get("/equipment/{code}/oee", response_model=OeePublic, tags=["telemetry"])
async def equipment_oee(
    code: Annotated[str, Path(max_length=40)],
    ctx: ContextDep,
    session: SessionDep,
    _: Reader,
    start: UtcDateTime | None = None,
    end: UtcDateTime | None = None,
) -> dict[str, Any]:
    """Availability, performance, quality and OEE of a unit over a shift (default: the last
    8 hours), from its state signal and part counters."""
    end = end or ctx.clock.now()
    start = start or _before(end, SHIFT, "end")
    if start >= end:
        raise InvalidInput("start must be before end", field="start")
    if end - start > timedelta(days=31):
        raise InvalidInput("at most 31 days at a time", field="start")
    return await oee.oee(await session.connection(), code, start, end)


@router.post(
    "/operations/{ident}/download-setpoints",
    response_model=SetpointDownload,
    tags=["operations"],
)
async def download_setpoints(
    ident: str, principal: Operator, ctx: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Recipe download: the running operation's parameter targets written to its unit's
    setpoints over OPC UA, each read back; audited; 409 naming the setpoint that was not
    confirmed (the attempt is audited too)."""
    return await setpoints.download(ctx, session, principal, ident)


@router.get("/alarms", response_model=AlarmList)
async def list_alarms(
    session: SessionDep,
    _: Reader,
    active: bool | None = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    work_order: Annotated[str | None, Query(max_length=40)] = None,
    limit: LimitQuery = 100,
) -> dict[str, Any]:
    """Alarms raised on limits, newest first (``active=true``: not yet cleared)."""
    items = await alarm_service.list_alarms(
        session, active=active, tag=tag, work_order=work_order, limit=limit
    )
    return {"items": items}


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmPublic)
async def acknowledge_alarm(
    alarm_id: uuid.UUID,
    body: AlarmAcknowledge,
    principal: Acknowledger,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> dict[str, Any]:
    """Record that a supervisor or QA has seen the alarm (audited; it stays raised until the
    value is back inside its limits)."""
    alarm = await alarm_service.acknowledge(
        session, principal, alarm_id, version, body.reason, ctx.clock.now()
    )
    response.headers["ETag"] = etag(alarm["version"])
    return alarm


def _event(row: Any) -> str:
    view = query.tag_view(row)
    view["ts"] = view["ts"].isoformat() if view["ts"] else None
    return f"event: value\ndata: {json.dumps(view, separators=(',', ':'))}\n\n"


@router.get(
    "/live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def live(
    request: Request,
    ctx: ContextDep,
    _: Reader,
    equipment_code: str | None = None,
    room_code: str | None = None,
    tag: Annotated[list[str] | None, Query(max_length=200)] = None,
    max_s: Annotated[
        float, Query(gt=0, le=86400, description="End the stream after this many seconds")
    ] = 3600,
) -> StreamingResponse:
    """Live values as Server-Sent Events: every selected tag's latest value first, then each
    newly stored value (``event: value``, JSON data), checked every second. The stream ends
    after ``max_s`` (an hour by default); an EventSource reconnects by itself and gets the
    latest values again."""

    async def stream() -> AsyncIterator[str]:
        since: datetime | None = None
        sent: dict[str, datetime | None] = {}
        idle = 0.0
        loop = asyncio.get_running_loop()
        until = loop.time() + max_s
        yield "retry: 1000\n\n"
        while not await request.is_disconnected() and loop.time() < until:
            polled_at = ctx.clock.now()
            async with ctx.db.engine.connect() as conn:
                rows = await query.tags(
                    conn,
                    equipment_code=equipment_code,
                    room_code=room_code,
                    names=tag,
                    changed_after=since,
                )
            fresh = [row for row in rows if row.tag not in sent or sent[row.tag] != row.source_ts]
            for row in fresh:
                sent[row.tag] = row.source_ts
                yield _event(row)
            # The polls overlap by one period, so a value committed while a poll ran is not
            # missed; ``sent`` keeps it from being sent twice.
            since = polled_at - timedelta(seconds=LIVE_POLL_S)
            idle = 0.0 if fresh else idle + LIVE_POLL_S
            if idle >= LIVE_HEARTBEAT_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(min(LIVE_POLL_S, max(0.0, until - loop.time())))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
