"""Batch context: the line data of an operation execution, for its production record.

A tag that supplies a process parameter (``ParameterSpec.tag`` of the work order's frozen work
master) is read over the execution's interval on its unit: count, min, max, mean and how long
the value stood outside the alert and action limits. The room the execution ran in gets the
same summary for each of its condition tags (temperature, humidity, particles, pressure
difference), against the tag's own limits (ISO 13485 7.5.9.2; DOMAIN PR-5).

Time outside limits is time-weighted: a value holds until the next one (or the end of the
interval); the value standing when the execution started counts from the start. Values of bad
or uncertain quality are not judged, and the time they hold counts as ``unknown_s``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pint
from pydantic import BaseModel
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mes.telemetry.store import SAMPLE, TAG
from mes.units import registry


class SignalSummary(BaseModel):
    """One tag over one execution's interval."""

    operation_seq: int
    tag: str
    parameter: str | None
    room_code: str | None
    critical: bool
    uom: str | None
    start: datetime
    end: datetime
    samples: int
    min: float | None
    max: float | None
    mean: float | None
    alert_low: float | None
    alert_high: float | None
    action_low: float | None
    action_high: float | None
    outside_alert_s: float
    outside_action_s: float
    unknown_s: float
    problem: str | None


@dataclass(frozen=True)
class Limits:
    alert_low: float | None = None
    alert_high: float | None = None
    action_low: float | None = None
    action_high: float | None = None

    def outside_alert(self, value: float) -> bool:
        return _outside(value, self.alert_low, self.alert_high) or self.outside_action(value)

    def outside_action(self, value: float) -> bool:
        return _outside(value, self.action_low, self.action_high)


def _outside(value: float, low: float | None, high: float | None) -> bool:
    return (low is not None and value < low) or (high is not None and value > high)


@dataclass(frozen=True)
class Watch:
    """What to summarise: a tag over an interval, judged against limits, in a unit."""

    operation_seq: int
    tag: str
    start: datetime
    end: datetime
    limits: Limits
    uom: str | None
    parameter: str | None = None
    room_code: str | None = None
    critical: bool = False


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def parameter_limits(spec: dict[str, Any]) -> Limits:
    """The limits of a frozen ParameterSpec (stored as decimal strings)."""
    return Limits(
        alert_low=_float(spec.get("alert_low")),
        alert_high=_float(spec.get("alert_high")),
        action_low=_float(spec.get("action_low")),
        action_high=_float(spec.get("action_high")),
    )


def _affine(from_uom: str, to_uom: str) -> tuple[float, float]:
    """(a, b) with value_in_to = a * value_in_from + b (every unit conversion is affine)."""
    ureg = registry()
    zero = ureg.Quantity(Decimal(0), from_uom).to(to_uom).magnitude
    one = ureg.Quantity(Decimal(1), from_uom).to(to_uom).magnitude
    return float(one - zero), float(zero)


def summarise(
    watch: Watch,
    rows: Sequence[tuple[datetime, float | None, str]],
    conversion: tuple[float, float] = (1.0, 0.0),
    problem: str | None = None,
) -> SignalSummary:
    """Summarise ``rows`` (source time, value, quality; oldest first, the first one possibly
    before ``watch.start``: the value standing at the start)."""
    a, b = conversion
    good: list[float] = []
    outside_alert = outside_action = unknown = 0.0
    for index, (ts, raw, quality) in enumerate(rows):
        begin = max(ts, watch.start)
        until = rows[index + 1][0] if index + 1 < len(rows) else watch.end
        held = max(0.0, (min(until, watch.end) - begin).total_seconds())
        if raw is None or quality != "good":
            unknown += held
            continue
        value = a * raw + b
        if ts >= watch.start:
            good.append(value)
        if watch.limits.outside_action(value):
            outside_action += held
        if watch.limits.outside_alert(value):
            outside_alert += held
    if rows and rows[0][0] > watch.start:
        unknown += (min(rows[0][0], watch.end) - watch.start).total_seconds()
    elif not rows:
        unknown = (watch.end - watch.start).total_seconds()
    return SignalSummary(
        operation_seq=watch.operation_seq,
        tag=watch.tag,
        parameter=watch.parameter,
        room_code=watch.room_code,
        critical=watch.critical,
        uom=watch.uom,
        start=watch.start,
        end=watch.end,
        samples=len(good),
        min=min(good) if good else None,
        max=max(good) if good else None,
        mean=sum(good) / len(good) if good else None,
        alert_low=watch.limits.alert_low,
        alert_high=watch.limits.alert_high,
        action_low=watch.limits.action_low,
        action_high=watch.limits.action_high,
        outside_alert_s=round(outside_alert, 3),
        outside_action_s=round(outside_action, 3),
        unknown_s=round(unknown, 3),
        problem=problem,
    )


