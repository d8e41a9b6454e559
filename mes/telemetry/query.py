"""Reading telemetry: the tag list with the latest values, a tag's samples over a time range
(raw, or min/max/mean per bucket), gaps, and the changes since a moment for the live view."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, cast, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mes.errors import NotFound
from mes.telemetry.store import GAP, LATEST, SAMPLE, TAG

MAX_RAW = 5000
MAX_BUCKETS = 5000

_LIVE_COLUMNS = (
    TAG.c.tag,
    TAG.c.kind,
    TAG.c.uom,
    TAG.c.equipment_code,
    TAG.c.room_code,
    LATEST.c.source_ts,
    LATEST.c.value_num,
    LATEST.c.value_text,
    LATEST.c.quality,
    LATEST.c.source,
    LATEST.c.stored_at,
)


def _value(kind: str, number: float | None, text: str | None) -> float | bool | str | None:
    if kind == "text":
        return text
    if kind == "boolean" and number is not None:
        return number != 0
    return number


def tag_view(row: Any) -> dict[str, Any]:
    """A tag with its latest value (``value`` and ``ts`` None if it has none yet)."""
    return {
        "tag": row.tag,
        "kind": row.kind,
        "uom": row.uom,
        "equipment_code": row.equipment_code,
        "room_code": row.room_code,
        "ts": row.source_ts,
        "value": _value(row.kind, row.value_num, row.value_text),
        "quality": row.quality,
        "source": row.source,
    }


async def tags(
    conn: AsyncConnection,
    *,
    equipment_code: str | None = None,
    room_code: str | None = None,
    names: list[str] | None = None,
    changed_after: datetime | None = None,
) -> list[Any]:
    """Registered tags with their latest values, by name; ``changed_after`` keeps only the
    tags whose latest value was stored after that moment (the live view's poll)."""
    stmt = select(*_LIVE_COLUMNS).select_from(TAG.outerjoin(LATEST, LATEST.c.tag_id == TAG.c.id))
    if equipment_code:
        stmt = stmt.where(TAG.c.equipment_code == equipment_code)
    if room_code:
        stmt = stmt.where(TAG.c.room_code == room_code)
    if names:
        stmt = stmt.where(TAG.c.tag.in_(names))
    if changed_after is not None:
        stmt = stmt.where(LATEST.c.stored_at > changed_after)
    return list(await conn.execute(stmt.order_by(TAG.c.tag)))


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end) and an optional bucket width."""

    start: datetime
    end: datetime
    bucket: timedelta | None = None


async def tag_row(conn: AsyncConnection, tag: str) -> Any:
    row = (await conn.execute(select(TAG).where(TAG.c.tag == tag))).first()
    if row is None:
        raise NotFound(f"no tag {tag!r}", field="tag")
    return row


async def samples(conn: AsyncConnection, tag: str, window: Window) -> dict[str, Any]:
    """The samples of ``tag`` in ``window``: raw (oldest first, at most MAX_RAW, then
    ``truncated``) or, with a bucket, per bucket start: count, min, max, mean (numbers only)."""
    info = await tag_row(conn, tag)
    in_range = and_(
        SAMPLE.c.tag_id == info.id,
        SAMPLE.c.source_ts >= window.start,
        SAMPLE.c.source_ts < window.end,
    )
    head = {
        "tag": tag,
        "kind": info.kind,
        "uom": info.uom,
        "start": window.start,
        "end": window.end,
    }
    if window.bucket is None:
        rows = list(
            await conn.execute(
                select(
                    SAMPLE.c.source_ts,
                    SAMPLE.c.value_num,
                    SAMPLE.c.value_text,
                    SAMPLE.c.quality,
                    SAMPLE.c.flags,
                )
                .where(in_range)
                .order_by(SAMPLE.c.source_ts, SAMPLE.c.source)
                .limit(MAX_RAW + 1)
            )
        )
        return {
            **head,
            "bucket_s": None,
            "truncated": len(rows) > MAX_RAW,
            "samples": [
                {
                    "ts": r.source_ts,
                    "value": _value(info.kind, r.value_num, r.value_text),
                    "quality": r.quality,
                    "flags": r.flags.split(",") if r.flags else [],
                }
                for r in rows[:MAX_RAW]
            ],
            "buckets": None,
        }
    width = window.bucket.total_seconds()
    epoch = _epoch_seconds(conn.dialect.name)
    bucket = (func.floor(epoch / width) * width).label("bucket")
    rows = list(
        await conn.execute(
            select(
                bucket,
                func.count(SAMPLE.c.value_num).label("n"),
                func.min(SAMPLE.c.value_num).label("min"),
                func.max(SAMPLE.c.value_num).label("max"),
                func.avg(cast(SAMPLE.c.value_num, Float)).label("mean"),
            )
            .where(in_range, SAMPLE.c.quality == "good")
            .group_by(bucket)
            .order_by(bucket)
        )
    )
    return {
        **head,
        "bucket_s": width,
        "truncated": False,
        "samples": None,
        "buckets": [
            {
                "start": datetime.fromtimestamp(float(r.bucket), UTC),
                "count": r.n,
                "min": r.min,
                "max": r.max,
                "mean": None if r.mean is None else float(r.mean),
            }
            for r in rows
        ],
    }


def _epoch_seconds(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", SAMPLE.c.source_ts)
    # SQLite keeps UTC as text; julianday keeps the fraction of a second.
    return (func.julianday(SAMPLE.c.source_ts) - literal_column("2440587.5")) * 86400.0


async def gaps(
    conn: AsyncConnection, *, source: str | None, start: datetime, end: datetime, limit: int
) -> list[Any]:
    """Gap records overlapping [start, end), newest first."""
    stmt = select(GAP).where(GAP.c.end >= start, GAP.c.start < end)
    if source:
        stmt = stmt.where(GAP.c.source == source)
    return list(await conn.execute(stmt.order_by(GAP.c.start.desc()).limit(limit)))
