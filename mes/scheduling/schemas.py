"""Requests and answers of the scheduling API (API.md, Schedules)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from mes.clock import UtcDateTime
from mes.lot.schemas import Reason
from mes.models.scheduling import ScheduleKind, ScheduleStatus
from mes.scheduling.problem import Objective
from mes.schemas import InputModel

OrderNumber = Annotated[str, Field(min_length=1, max_length=40)]


class ScheduleCreate(InputModel):
    """Start a scheduling run of the released and in-progress work orders (or ``work_orders``)."""

    horizon_start: UtcDateTime | None = Field(
        default=None, description="Earliest start of any operation; default now."
    )
    time_limit_s: Annotated[int, Field(ge=1, le=600)] = 30
    objective: Objective = Objective.makespan
    makespan_weight: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=1,
        description="mixed: weight of a minute of makespan against a minute of "
        "priority-weighted tardiness.",
    )
    work_orders: Annotated[list[OrderNumber], Field(max_length=2000)] | None = None
    reason: Reason = "scheduling run"


class PublishRequest(InputModel):
    reason: Reason = "schedule published"


class AssignmentPublic(BaseModel):
    operation_id: uuid.UUID
    work_order: str
    seq: int
    operation: str
    equipment_code: str
    start: datetime
    end: datetime
    changeover_min: int
    fixed: bool


class WorkOrderProblem(BaseModel):
    work_order: str
    seq: int | None
    reason: str


class SchedulePublic(BaseModel):
    id: uuid.UUID
    kind: ScheduleKind
    status: ScheduleStatus
    trigger: str
    trigger_detail: str | None
    requested_by: str
    horizon_start: datetime
    time_limit_s: int
    objective: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    solver_status: str | None = Field(description="optimal, feasible, or unknown")
    method: str | None = Field(description="cp-sat, or dispatch (the dispatching-rule schedule)")
    objective_value: float | None
    bound: float | None
    gap: float | None
    makespan_min: int | None
    total_tardiness_min: int | None
    solve_s: float | None
    late_work_orders: list[str]
    problems: list[WorkOrderProblem]
    moved: int | None = Field(description="repair: operations moved against the plan repaired")
    error: str | None
    published_at: datetime | None
    published_by: str | None
    assignments: list[AssignmentPublic]
    version: int


class ScheduleSummary(BaseModel):
    id: uuid.UUID
    kind: ScheduleKind
    status: ScheduleStatus
    trigger: str
    objective: str
    created_at: datetime
    finished_at: datetime | None
    objective_value: float | None
    gap: float | None
    late_work_orders: int
    version: int


class ScheduleList(BaseModel):
    items: list[ScheduleSummary]
    next_cursor: str | None


class PublishResult(BaseModel):
    schedule: SchedulePublic
    published: int = Field(description="operations given their planned unit and times")
    skipped: list[str] = Field(description="operations that started or ended since the run")


class GanttBar(BaseModel):
    operation_id: uuid.UUID
    label: str
    work_order: str
    seq: int
    equipment_code: str
    start: datetime
    end: datetime
    changeover_min: int
    late: bool


class GanttRow(BaseModel):
    key: str
    bars: list[GanttBar]
    unavailable: list[tuple[datetime, datetime]] = Field(default_factory=list)


class Gantt(BaseModel):
    schedule_id: uuid.UUID
    by: Literal["unit", "work_order"]
    start: datetime
    end: datetime
    rows: list[GanttRow]
