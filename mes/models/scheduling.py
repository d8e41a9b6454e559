"""Finite-capacity scheduling: changeover rules, unit calendars and unavailable windows,
scheduling runs with their assignments, and the leases that keep background jobs single.

A scheduling run is a document: its request, the solver's answer and every assignment are
stored together as the run's JSON, so a run shows exactly what was proposed even after the
plant has moved on; publishing copies the assignments onto the operations (audited).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from mes.models.base import VersionedRecord, utc_field


class ScheduleStatus(StrEnum):
    queued = "queued"
    running = "running"
    solved = "solved"
    failed = "failed"
    published = "published"
    superseded = "superseded"


class ScheduleKind(StrEnum):
    full = "full"
    repair = "repair"


class WindowKind(StrEnum):
    maintenance = "maintenance"
    calibration = "calibration"
    planned_downtime = "planned_downtime"
    breakdown = "breakdown"


class ChangeoverRule(VersionedRecord, table=True):
    """Minutes to change a unit (or every unit of a class) from one product family to another;
    a unit's own rule wins over its class's."""

    __tablename__ = "changeover_rule"
    __table_args__ = (UniqueConstraint("scope_code", "from_family", "to_family"),)

    # "class:<code>" or "unit:<code>": one unique key over both kinds of scope (NULLs are
    # distinct in a unique constraint on both databases).
    scope_code: str = Field(max_length=50)
    equipment_class_id: uuid.UUID | None = Field(default=None, foreign_key="equipment_class.id")
    equipment_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id")
    from_family: str = Field(max_length=40)
    to_family: str = Field(max_length=40)
    minutes: int = Field(ge=0)
    created_by: str = Field(max_length=64)


class EquipmentCalendar(VersionedRecord, table=True):
    """The working time of a unit: shifts in its local time zone; none means round the clock."""

    __tablename__ = "equipment_calendar"

    equipment_id: uuid.UUID = Field(foreign_key="equipment.id", unique=True)
    timezone: str = Field(default="UTC", max_length=60)
    # [{"name": "early", "days": [0, 1, 2, 3, 4], "start": "06:00", "end": "14:00"}, ...]
    # days: 0 = Monday; a shift whose end is not after its start runs past midnight.
    shifts: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    updated_by: str = Field(max_length=64)


class UnavailableWindow(VersionedRecord, table=True):
    """A time a unit cannot run work: maintenance, calibration, planned downtime or a
    breakdown (its end the expected return)."""

    __tablename__ = "unavailable_window"

    equipment_id: uuid.UUID = Field(foreign_key="equipment.id", index=True)
    start: datetime = utc_field()
    end: datetime = utc_field()
    kind: WindowKind = Field(max_length=20, sa_type=String(20))
    reason: str = Field(max_length=1000)
    created_by: str = Field(max_length=64)
    cancelled: bool = False


class ScheduleRun(VersionedRecord, table=True):
    """One scheduling run: what was asked, how the solver did and what it proposed."""

    __tablename__ = "schedule_run"

    kind: ScheduleKind = Field(max_length=10, sa_type=String(10))
    status: ScheduleStatus = Field(max_length=20, sa_type=String(20), index=True)
    trigger: str = Field(max_length=40)
    trigger_detail: str | None = Field(default=None, max_length=1000)
    requested_by: str = Field(max_length=64)
    horizon_start: datetime = utc_field()
    time_limit_s: int
    objective: str = Field(max_length=30)
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    started_at: datetime | None = utc_field(default=None)
    finished_at: datetime | None = utc_field(default=None)
    solver_status: str | None = Field(default=None, max_length=20)
    method: str | None = Field(default=None, max_length=20)
    objective_value: float | None = None
    bound: float | None = None
    gap: float | None = None
    makespan_min: int | None = None
    total_tardiness_min: int | None = None
    solve_s: float | None = None
    error: str | None = Field(default=None, max_length=2000)
    # {"late_work_orders": [...], "problems": [...], "assignments": [...], "moved": n}
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    published_at: datetime | None = utc_field(default=None)
    published_by: str | None = Field(default=None, max_length=64)


class JobLease(SQLModel, table=True):
    """Who runs the background jobs: one holder at a time, renewed before it expires."""

    __tablename__ = "job_lease"

    name: str = Field(primary_key=True, max_length=60)
    holder: str = Field(max_length=200)
    acquired_at: datetime = utc_field()
    expires_at: datetime = utc_field()


__all__ = [
    "ChangeoverRule",
    "EquipmentCalendar",
    "JobLease",
    "ScheduleKind",
    "ScheduleRun",
    "ScheduleStatus",
    "UnavailableWindow",
    "WindowKind",
]
