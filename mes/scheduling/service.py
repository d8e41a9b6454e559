"""Scheduling runs: start one, read it, publish it, and the repair runs that breakdowns and
late operations trigger.

A run is a row that the solver runner (``mes.scheduling.runner``) of any MES process claims,
solves and fills in; the request returns at once with the run's id. Publishing copies a run's
assignments onto the operations - planned unit, start and end - in one transaction with an
audit entry per operation, which is what orders the dispatch queues.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import NotFound
from mes.models import Equipment, EquipmentStatus, Operation, OperationStatus, WorkOrder
from mes.models.scheduling import ScheduleKind, ScheduleRun, ScheduleStatus
from mes.principal import Principal, system_principal
from mes.scheduling import availability, loader
from mes.scheduling.loader import OPEN_OPERATIONS
from mes.scheduling.problem import Objective
from mes.scheduling.schemas import (
    AssignmentPublic,
    Gantt,
    GanttBar,
    GanttRow,
    ScheduleCreate,
    SchedulePublic,
    ScheduleSummary,
    WorkOrderProblem,
)

log = logging.getLogger(__name__)

# A repair is not started again while one this young is waiting or running.
REPAIR_DEBOUNCE = timedelta(seconds=30)


async def create_run(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    data: ScheduleCreate,
    *,
    kind: ScheduleKind = ScheduleKind.full,
    trigger: str = "planner",
    detail: str | None = None,
) -> ScheduleRun:
    """A queued run; the runner picks it up once the caller commits. Unknown work orders are
    a 422 naming them; orders that cannot be scheduled are reported in the run (SCH-4)."""
    if data.work_orders is not None:
        await loader.orders_to_schedule(session, data.work_orders)
    now = ctx.clock.now()
    run = ScheduleRun(
        kind=kind,
        status=ScheduleStatus.queued,
        trigger=trigger,
        trigger_detail=detail,
        requested_by=principal.username,
        horizon_start=whole_minute(data.horizon_start or now),
        time_limit_s=data.time_limit_s,
        objective=data.objective,
        request=data.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    await session.flush()
    await audit.record(
        session,
        principal,
        action="create",
        entity_type="schedule_run",
        entity_id=run.id,
        entity_version=run.version,
        changes=[
            {"field": "kind", "old": None, "new": str(kind)},
            {"field": "trigger", "old": None, "new": trigger},
            {"field": "objective", "old": None, "new": str(data.objective)},
            {"field": "time_limit_s", "old": None, "new": data.time_limit_s},
        ],
        reason=data.reason if detail is None else f"{data.reason}: {detail}"[:1000],
    )
    return run


def whole_minute(moment: datetime) -> datetime:
    """The moment, rounded up to a whole minute: the schedule's grid, so published times and a
    later run's minutes line up exactly."""
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


async def get(session: AsyncSession, run_id: uuid.UUID, *, lock: bool = False) -> ScheduleRun:
    stmt = select(ScheduleRun).where(ScheduleRun.id == run_id)
    if lock:
        stmt = stmt.with_for_update()
    run = (await session.execute(stmt)).scalars().first()
    if run is None:
        raise NotFound(f"schedule {run_id} does not exist")
    return run


