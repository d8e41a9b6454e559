"""Telemetry tables: the tag registry, raw samples, the latest value per tag, gaps in the data
and payloads that were refused.

Samples are written by ``mes.telemetry`` through Core (COPY on PostgreSQL, executemany on
SQLite), never through the ORM: the ORM costs ten times more per row (PITFALLS).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Column, Float, ForeignKey, Integer, LargeBinary, String
from sqlmodel import Field, SQLModel

from mes.clock import utc_now
from mes.models.base import id_field, seq_column, utc_field


class TagKind(StrEnum):
    """What a tag's values are: numbers (also counters and states sent as numbers), booleans
    or text (a state name, a recipe id)."""

    number = "number"
    boolean = "boolean"
    text = "text"


class TagRole(StrEnum):
    """What a tag drives besides its stored values."""

    equipment_state = "equipment_state"  # the unit's status (idle/running/down), and OEE
    good_count = "good_count"  # a counter of good parts (OEE quality and performance)
    reject_count = "reject_count"  # a counter of rejected parts


class TelemetryTag(SQLModel, table=True):
    """One signal of one piece of equipment (``CORE/ROP-TRAIN-1/R-101/melt_temp``).

    Loaded from the telemetry configuration; a sample of a tag that is not registered is
    refused (``unknown_tag``). ``parameter`` names the process parameter of a work master the
    tag supplies (ParameterSpec.tag), ``room`` the cleanroom whose condition it measures.
    """

    __tablename__ = "telemetry_tag"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    tag: str = Field(max_length=200, unique=True)
    kind: TagKind = Field(default=TagKind.number, sa_type=String(10))
    uom: str | None = Field(default=None, max_length=20)
    equipment_code: str | None = Field(default=None, max_length=40, index=True)
    room_code: str | None = Field(default=None, max_length=40, index=True)
    description: str | None = Field(default=None, max_length=500)
    # Limits of a tag that is watched on its own (a cleanroom condition). A tag that supplies a
    # process parameter is judged against the running operation's limits instead.
    alert_low: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    alert_high: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    action_low: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    action_high: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    # An excursion must last this long before it raises an alarm (and a return inside the
    # limits by ``hysteresis`` this long before it clears): noise does not chatter.
    alarm_delay_s: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    hysteresis: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    role: TagRole | None = Field(default=None, sa_type=String(20))
    # equipment_state: the unit status each reported value means ("RUN" -> running).
    states: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # good_count: the ideal time per part (OEE performance).
    ideal_cycle_s: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    # Raw values older than this are deleted once rolled up into hourly aggregates; None keeps
    # them (the default, and the only choice for values that belong to production records).
    raw_retention_days: int | None = Field(default=None)
    created_at: datetime = utc_field(default_factory=utc_now)


class TelemetrySample(SQLModel, table=True):
    """One stored value. The key (tag, source time, source) de-duplicates a value that a
    broker redelivers or a spool replays: storing it twice changes nothing.

    ``tag_id`` has no foreign key: checking it would cost the database a lookup and a lock
    per stored value, and the ingest only writes ids it read from the registry, whose tags
    are never deleted.
    """

    __tablename__ = "telemetry_sample"

    tag_id: int = Field(sa_column=Column(Integer, primary_key=True))
    source_ts: datetime = utc_field(primary_key=True)
    source: str = Field(max_length=100, primary_key=True)
    value_num: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    value_text: str | None = Field(default=None, max_length=200)
    quality: str = Field(max_length=10)
    status_code: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    flags: str | None = Field(default=None, max_length=100)
    received_ts: datetime = utc_field()


class TelemetryLatest(SQLModel, table=True):
    """The newest stored value of each tag (by source time): what the live view shows."""

    __tablename__ = "telemetry_latest"

    tag_id: int = Field(sa_column=Column(Integer, ForeignKey("telemetry_tag.id"), primary_key=True))
    source_ts: datetime = utc_field()
    source: str = Field(max_length=100)
    value_num: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    value_text: str | None = Field(default=None, max_length=200)
    quality: str = Field(max_length=10)
    stored_at: datetime = utc_field()


class TelemetryGap(SQLModel, table=True):
    """A stretch of time for which a source's values may be missing (a broker that lost its
    session, OPC UA subscriptions recreated, a Sparkplug sequence jump)."""

    __tablename__ = "telemetry_gap"

    id: uuid.UUID = id_field()
    source: str = Field(max_length=100, index=True)
    tag: str | None = Field(default=None, max_length=200)
    start: datetime = utc_field()
    end: datetime = utc_field()
    reason: str = Field(max_length=500)
    first_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    recorded_at: datetime = utc_field(default_factory=utc_now)


class IngestReject(SQLModel, table=True):
    """A payload or value the ingest refused, with the reason, kept for inspection."""

    __tablename__ = "ingest_reject"

    seq: int | None = Field(default=None, sa_column=seq_column())
    source: str = Field(max_length=100, index=True)
    reason: str = Field(max_length=40)
    detail: str = Field(default="", max_length=500)
    payload: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    at: datetime = utc_field(default_factory=utc_now)


class AlarmLevel(StrEnum):
    alert = "alert"
    action = "action"


class TelemetryAlarm(SQLModel, table=True):
    """A tag's value outside a limit for longer than its delay.

    ``started_at`` is the source time of the first value outside, ``raised_at`` when the delay
    had passed, ``cleared_at`` when the value had been back inside (by the hysteresis) for the
    delay. Raised during an operation whose parameter the tag supplies, it names the work
    order and operation; an action-level alarm there opens a deviation.
    """

    __tablename__ = "telemetry_alarm"

    id: uuid.UUID = id_field()
    tag: str = Field(max_length=200, index=True)
    level: AlarmLevel = Field(sa_type=String(10))
    direction: str = Field(max_length=4)
    limit_value: float = Field(sa_column=Column(Float, nullable=False))
    value: float = Field(sa_column=Column(Float, nullable=False))
    peak: float = Field(sa_column=Column(Float, nullable=False))
    started_at: datetime = utc_field()
    raised_at: datetime = utc_field(index=True)
    cleared_at: datetime | None = utc_field(default=None)
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_order.id", index=True)
    operation_id: uuid.UUID | None = Field(default=None, foreign_key="operation.id")
    parameter: str | None = Field(default=None, max_length=60)
    deviation_id: uuid.UUID | None = Field(default=None, foreign_key="deviation.id")
    acknowledged_by: str | None = Field(default=None, max_length=64)
    acknowledged_at: datetime | None = utc_field(default=None)
    version: int = Field(default=1, ge=1)


class TelemetryRollup(SQLModel, table=True):
    """Good values of one tag over one hour: count, min, max and sum (mean = sum / count).

    Kept when raw values are deleted by retention; recomputed from raw values while they exist,
    so a value that arrives late (from a spool) still counts.
    """

    __tablename__ = "telemetry_rollup"

    tag_id: int = Field(sa_column=Column(Integer, ForeignKey("telemetry_tag.id"), primary_key=True))
    hour_start: datetime = utc_field(primary_key=True)
    count: int
    min: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    max: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    sum: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    rolled_at: datetime = utc_field()
