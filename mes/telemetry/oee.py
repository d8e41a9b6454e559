"""OEE of a unit over a shift, from its state signal and its part counters.

- **Availability** = running time / planned time, where planned time is the window less
  planned stops (maintenance) and less the time the state signal said nothing (no data, shown
  apart: a gap in the signal is not counted as a loss or as production).
- **Performance** = ideal cycle time x parts made / running time.
- **Quality** = good parts / parts made.

Counters are cumulative; their increase over the window is summed piecewise so that a reset
(the value falling) counts from zero instead of subtracting. A state value holds until the next
one, and the value standing when the window opens counts from its start.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mes.errors import NotFound
from mes.models import EquipmentStatus, TagRole
from mes.telemetry.equipment_feed import reported
from mes.telemetry.store import SAMPLE, TAG, SampleRow


async def _series(conn: AsyncConnection, tag_id: int, start: datetime, end: datetime) -> list[Any]:
    """The values in [start, end), preceded by the one standing at ``start``."""
    columns = (SAMPLE.c.source_ts, SAMPLE.c.value_num, SAMPLE.c.value_text, SAMPLE.c.quality)
    before = (
        await conn.execute(
            select(*columns)
            .where(SAMPLE.c.tag_id == tag_id, SAMPLE.c.source_ts < start)
            .order_by(SAMPLE.c.source_ts.desc())
            .limit(1)
        )
    ).first()
    rows = list(
        await conn.execute(
            select(*columns)
            .where(
                and_(
                    SAMPLE.c.tag_id == tag_id,
                    SAMPLE.c.source_ts >= start,
                    SAMPLE.c.source_ts < end,
                )
            )
            .order_by(SAMPLE.c.source_ts)
        )
    )
    return ([before] if before is not None else []) + rows


def state_durations(
    rows: Sequence[Any], states: dict[str, str], start: datetime, end: datetime
) -> dict[str, float]:
    """Seconds in each unit status over [start, end); ``unknown`` where the signal said
    nothing usable (before its first value, bad quality, a value not in ``states``)."""
    seconds: dict[str, float] = defaultdict(float)
    if not rows or rows[0].source_ts > start:
        first = rows[0].source_ts if rows else end
        seconds["unknown"] += (min(first, end) - start).total_seconds()
    for index, row in enumerate(rows):
        begin = max(row.source_ts, start)
        until = min(rows[index + 1].source_ts if index + 1 < len(rows) else end, end)
        held = max(0.0, (until - begin).total_seconds())
        sample = SampleRow(
            0,
            row.source_ts,
            "",
            row.value_num,
            row.value_text,
            row.quality,
            None,
            None,
            None,
            row.source_ts,
        )
        raw = reported(sample) if row.quality == "good" else None
        status = states.get(raw) if raw is not None else None
        seconds[status or "unknown"] += held
    return dict(seconds)


def counter_increase(rows: Sequence[Any], start: datetime) -> float:
    """How much a cumulative counter rose over the window (a fall is a reset to zero)."""
    values = [r.value_num for r in rows if r.quality == "good" and r.value_num is not None]
    if not values:
        return 0.0
    standing = rows[0].source_ts < start
    total = 0.0
    previous = values[0] if standing else 0.0
    for value in values[1:] if standing else values:
        total += value - previous if value >= previous else value
        previous = value
    return total


async def oee(conn: AsyncConnection, code: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The OEE figures of unit ``code`` over [start, end)."""
    tags = {
        row.role: row
        for row in await conn.execute(
            select(TAG).where(TAG.c.equipment_code == code, TAG.c.role.is_not(None))
        )
    }
    state = tags.get(TagRole.equipment_state)
    if state is None:
        raise NotFound(
            f"{code} has no state signal (a tag with role equipment_state)", field="code"
        )
    durations = state_durations(
        await _series(conn, state.id, start, end), state.states or {}, start, end
    )
    counts: dict[str, float] = {}
    for role in (TagRole.good_count, TagRole.reject_count):
        tag = tags.get(role)
        counts[role] = (
            counter_increase(await _series(conn, tag.id, start, end), start) if tag else 0.0
        )
    good, rejects = counts[TagRole.good_count], counts[TagRole.reject_count]
    made = good + rejects
    planned = sum(
        seconds
        for status, seconds in durations.items()
        if status not in (EquipmentStatus.maintenance, "unknown")
    )
    running = durations.get(EquipmentStatus.running, 0.0)
    good_tag = tags.get(TagRole.good_count)
    ideal = good_tag.ideal_cycle_s if good_tag is not None else None
    availability = running / planned if planned > 0 else None
    performance = ideal * made / running if ideal and running > 0 else None
    quality = good / made if made > 0 else None
    factors = [f for f in (availability, performance, quality) if f is not None]
    return {
        "equipment_code": code,
        "start": start,
        "end": end,
        "seconds": {k: round(v, 3) for k, v in sorted(durations.items())},
        "planned_s": round(planned, 3),
        "running_s": round(running, 3),
        "good": good,
        "rejects": rejects,
        "ideal_cycle_s": ideal,
        "availability": availability,
        "performance": performance,
        "quality": quality,
        "oee": factors[0] * factors[1] * factors[2] if len(factors) == 3 else None,
    }
