"""Response models of the telemetry API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class TagPublic(BaseModel):
    """A tag and its latest stored value (``ts``/``value`` None before the first one)."""

    tag: str
    kind: str
    uom: str | None
    equipment_code: str | None
    room_code: str | None
    ts: datetime | None
    value: float | bool | str | None
    quality: str | None
    source: str | None


class TagList(BaseModel):
    items: list[TagPublic]


class SamplePublic(BaseModel):
    ts: datetime
    value: float | bool | str | None
    quality: str
    flags: list[str]


class BucketPublic(BaseModel):
    """Good-quality values of one bucket [start, start + bucket_s)."""

    start: datetime
    count: int
    min: float | None
    max: float | None
    mean: float | None


class SampleSeries(BaseModel):
    """Raw samples (``samples``, ``truncated`` when more than the cap) or buckets."""

    tag: str
    kind: str
    uom: str | None
    start: datetime
    end: datetime
    bucket_s: float | None
    truncated: bool
    samples: list[SamplePublic] | None
    buckets: list[BucketPublic] | None


class GapPublic(BaseModel):
    id: uuid.UUID
    source: str
    tag: str | None
    start: datetime
    end: datetime
    reason: str
    first_seq: int | None
    last_seq: int | None
    recorded_at: datetime


class GapList(BaseModel):
    items: list[GapPublic]


class AlarmPublic(BaseModel):
    """An alarm: where and how far the value went, when, and who has seen it."""

    id: uuid.UUID
    tag: str
    level: str
    direction: str
    limit: float
    value: float
    peak: float
    started_at: datetime
    raised_at: datetime
    cleared_at: datetime | None
    active: bool
    work_order: str | None
    parameter: str | None
    deviation: str | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    version: int


class AlarmList(BaseModel):
    items: list[AlarmPublic]


class OeePublic(BaseModel):
    """OEE of one unit over [start, end): seconds per status (``unknown``: no usable state
    value), parts counted, and the three factors (None where undefined, e.g. no parts)."""

    equipment_code: str
    start: datetime
    end: datetime
    seconds: dict[str, float]
    planned_s: float
    running_s: float
    good: float
    rejects: float
    ideal_cycle_s: float | None
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None


class SetpointResult(BaseModel):
    parameter: str
    tag: str
    value: str
    uom: str
    read_back: str | None
    confirmed: bool
    error: str | None


class SetpointDownload(BaseModel):
    """Every setpoint of the operation written and read back."""

    work_order: str
    operation_seq: int
    setpoints: list[SetpointResult]


class HourPublic(BaseModel):
    start: datetime
    count: int
    min: float | None
    max: float | None
    mean: float | None


class HourlySeries(BaseModel):
    tag: str
    uom: str | None
    hours: list[HourPublic]
