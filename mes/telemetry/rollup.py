"""Hourly roll-up of raw samples, and retention of raw samples.

``roll_up`` recomputes the hourly aggregates (count, min, max, sum of good numeric values) of
every tag for the hours from ``since`` to now from the raw values, replacing what was stored:
running it twice, or in two processes at once, gives the same rows. The background job rolls
up the last ``lookback`` hours every run, and from further back when the spool has just
delivered older values.

``apply_retention`` deletes raw values older than a tag's ``raw_retention_days`` after rolling
up the hours they fall in. Values that belong to production records are never deleted: a room
condition cannot have a retention (the configuration refuses it), and neither can a tag that a
work master names for a parameter or a setpoint (skipped here, with the signal of the same name
on other units, since batch context finds those by name).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mes.clock import Clock
from mes.db import Database
from mes.models import TelemetryRollup, WorkMaster
from mes.telemetry.store import SAMPLE, TAG, SampleRow

log = logging.getLogger(__name__)

ROLLUP: Any = TelemetryRollup.__table__  # type: ignore[attr-defined]
MASTER: Any = WorkMaster.__table__  # type: ignore[attr-defined]

# One runner at a time among ingest processes (PostgreSQL); the roll-up is idempotent anyway.
LOCK_ID = 0x4D45524F  # "MERO"

_PG_ROLLUP = text(
    """
    INSERT INTO telemetry_rollup (tag_id, hour_start, count, min, max, sum, rolled_at)
    SELECT tag_id, date_trunc('hour', source_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           count(value_num), min(value_num), max(value_num), sum(value_num), :now
    FROM telemetry_sample
    WHERE source_ts >= :since AND source_ts < :until AND quality = 'good'
          AND value_num IS NOT NULL
    GROUP BY 1, 2
    ON CONFLICT (tag_id, hour_start) DO UPDATE SET count = excluded.count,
        min = excluded.min, max = excluded.max, sum = excluded.sum,
        rolled_at = excluded.rolled_at
    """
)
# SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (mes.models.base.UTCDateTime).
_SQLITE_ROLLUP = text(
    """
    INSERT INTO telemetry_rollup (tag_id, hour_start, count, min, max, sum, rolled_at)
    SELECT tag_id, strftime('%Y-%m-%d %H:00:00.000000', source_ts),
           count(value_num), min(value_num), max(value_num), sum(value_num), :now
    FROM telemetry_sample
    WHERE source_ts >= :since AND source_ts < :until AND quality = 'good'
          AND value_num IS NOT NULL
    GROUP BY 1, 2
    ON CONFLICT (tag_id, hour_start) DO UPDATE SET count = excluded.count,
        min = excluded.min, max = excluded.max, sum = excluded.sum,
        rolled_at = excluded.rolled_at
    """
)


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _bind(conn: AsyncConnection, moment: datetime) -> Any:
    if conn.dialect.name == "sqlite":
        return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return moment


async def roll_up(conn: AsyncConnection, since: datetime, now: datetime) -> int:
    """Recompute the hourly aggregates of [hour of ``since``, now); rows written."""
    stmt = _PG_ROLLUP if conn.dialect.name == "postgresql" else _SQLITE_ROLLUP
    result = await conn.execute(
        stmt,
        {
            "since": _bind(conn, hour_floor(since)),
            "until": _bind(conn, now),
            "now": _bind(conn, now),
        },
    )
    return int(result.rowcount or 0)


async def protected_tags(conn: AsyncConnection) -> tuple[set[str], set[str]]:
    """The tags work masters name (parameters and setpoints) and their signal names."""
    names: set[str] = set()
    for (operations,) in await conn.execute(select(MASTER.c.operations)):
        for op in operations or []:
            for p in op.get("parameters", []):
                names.update(t for t in (p.get("tag"), p.get("setpoint_tag")) if t)
    return names, {n.rsplit("/", 1)[-1] for n in names}


async def apply_retention(conn: AsyncConnection, now: datetime) -> dict[str, int]:
    """Delete the raw values past each tag's retention, once their hours are rolled up;
    rows deleted per tag."""
    tags = list(await conn.execute(select(TAG).where(TAG.c.raw_retention_days.is_not(None))))
    if not tags:
        return {}
    names, signals = await protected_tags(conn)
    deleted: dict[str, int] = {}
    for tag in tags:
        if (
            tag.room_code
            or tag.tag in names
            or (tag.equipment_code and tag.tag.rsplit("/", 1)[-1] in signals)
        ):
            continue
        cutoff = hour_floor(now - timedelta(days=tag.raw_retention_days))
        oldest = await conn.scalar(
            select(SAMPLE.c.source_ts)
            .where(SAMPLE.c.tag_id == tag.id)
            .order_by(SAMPLE.c.source_ts)
            .limit(1)
        )
        if oldest is None or oldest >= cutoff:
            continue
        await roll_up(conn, oldest, cutoff)
        result = await conn.execute(
            delete(SAMPLE).where(SAMPLE.c.tag_id == tag.id, SAMPLE.c.source_ts < cutoff)
        )
        deleted[tag.tag] = int(result.rowcount or 0)
    return deleted


@dataclass
class RollupJob:
    """What the ingest process runs every minute: roll-up, then retention."""

    db: Database
    clock: Clock
    lookback: timedelta = timedelta(hours=2)
    dirty_since: datetime | None = None

    def mark_late(self, oldest: datetime) -> None:
        """Values older than the lookback were just stored (from the spool)."""
        if self.dirty_since is None or oldest < self.dirty_since:
            self.dirty_since = oldest

    async def start(self) -> None:
        """Nothing to load (an ingest effect)."""

    async def process(self, rows: Sequence[SampleRow]) -> None:
        """Note stored values that fall before the next run's lookback (an ingest effect)."""
        if rows:
            oldest = min(row.source_ts for row in rows)
            if oldest < self.clock.now() - self.lookback:
                self.mark_late(oldest)

    async def run_once(self) -> dict[str, Any]:
        now = self.clock.now()
        since = now - self.lookback
        dirty, self.dirty_since = self.dirty_since, None
        if dirty is not None and dirty < since:
            since = dirty
        try:
            async with self.db.engine.begin() as conn:
                if conn.dialect.name == "postgresql" and not await conn.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": LOCK_ID}
                ):
                    return {"skipped": "another process is rolling up"}
                rows = await roll_up(conn, since, now)
                deleted = await apply_retention(conn, now)
        except Exception:
            if dirty is not None:
                self.mark_late(dirty)  # try that range again next time
            raise
        if deleted:
            log.info("telemetry retention: %s", deleted)
        return {"since": since, "hours": rows, "deleted": deleted}


async def hourly(conn: AsyncConnection, tag_id: int, start: datetime, end: datetime) -> list[Any]:
    """The hourly aggregates of one tag with hour_start in [start, end)."""
    return list(
        await conn.execute(
            select(ROLLUP)
            .where(
                ROLLUP.c.tag_id == tag_id,
                ROLLUP.c.hour_start >= start,
                ROLLUP.c.hour_start < end,
            )
            .order_by(ROLLUP.c.hour_start)
        )
    )
