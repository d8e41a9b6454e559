"""Hourly roll-up of raw samples, and retention of raw samples.

``roll_up`` recomputes the hourly aggregates (count, min, max, sum of good numeric values) of
every tag for the hours from ``since`` to ``until`` from the raw values, replacing what was
stored: running it twice, or in two processes at once, gives the same rows. The background job
``telemetry-rollup`` (mes/background, one process of a deployment) rolls up the last
``LOOKBACK`` every minute (``roll_up_recent``). That job runs in another process than ingest and
cannot know what a spool drain just delivered, so the ingest process rolls up those older hours
itself, right after storing them (``LateRollup``, an ingest effect).

``apply_retention`` deletes raw values older than a tag's ``raw_retention_days`` after rolling
up the hours they fall in. Values that belong to production records are never deleted: a room
condition cannot have a retention (the configuration refuses it), and neither can a tag that a
work master names for a parameter or a setpoint (skipped here, with the signal of the same name
on other units, since batch context finds those by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
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

# What the background job re-covers every run. Values older than that (a spool drain, an OPC UA
# republish after a long outage) are rolled up by the ingest process that stored them.
LOOKBACK = timedelta(hours=2)

_PG_ROLLUP = text(
    """
    INSERT INTO telemetry_rollup (tag_id, hour_start, count, min, max, sum, rolled_at)
    SELECT tag_id, date_trunc('hour', source_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           count(value_num), min(value_num), max(value_num), sum(value_num), :now
    FROM telemetry_sample
    WHERE source_ts >= :since AND source_ts < :until AND quality = 'good'
          AND value_num IS NOT NULL
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (tag_id, hour_start) DO UPDATE SET count = excluded.count,
        min = excluded.min, max = excluded.max, sum = excluded.sum,
        rolled_at = excluded.rolled_at
    """
)
# Rows are upserted in key order: the job and an ingest process re-rolling late hours may
# overlap by an hour, and two transactions that lock the same rows in the same order wait for
# each other instead of deadlocking (PostgreSQL; SQLite serialises writers anyway).
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
    ORDER BY 1, 2
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


async def roll_up(
    conn: AsyncConnection, since: datetime, until: datetime, *, now: datetime | None = None
) -> int:
    """Recompute the hourly aggregates of the values in [hour of ``since``, ``until``), stamped
    ``now`` (default ``until``); rows written."""
    stmt = _PG_ROLLUP if conn.dialect.name == "postgresql" else _SQLITE_ROLLUP
    result = await conn.execute(
        stmt,
        {
            "since": _bind(conn, hour_floor(since)),
            "until": _bind(conn, until),
            "now": _bind(conn, now or until),
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
        await roll_up(conn, oldest, cutoff, now=now)
        result = await conn.execute(
            delete(SAMPLE).where(SAMPLE.c.tag_id == tag.id, SAMPLE.c.source_ts < cutoff)
        )
        deleted[tag.tag] = int(result.rowcount or 0)
    return deleted


async def roll_up_recent(
    db: Database, clock: Clock, lookback: timedelta = LOOKBACK
) -> dict[str, Any]:
    """The background job's work: roll up the last ``lookback``, then apply retention, in one
    transaction (a failure leaves both to the next run)."""
    now = clock.now()
    since = now - lookback
    async with db.engine.begin() as conn:
        rows = await roll_up(conn, since, now)
        deleted = await apply_retention(conn, now)
    if deleted:
        log.info("telemetry retention: %s", deleted)
    return {"since": hour_floor(since), "hours": rows, "deleted": deleted}


def late_before(now: datetime, lookback: timedelta = LOOKBACK) -> datetime:
    """Values older than this may fall outside every coming run of the background job: the
    hour its window starts in slides forward while the job waits for its next run (up to an
    hour later), so that hour counts as late too."""
    return hour_floor(now - lookback) + timedelta(hours=1)


@dataclass
class LateRollup:
    """An ingest effect: rolls up the hours of stored values older than the background job
    re-covers (a spool drain after a database outage, a device with a wrong clock).

    The batch only notes its late hours; a task of the effect rolls them up right after, off
    the write path, so ingest never waits for a roll-up. After a roll-up the task rests for
    ``pause``, and the hours noted meanwhile are merged into the next one: a long drain, or a
    device whose clock is days behind, costs one roll-up per pause, not one per batch. A
    failed roll-up keeps its hours and is retried after ``retry_after``."""

    db: Database
    clock: Clock
    lookback: timedelta = LOOKBACK
    pause: timedelta = timedelta(seconds=10)
    retry_after: timedelta = timedelta(seconds=5)
    pending: tuple[datetime, datetime] | None = None
    failures: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    async def start(self) -> None:
        """Start the roll-up task (stopped by ``stop``)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work(), name="telemetry-late-rollup")

    async def process(self, rows: Sequence[SampleRow]) -> None:
        """Note the hours of the late values among ``rows``."""
        cutoff = late_before(self.clock.now(), self.lookback)
        late = [row.source_ts for row in rows if row.source_ts < cutoff]
        if late:
            self.mark_late(min(late), max(late))

    def mark_late(self, oldest: datetime, newest: datetime) -> None:
        """Values from ``oldest`` to ``newest`` need their hours rolled up again."""
        if self.pending is not None:
            oldest, newest = min(oldest, self.pending[0]), max(newest, self.pending[1])
        self.pending = (oldest, newest)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every hour noted so far is rolled up."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the task, then roll up what is still noted (once: on failure those hours wait
        for retention's roll-up or ``telemetry-rollup`` looking back that far)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.roll_up_pending()
        except Exception:
            log.exception("late telemetry hours %s not rolled up at stop", self.pending)

    async def roll_up_pending(self) -> int:
        """Roll up the noted hours now; tag-hours written."""
        if self.pending is None:
            return 0
        # Taken before the roll-up: hours noted meanwhile wait for the next one; a failure
        # puts these back.
        (oldest, newest), self.pending = self.pending, None
        now = self.clock.now()
        until = min(now, hour_floor(newest) + timedelta(hours=1))
        try:
            async with self.db.engine.begin() as conn:
                written = await roll_up(conn, oldest, until, now=now)
        except BaseException:
            self.mark_late(oldest, newest)
            raise
        log.info(
            "telemetry roll-up of late values: %d tag-hours from %s to %s",
            written,
            hour_floor(oldest).isoformat(),
            until.isoformat(),
        )
        return written

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.roll_up_pending()
            except Exception:
                # Supervisor of the roll-ups: the hours stay noted and are tried again.
                self.failures += 1
                log.exception("late telemetry hours not rolled up; retrying")
                await asyncio.sleep(self.retry_after.total_seconds())
                continue
            if self.pending is None:
                self._idle.set()
            await asyncio.sleep(self.pause.total_seconds())


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