async def _rows(
    conn: AsyncConnection, tag_id: int, start: datetime, end: datetime
) -> list[tuple[datetime, float | None, str]]:
    columns = (SAMPLE.c.source_ts, SAMPLE.c.value_num, SAMPLE.c.quality)
    before = (
        await conn.execute(
            select(*columns)
            .where(SAMPLE.c.tag_id == tag_id, SAMPLE.c.source_ts < start)
            .order_by(SAMPLE.c.source_ts.desc())
            .limit(1)
        )
    ).first()
    within = await conn.execute(
        select(*columns)
        .where(
            and_(SAMPLE.c.tag_id == tag_id, SAMPLE.c.source_ts >= start, SAMPLE.c.source_ts < end)
        )
        .order_by(SAMPLE.c.source_ts)
    )
    rows = [(ts, value, quality) for ts, value, quality in within]
    if before is not None:
        rows.insert(0, (before[0], before[1], before[2]))
    return rows


async def summaries(conn: AsyncConnection, watches: Iterable[Watch]) -> list[SignalSummary]:
    """Summarise each watch whose tag is registered; an unregistered tag is summarised as
    having no data, with the problem named."""
    watches = list(watches)
    names = {w.tag for w in watches}
    registered = (
        {
            row.tag: row
            for row in await conn.execute(
                select(TAG.c.id, TAG.c.tag, TAG.c.uom).where(TAG.c.tag.in_(names))
            )
        }
        if names
        else {}
    )
    result: list[SignalSummary] = []
    for watch in watches:
        tag = registered.get(watch.tag)
        if tag is None:
            result.append(summarise(watch, [], problem=f"tag {watch.tag!r} is not registered"))
            continue
        conversion, problem = (1.0, 0.0), None
        if watch.uom and tag.uom and watch.uom != tag.uom:
            try:
                conversion = _affine(tag.uom, watch.uom)
            except (pint.errors.PintError, ValueError) as exc:
                problem = f"tag unit {tag.uom} cannot be converted to {watch.uom}: {exc}"
        rows = [] if problem else await _rows(conn, tag.id, watch.start, watch.end)
        result.append(summarise(watch, rows, conversion, problem))
    return result


async def room_tags(conn: AsyncConnection, room_codes: Iterable[str]) -> dict[str, list[Any]]:
    """The condition tags of each room, by room code, with their own limits."""
    codes = set(room_codes)
    if not codes:
        return {}
    rows = await conn.execute(select(TAG).where(TAG.c.room_code.in_(codes)).order_by(TAG.c.tag))
    by_room: dict[str, list[Any]] = {}
    for row in rows:
        by_room.setdefault(row.room_code, []).append(row)
    return by_room


@dataclass(frozen=True)
class ExecutionWindow:
    """An operation execution as batch context needs it."""

    operation_seq: int
    unit_code: str | None
    room_code: str | None
    start: datetime
    end: datetime
    parameters: Sequence[dict[str, Any]]


async def _unit_tags(conn: AsyncConnection, unit_codes: Iterable[str]) -> dict[str, set[str]]:
    codes = set(unit_codes)
    if not codes:
        return {}
    rows = await conn.execute(
        select(TAG.c.equipment_code, TAG.c.tag).where(TAG.c.equipment_code.in_(codes))
    )
    by_unit: dict[str, set[str]] = {}
    for code, tag in rows:
        by_unit.setdefault(code, set()).add(tag)
    return by_unit


def tag_on_unit(spec_tag: str, unit: str | None, unit_tags: dict[str, set[str]]) -> str:
    """The tag that supplies a parameter on the unit that ran the operation.

    A work master names one unit's tag (``CORE/ROP-TRAIN-1/R-101/melt_temp``); when the
    operation ran on another eligible unit, its tag with the same signal name is the one that
    measured the batch. Without such a tag the master's own tag is kept (and the summary
    shows what it found).
    """
    if unit is None or spec_tag in unit_tags.get(unit, set()):
        return spec_tag
    signal = spec_tag.rsplit("/", 1)[-1]
    for tag in sorted(unit_tags.get(unit, set())):
        if tag.rsplit("/", 1)[-1] == signal:
            return tag
    return spec_tag


async def line_data(
    conn: AsyncConnection, windows: Sequence[ExecutionWindow]
) -> tuple[list[SignalSummary], list[SignalSummary]]:
    """The process data (parameters with a tag) and the environmental conditions (the room's
    tags) of each execution, in operation order."""
    unit_tags = await _unit_tags(conn, [w.unit_code for w in windows if w.unit_code])
    rooms = await room_tags(conn, [w.room_code for w in windows if w.room_code])
    process = [
        Watch(
            operation_seq=w.operation_seq,
            tag=tag_on_unit(p["tag"], w.unit_code, unit_tags),
            start=w.start,
            end=w.end,
            limits=parameter_limits(p),
            uom=p.get("uom"),
            parameter=p["name"],
            critical=bool(p.get("critical")),
        )
        for w in windows
        for p in w.parameters
        if p.get("tag")
    ]
    environment = [
        Watch(
            operation_seq=w.operation_seq,
            tag=t.tag,
            start=w.start,
            end=w.end,
            limits=Limits(t.alert_low, t.alert_high, t.action_low, t.action_high),
            uom=t.uom,
            room_code=w.room_code,
        )
        for w in windows
        if w.room_code
        for t in rooms.get(w.room_code, [])
    ]
    return await summaries(conn, process), await summaries(conn, environment)