async def list_runs(
    session: AsyncSession,
    *,
    status: ScheduleStatus | None,
    kind: ScheduleKind | None,
    before: uuid.UUID | None,
    limit: int,
) -> tuple[list[ScheduleRun], uuid.UUID | None]:
    """Newest first (ids are UUIDv7, so in creation order)."""
    stmt = select(ScheduleRun).order_by(col(ScheduleRun.id).desc()).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(ScheduleRun.status == status)
    if kind is not None:
        stmt = stmt.where(ScheduleRun.kind == kind)
    if before is not None:
        stmt = stmt.where(col(ScheduleRun.id) < before)
    rows = list((await session.execute(stmt)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].id if more and rows else None


def public(run: ScheduleRun) -> SchedulePublic:
    result = run.result or {}
    return SchedulePublic(
        id=run.id,
        kind=run.kind,
        status=run.status,
        trigger=run.trigger,
        trigger_detail=run.trigger_detail,
        requested_by=run.requested_by,
        horizon_start=run.horizon_start,
        time_limit_s=run.time_limit_s,
        objective=run.objective,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        solver_status=run.solver_status,
        method=run.method,
        objective_value=run.objective_value,
        bound=run.bound,
        gap=run.gap,
        makespan_min=run.makespan_min,
        total_tardiness_min=run.total_tardiness_min,
        solve_s=run.solve_s,
        late_work_orders=list(result.get("late_work_orders", [])),
        problems=[WorkOrderProblem(**p) for p in result.get("problems", [])],
        moved=result.get("moved"),
        error=run.error,
        published_at=run.published_at,
        published_by=run.published_by,
        assignments=[AssignmentPublic(**a) for a in result.get("assignments", [])],
        version=run.version,
    )


def summary(run: ScheduleRun) -> ScheduleSummary:
    return ScheduleSummary(
        id=run.id,
        kind=run.kind,
        status=run.status,
        trigger=run.trigger,
        objective=run.objective,
        created_at=run.created_at,
        finished_at=run.finished_at,
        objective_value=run.objective_value,
        gap=run.gap,
        late_work_orders=len((run.result or {}).get("late_work_orders", [])),
        version=run.version,
    )


async def request_repair(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    trigger: str,
    detail: str,
    *,
    covered_since: datetime | None = None,
) -> ScheduleRun | None:
    """A repair run over the open operations from now, keeping the published plan where the
    cause allows. None while another repair is waiting or just started (one breakdown often
    arrives as several events), or - ``covered_since`` - when a repair was already asked for
    after the cause arose (a planner may still be weighing it)."""
    now = ctx.clock.now()
    recent = await session.execute(
        select(ScheduleRun.id).where(
            ScheduleRun.kind == ScheduleKind.repair,
            col(ScheduleRun.status).in_([ScheduleStatus.queued, ScheduleStatus.running]),
            col(ScheduleRun.created_at) > now - REPAIR_DEBOUNCE,
        )
    )
    if recent.first() is not None:
        return None
    if covered_since is not None:
        covered = await session.execute(
            select(ScheduleRun.id).where(
                ScheduleRun.kind == ScheduleKind.repair,
                ScheduleRun.status != ScheduleStatus.failed,
                col(ScheduleRun.created_at) >= covered_since,
            )
        )
        if covered.first() is not None:
            return None
    last = await last_published(session)
    objective = Objective(last.objective) if last is not None else Objective.weighted_tardiness
    data = ScheduleCreate(
        horizon_start=now,
        time_limit_s=ctx.settings.schedule_repair_time_limit_s,
        objective=objective,
        makespan_weight=int((last.request if last else {}).get("makespan_weight", 1)),
        reason="repair run",
    )
    run = await create_run(
        ctx, session, principal, data, kind=ScheduleKind.repair, trigger=trigger, detail=detail
    )
    wake_after_commit(ctx, session)
    return run


def wake_after_commit(ctx: AppContext, session: AsyncSession) -> None:
    """This process's solver looks for the queued run as soon as it is committed (others find
    it at their next poll)."""
    solver = ctx.solver
    if solver is not None:
        event.listen(session.sync_session, "after_commit", lambda _: solver.wake(), once=True)


async def last_published(session: AsyncSession) -> ScheduleRun | None:
    """The schedule in force."""
    rows = await session.execute(
        select(ScheduleRun)
        .where(ScheduleRun.status == ScheduleStatus.published)
        .order_by(col(ScheduleRun.id).desc())
        .limit(1)
    )
    return rows.scalars().first()


async def _on_unit_down(
    ctx: AppContext, session: AsyncSession, principal: Principal, unit: Equipment, reason: str
) -> None:
    """An equipment "down" event, from an operator or the unit's state signal (or a unit taken
    into maintenance, as the due-date job does), asks for a repair run - when the unit had
    published work ahead of it."""
    planned = await session.execute(
        select(Operation.id)
        .where(
            Operation.planned_equipment_id == unit.id,
            col(Operation.status).in_([s.value for s in OPEN_OPERATIONS]),
        )
        .limit(1)
    )
    if planned.first() is None:
        return
    status = unit.status or "down"
    await request_repair(
        ctx, session, principal, f"equipment_{status}", f"{unit.code} {status}: {reason}"
    )


equipment.on_status_change(EquipmentStatus.down, _on_unit_down)
equipment.on_status_change(EquipmentStatus.maintenance, _on_unit_down)


async def late_operations(
    session: AsyncSession, now: datetime, late_after: timedelta
) -> list[tuple[Operation, str]]:
    """Open operations that should have started, and running ones that should have ended,
    more than ``late_after`` ago against the published plan (oldest first)."""
    cutoff = now - late_after
    rows = await session.execute(
        select(Operation, WorkOrder.number)
        .join(WorkOrder, col(WorkOrder.id) == Operation.work_order_id)
        .where(
            col(Operation.schedule_run_id).is_not(None),
            (
                col(Operation.status).in_([s.value for s in OPEN_OPERATIONS])
                & (col(Operation.planned_start) < cutoff)
            )
            | (
                (col(Operation.status) == OperationStatus.running)
                & (col(Operation.planned_end) < cutoff)
            ),
        )
        .order_by(col(Operation.planned_start))
    )
    return [(op, number) for op, number in rows.all()]


async def gantt(session: AsyncSession, run: ScheduleRun, by: str) -> Gantt:
    """The run's bars per unit (with the units' unavailable time) or per work order."""
    result = run.result or {}
    late = set(result.get("late_work_orders", []))
    bars = [
        GanttBar(
            operation_id=a["operation_id"],
            label=f"{a['work_order']}/{a['seq']} {a['operation']}",
            work_order=a["work_order"],
            seq=a["seq"],
            equipment_code=a["equipment_code"],
            start=a["start"],
            end=a["end"],
            changeover_min=a["changeover_min"],
            late=a["work_order"] in late,
        )
        for a in result.get("assignments", [])
    ]
    start = min((b.start for b in bars), default=run.horizon_start)
    end = max((b.end for b in bars), default=run.horizon_start)
    rows: dict[str, list[GanttBar]] = {}
    for bar in bars:
        rows.setdefault(bar.equipment_code if by == "unit" else bar.work_order, []).append(bar)
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    if by == "unit" and rows:
        spans = await availability.unavailable_intervals(session, sorted(rows), start, end)
    return Gantt(
        schedule_id=run.id,
        by="unit" if by == "unit" else "work_order",
        start=start,
        end=end,
        rows=[
            GanttRow(
                key=key, bars=sorted(items, key=lambda b: b.start), unavailable=spans.get(key, [])
            )
            for key, items in sorted(rows.items())
        ],
    )


async def mark_stale(ctx: AppContext, session: AsyncSession) -> int:
    """Runs left running by a process that died: failed, so nobody waits on them."""
    now = ctx.clock.now()
    rows = await session.execute(
        select(ScheduleRun).where(ScheduleRun.status == ScheduleStatus.running)
    )
    count = 0
    for run in rows.scalars():
        started = run.started_at or run.created_at
        if started + timedelta(seconds=run.time_limit_s * 2 + 120) < now:
            await session.execute(
                update(ScheduleRun)
                .where(
                    col(ScheduleRun.id) == run.id,
                    col(ScheduleRun.status) == ScheduleStatus.running,
                )
                .values(
                    status=ScheduleStatus.failed,
                    error="the process running it stopped before it finished",
                    finished_at=now,
                    version=run.version + 1,
                    updated_at=now,
                )
            )
            count += 1
    return count


def scheduler_principal() -> Principal:
    return system_principal("scheduler")
