"""The scheduling problem read from the database at a horizon start.

Minutes count from the horizon start. What goes in:

* operations of released and in-progress work orders that are not done; the running, paused
  and held ones are fixed on their unit until their expected end (SCH-5), as are published
  ones starting inside the firm horizon whose earlier operations are fixed or done;
* per operation its eligible units with setup + quantity x rate + fixed minutes, its
  changeover family and cleaning, transfer lag and overlap (the order's frozen work master);
* per unit its calendar and windows (SCH-3), its changeover matrix (SCH-2), and its status:
  a unit down or in maintenance is unavailable until the end of the breakdown or maintenance
  window covering now, else over the whole horizon; a unit whose calibration, maintenance or
  qualification falls due is unavailable from then on (PROC-3).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.errors import InvalidInput
from mes.models import (
    Equipment,
    EquipmentStatus,
    Operation,
    OperationExecution,
    OperationStatus,
    WorkOrder,
    WorkOrderStatus,
)
from mes.models.scheduling import UnavailableWindow, WindowKind
from mes.scheduling import availability, changeovers
from mes.scheduling.problem import Job, Objective, Previous, Problem, Task, weight_of_priority
from mes.scheduling.rules import JobProblem, start_after, subtract
from mes.work import execution
from mes.work.orders import op_spec

SCHEDULED_ORDERS = (WorkOrderStatus.released, WorkOrderStatus.in_progress)
OPEN_OPERATIONS = (OperationStatus.waiting, OperationStatus.ready)
OCCUPYING = (OperationStatus.running, OperationStatus.paused, OperationStatus.held)
# How far ahead calendars and windows are read; an operation beyond it is not planned.
WINDOW = timedelta(days=120)


@dataclass
class Loaded:
    """The problem, and what the service needs to turn its answer back into rows."""

    problem: Problem
    horizon_start: datetime
    operations: dict[str, Operation] = field(default_factory=dict)
    orders: dict[str, WorkOrder] = field(default_factory=dict)
    unit_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    problems: list[JobProblem] = field(default_factory=list)


def minutes_from(origin: datetime, moment: datetime) -> int:
    return math.floor((moment - origin).total_seconds() / 60)


def minutes_until(origin: datetime, moment: datetime) -> int:
    return math.ceil((moment - origin).total_seconds() / 60)


def duration_min(spec: dict[str, Any], quantity: Decimal, unit: str | None = None) -> int:
    """setup + quantity x rate (the unit's own rate where the work master gives one) + fixed,
    in whole minutes (at least one)."""
    rate = (spec.get("unit_run_min_per_unit") or {}).get(unit, spec.get("run_min_per_unit"))
    total = (
        Decimal(str(spec.get("setup_min") or 0))
        + quantity * Decimal(str(rate or 0))
        + Decimal(str(spec.get("fixed_min") or 0))
    )
    return max(1, math.ceil(total))


async def load(
    session: AsyncSession,
    *,
    horizon_start: datetime,
    firm: timedelta,
    objective: Objective,
    makespan_weight: int = 1,
    work_orders: list[str] | None = None,
    with_previous: bool = False,
) -> Loaded:
    orders, problems = await orders_to_schedule(session, work_orders)
    loaded = Loaded(Problem(jobs=[], units=[], objective=objective), horizon_start)
    loaded.problems.extend(problems)
    units: dict[str, Equipment] = {}
    raw = await _open_operations(session, orders, units)
    end = horizon_start + WINDOW
    codes = sorted(units)
    loaded.unit_ids = {c: units[c].id for c in codes}
    unavailable = await _unavailable(session, units, horizon_start, end)
    executions = await _executions(session, [op for _, entries in raw for op, _, _ in entries])
    code_of = {u.id: code for code, u in units.items()}
    running = _running_all(horizon_start, raw, executions, code_of)
    # The unit is busy with a running operation whatever its calendar says.
    occupied: dict[str, list[tuple[int, int]]] = {c: [] for c in codes}
    for unit_code, busy_from, busy_to in running.values():
        occupied[unit_code].append((busy_from, busy_to))
        unavailable[unit_code] = subtract(unavailable[unit_code], (busy_from, busy_to))
    jobs: list[Job] = []
    for order, entries in raw:
        job = _job(loaded, order, entries, running, occupied, unavailable, code_of, firm)
        if job is not None:
            jobs.append(job)
        loaded.orders[order.number] = order
    problem = Problem(
        jobs=jobs,
        units=codes,
        unavailable=unavailable,
        changeovers=await changeovers.changeover_matrix(session, codes),
        objective=objective,
        makespan_weight=makespan_weight,
    )
    if with_previous:
        problem.previous = _previous(loaded, units)
    loaded.problem = problem
    return loaded


Entries = list[tuple[Operation, dict[str, int], dict[str, Any]]]
"""An order's operations to schedule: (operation, minutes per eligible unit, its spec)."""


async def _open_operations(
    session: AsyncSession, orders: list[WorkOrder], units: dict[str, Equipment]
) -> list[tuple[WorkOrder, Entries]]:
    """Per order, its operations still to run or running, each with its duration on every
    active eligible unit; those units are collected into ``units``."""
    raw: list[tuple[WorkOrder, Entries]] = []
    for order in orders:
        ops = (
            await session.execute(
                select(Operation)
                .where(Operation.work_order_id == order.id)
                .order_by(col(Operation.seq))
            )
        ).scalars()
        entries: Entries = []
        for op in ops:
            status = OperationStatus(op.status)
            if status not in OPEN_OPERATIONS and status not in OCCUPYING:
                continue
            spec = op_spec(order, op.seq)
            eligible = [
                u for u in await execution.eligible_units(session, order, op) if u.is_active
            ]
            for unit in eligible:
                units[unit.code] = unit
            durations = {u.code: duration_min(spec, order.quantity, u.code) for u in eligible}
            entries.append((op, durations, spec))
        if entries:
            raw.append((order, entries))
    return raw


def _running_all(
    horizon_start: datetime,
    raw: list[tuple[WorkOrder, Entries]],
    executions: dict[uuid.UUID, OperationExecution],
    code_of: dict[uuid.UUID, str],
) -> dict[uuid.UUID, tuple[str, int, int]]:
    """The running operations, each held on its unit: operation id -> (unit, from, to)."""
    running: dict[uuid.UUID, tuple[str, int, int]] = {}
    for order, entries in raw:
        for op, durations, spec in entries:
            if OperationStatus(op.status) in OCCUPYING:
                fixed = _running(horizon_start, op, executions, code_of, durations, spec, order)
                if fixed is not None:
                    running[op.id] = fixed
    return running


async def orders_to_schedule(
    session: AsyncSession, numbers: list[str] | None
) -> tuple[list[WorkOrder], list[JobProblem]]:
    """The released and in-progress orders (of ``numbers``, reporting the others with the
    reason, SCH-4); an unknown number is a 422 naming it."""
    stmt = select(WorkOrder).order_by(col(WorkOrder.number))
    if numbers is None:
        stmt = stmt.where(col(WorkOrder.status).in_([s.value for s in SCHEDULED_ORDERS]))
        return list((await session.execute(stmt)).scalars()), []
    wanted = list(dict.fromkeys(numbers))
    found = list((await session.execute(stmt.where(col(WorkOrder.number).in_(wanted)))).scalars())
    missing = sorted(set(wanted) - {o.number for o in found})
    if missing:
        raise InvalidInput(f"unknown work orders: {', '.join(missing)}", field="work_orders")
    kept = [o for o in found if WorkOrderStatus(o.status) in SCHEDULED_ORDERS]
    problems = [
        JobProblem(
            o.number,
            None,
            f"work order is {o.status}; only released and in-progress orders are scheduled (SCH-4)",
        )
        for o in found
        if WorkOrderStatus(o.status) not in SCHEDULED_ORDERS
    ]
    return kept, problems


async def _executions(
    session: AsyncSession, ops: list[Operation]
) -> dict[uuid.UUID, OperationExecution]:
    ids = [op.execution_id for op in ops if op.execution_id is not None]
    if not ids:
        return {}
    rows = await session.execute(
        select(OperationExecution).where(col(OperationExecution.id).in_(ids))
    )
    return {e.id: e for e in rows.scalars()}


async def _unavailable(
    session: AsyncSession, units: dict[str, Equipment], start: datetime, end: datetime
) -> dict[str, list[tuple[int, int]]]:
    """Calendar and windows (SCH-3), a unit's status now, and its due dates (PROC-3)."""
    spans = await availability.unavailable_intervals(session, sorted(units), start, end)
    horizon = minutes_until(start, end)
    out: dict[str, list[tuple[int, int]]] = {}
    for code, unit in units.items():
        mine = [
            (max(0, minutes_from(start, s)), minutes_until(start, e))
            for s, e in spans.get(code, [])
        ]
        status = EquipmentStatus(unit.status) if unit.status else None
        if status in (EquipmentStatus.down, EquipmentStatus.maintenance):
            back = await _back_at(session, unit, start)
            mine.append((0, horizon if back is None else max(1, minutes_until(start, back))))
        due = [
            d for d in (unit.calibration_due_at, unit.maintenance_due_at, unit.qualified_until) if d
        ]
        if due:
            first = min(due)
            mine.append((max(0, minutes_from(start, first)), horizon))
        out[code] = sorted((s, e) for s, e in mine if e > s)
    return out


async def _back_at(session: AsyncSession, unit: Equipment, now: datetime) -> datetime | None:
    """The end of the breakdown or maintenance window covering ``now``: when the unit is
    expected back. None: not known."""
    rows = await session.execute(
        select(UnavailableWindow.end).where(
            UnavailableWindow.equipment_id == unit.id,
            col(UnavailableWindow.cancelled).is_(False),
            col(UnavailableWindow.kind).in_([WindowKind.breakdown, WindowKind.maintenance]),
            col(UnavailableWindow.start) <= now,
            col(UnavailableWindow.end) > now,
        )
    )
    ends = list(rows.scalars())
    return max(ends) if ends else None


def _job(
    loaded: Loaded,
    order: WorkOrder,
    entries: Entries,
    running: dict[uuid.UUID, tuple[str, int, int]],
    occupied: dict[str, list[tuple[int, int]]],
    unavailable: dict[str, list[tuple[int, int]]],
    code_of: dict[uuid.UUID, str],
    firm: timedelta,
) -> Job | None:
    origin = loaded.horizon_start
    release = max(0, minutes_until(origin, order.release_at)) if order.release_at else 0
    tasks: list[Task] = []
    all_fixed = True
    for op, durations, spec in entries:
        fixed = running.get(op.id)
        if fixed is None and all_fixed and not op.needs_reschedule:
            fixed = _frozen(origin, op, code_of, firm)
            if fixed is not None and not _frozen_fits(fixed, tasks, occupied, unavailable):
                fixed = None
            if fixed is not None:
                occupied[fixed[0]].append(fixed[1:])
        all_fixed = all_fixed and fixed is not None
        loaded.operations[str(op.id)] = op
        if fixed is None and not durations:
            loaded.problems.append(
                JobProblem(
                    order.number,
                    op.seq,
                    f"operation {op.seq} ({op.name}) has no eligible active unit (SCH-4)",
                )
            )
            return None
        tasks.append(
            Task(
                key=str(op.id),
                job=order.number,
                seq=op.seq,
                name=op.name,
                durations=durations,
                family=spec.get("changeover_family"),
                cleaning_min=math.ceil(Decimal(str(spec.get("cleaning_min") or 0))),
                lag_min=math.ceil(Decimal(str(spec.get("transfer_lag_min") or 0))),
                overlap_pct=int(Decimal(str(spec.get("overlap_pct") or 0))),
                fixed=fixed,
            )
        )
    due = minutes_from(origin, order.due_at) if order.due_at else None
    return Job(
        key=order.number,
        tasks=tuple(tasks),
        release=release,
        due=due,
        weight=weight_of_priority(order.priority),
    )


def _frozen_fits(
    fixed: tuple[str, int, int],
    before: list[Task],
    occupied: dict[str, list[tuple[int, int]]],
    unavailable: dict[str, list[tuple[int, int]]],
) -> bool:
    """A published slot is kept only while it still works: its unit free then (no breakdown,
    no overrunning operation) and its predecessor done by then (SCH-5)."""
    unit, start, end = fixed
    for s, e in (*occupied.get(unit, []), *unavailable.get(unit, [])):
        if s < end and start < e:
            return False
    if before and before[-1].fixed is not None:
        _, p_start, p_end = before[-1].fixed
        if start < start_after(before[-1], p_start, p_end) or end < p_end + before[-1].lag_min:
            return False
    return True


def _running(
    origin: datetime,
    op: Operation,
    executions: dict[uuid.UUID, OperationExecution],
    code_of: dict[uuid.UUID, str],
    durations: dict[str, int],
    spec: dict[str, Any],
    order: WorkOrder,
) -> tuple[str, int, int] | None:
    """A running (paused, held) operation holds its unit until its expected end, and at least
    a minute from now (SCH-5)."""
    ex = executions.get(op.execution_id) if op.execution_id else None
    if ex is None or ex.equipment_id not in code_of:
        return None
    unit = code_of[ex.equipment_id]
    expected = durations.get(unit) or duration_min(spec, order.quantity, unit)
    started = minutes_from(origin, ex.started_at) + math.ceil(ex.paused_min)
    start = max(0, started)
    end = max(start + 1, started + expected, 1)
    return unit, start, end


def _frozen(
    origin: datetime, op: Operation, code_of: dict[uuid.UUID, str], firm: timedelta
) -> tuple[str, int, int] | None:
    """A published operation starting inside the firm horizon keeps its slot (SCH-5)."""
    if op.planned_start is None or op.planned_end is None or op.planned_equipment_id is None:
        return None
    if op.planned_equipment_id not in code_of:
        return None
    if not origin <= op.planned_start < origin + firm:
        return None
    return (
        code_of[op.planned_equipment_id],
        minutes_from(origin, op.planned_start),
        minutes_until(origin, op.planned_end),
    )


def _previous(loaded: Loaded, units: dict[str, Equipment]) -> dict[str, Previous]:
    """Where the published schedule had each open operation (what a repair keeps)."""
    code_of = {u.id: code for code, u in units.items()}
    out: dict[str, Previous] = {}
    for key, op in loaded.operations.items():
        if op.planned_start is None or op.planned_end is None or op.planned_equipment_id is None:
            continue
        unit = code_of.get(op.planned_equipment_id)
        if unit is None:
            continue
        out[key] = Previous(
            unit,
            minutes_from(loaded.horizon_start, op.planned_start),
            minutes_until(loaded.horizon_start, op.planned_end),
        )
    return out
