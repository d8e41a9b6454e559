"""Writing telemetry to the database in batches, through Core.

One batch is one transaction: its samples (duplicates of stored ones ignored), the newest value
per tag, and nothing else. On SQLite through one executemany of ``INSERT OR IGNORE``. On
PostgreSQL the samples go by COPY straight into ``telemetry_sample`` inside a savepoint; a
batch that repeats a stored value (a broker's redelivery, a spool replayed, an OPC UA
subscription re-created) fails there as a whole, and goes instead through COPY into a
temporary table and one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, which costs the
database about twice as much per row; for ``SAFE_AFTER_CONFLICT_S`` after such a batch every
batch takes that path directly. Either way a value is stored once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from mes.clock import utc_now
from mes.db import Database
from mes.models import IngestReject, TelemetryGap, TelemetryLatest, TelemetrySample, TelemetryTag

SAMPLE: Any = TelemetrySample.__table__  # type: ignore[attr-defined]
LATEST: Any = TelemetryLatest.__table__  # type: ignore[attr-defined]
TAG: Any = TelemetryTag.__table__  # type: ignore[attr-defined]
GAP: Any = TelemetryGap.__table__  # type: ignore[attr-defined]
REJECT: Any = IngestReject.__table__  # type: ignore[attr-defined]


class SampleRow(NamedTuple):
    """A sample as stored, in the column order of ``telemetry_sample``."""

    tag_id: int
    source_ts: datetime
    source: str
    value_num: float | None
    value_text: str | None
    quality: str
    status_code: int | None
    seq: int | None
    flags: str | None
    received_ts: datetime


COLUMNS = SampleRow._fields

# The temporary table COPY fills when a batch may repeat stored values; one per connection,
# emptied at each commit.
_STAGE_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS telemetry_sample_in "
    "(LIKE telemetry_sample INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_STAGE_READY = "mes_telemetry_stage"
_PG_MOVE = (
    f"INSERT INTO telemetry_sample ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM telemetry_sample_in "
    "ON CONFLICT DO NOTHING"
)
SAFE_AFTER_CONFLICT_S = 10.0
"""After a batch that repeated stored values, how long batches skip the direct COPY."""

# The newest value of each tag in the batch (chosen in Python) replaces the stored one only if
# it is newer: a late value from the spool never hides a live one.
_LATEST_COLUMNS = ("tag_id", "source_ts", "source", "value_num", "value_text", "quality")
_PG_LATEST = (
    f"INSERT INTO telemetry_latest ({', '.join(_LATEST_COLUMNS)}, stored_at) "
    "SELECT *, $7::timestamptz FROM unnest($1::int[], $2::timestamptz[], $3::text[], "
    "$4::float8[], $5::text[], $6::text[]) "
    "ON CONFLICT (tag_id) DO UPDATE SET source_ts = excluded.source_ts, "
    "source = excluded.source, value_num = excluded.value_num, "
    "value_text = excluded.value_text, quality = excluded.quality, "
    "stored_at = excluded.stored_at "
    "WHERE excluded.source_ts >= telemetry_latest.source_ts"
)


def _sqlite_latest_stmt() -> Any:
    stmt = sqlite_insert(LATEST)
    return stmt.on_conflict_do_update(
        index_elements=[LATEST.c.tag_id],
        set_={
            name: stmt.excluded[name]
            for name in ("source_ts", "source", "value_num", "value_text", "quality", "stored_at")
        },
        where=stmt.excluded.source_ts >= LATEST.c.source_ts,
    )


_SQLITE_SAMPLES = insert(SAMPLE).prefix_with("OR IGNORE")
_SQLITE_LATEST = _sqlite_latest_stmt()


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached (as opposed to refusing data)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | OperationalError
        | InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.OperatorInterventionError,
    )


def newest_per_tag(rows: Sequence[SampleRow]) -> list[SampleRow]:
    """The newest row (by source time) of each tag among ``rows``."""
    newest: dict[int, SampleRow] = {}
    for row in rows:
        held = newest.get(row.tag_id)
        if held is None or row.source_ts >= held.source_ts:
            newest[row.tag_id] = row
    return list(newest.values())


class SampleStore:
    """Batched writes of samples, gaps and rejects to the MES database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._safe_until = 0.0  # time.monotonic() before which batches skip the direct COPY

    async def write(self, rows: Sequence[SampleRow]) -> None:
        """Store ``rows`` in one transaction; values already stored are left as they are."""
        if not rows:
            return
        async with self.db.engine.connect() as conn:
            if self.db.dialect == "postgresql":
                await self._write_pg(conn, rows)
            else:
                await self._write_sqlite(conn, rows)

    async def _write_pg(self, conn: AsyncConnection, rows: Sequence[SampleRow]) -> None:
        fairy = await conn.get_raw_connection()
        pg = fairy.driver_connection
        assert pg is not None
        newest = newest_per_tag(rows)
        latest = [list(column) for column in zip(*(row[:6] for row in newest), strict=True)]
        staged = False
        try:
            async with pg.transaction():
                if not await self._copy_direct(pg, rows):
                    if not fairy.info.get(_STAGE_READY):
                        await pg.execute(_STAGE_DDL)  # undone if this transaction fails
                    staged = True
                    await pg.copy_records_to_table(
                        "telemetry_sample_in", records=rows, columns=COLUMNS
                    )
                    await pg.execute(_PG_MOVE)
                await pg.execute(_PG_LATEST, *latest, utc_now())
        except Exception as exc:
            # The raw driver is outside SQLAlchemy's disconnect handling: a connection that
            # failed as a connection is thrown away here, or the pool would hand it out again.
            if database_unavailable(exc):
                await conn.invalidate(exc)
            raise
        if staged:
            fairy.info[_STAGE_READY] = True

    async def _copy_direct(self, pg: Any, rows: Sequence[SampleRow]) -> bool:
        """COPY ``rows`` into ``telemetry_sample`` in a savepoint; False (nothing written)
        when one of them is stored already, or one came again within the last seconds."""
        if time.monotonic() < self._safe_until:
            return False
        try:
            async with pg.transaction():
                await pg.copy_records_to_table("telemetry_sample", records=rows, columns=COLUMNS)
        except asyncpg.UniqueViolationError:
            self._safe_until = time.monotonic() + SAFE_AFTER_CONFLICT_S
            return False
        return True

    async def _write_sqlite(self, conn: AsyncConnection, rows: Sequence[SampleRow]) -> None:
        stored_at = utc_now()
        async with conn.begin():
            await conn.execute(_SQLITE_SAMPLES, [row._asdict() for row in rows])
            await conn.execute(
                _SQLITE_LATEST,
                [
                    {
                        "tag_id": row.tag_id,
                        "source_ts": row.source_ts,
                        "source": row.source,
                        "value_num": row.value_num,
                        "value_text": row.value_text,
                        "quality": row.quality,
                        "stored_at": stored_at,
                    }
                    for row in newest_per_tag(rows)
                ],
            )

    async def write_gaps(self, gaps: Sequence[dict[str, Any]]) -> None:
        """Store gap records (keys of ``telemetry_gap``) in one transaction."""
        if gaps:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(GAP), list(gaps))

    async def write_rejects(self, rejects: Sequence[dict[str, Any]]) -> None:
        """Store refused payloads (keys of ``ingest_reject``) in one transaction."""
        if rejects:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(REJECT), list(rejects))

    async def tag_ids(self) -> dict[str, tuple[int, str]]:
        """Every registered tag: name -> (id, kind)."""
        async with self.db.engine.connect() as conn:
            result = await conn.execute(select(TAG.c.tag, TAG.c.id, TAG.c.kind))
            return {name: (tag_id, kind) for name, tag_id, kind in result}


def upsert_tags_stmt(dialect: str) -> Any:
    """Register tags by name; a registered tag keeps its id, its attributes follow the file."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(TAG)
    return stmt.on_conflict_do_update(
        index_elements=[TAG.c.tag],
        set_={
            name: stmt.excluded[name]
            for name in (
                "kind",
                "uom",
                "equipment_code",
                "room_code",
                "description",
                "alert_low",
                "alert_high",
                "action_low",
                "action_high",
                "alarm_delay_s",
                "hysteresis",
                "role",
                "states",
                "ideal_cycle_s",
                "raw_retention_days",
            )
        },
    )
