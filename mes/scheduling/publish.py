"""Publishing a scheduling run: its assignments become the operations' planned unit, start
and end - in one transaction with an audit entry per operation - which is what orders the
dispatch queues; the run published before is superseded."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import InvalidTransition
from mes.models import Equipment, Operation, OperationStatus
from mes.models.scheduling import ScheduleRun, ScheduleStatus
from mes.principal import Principal
from mes.records import bump_version, check_version
from mes.scheduling.loader import OPEN_OPERATIONS
from mes.scheduling.service import get

RUN_FIELDS = ("status", "published_at", "published_by")


async def publish(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    run_id: uuid.UUID,
    expected_version: int | None,
    reason: str,
) -> tuple[ScheduleRun, int, list[str]]:
    """solved -> published: every operation the run planned that is still waiting or ready
    gets its unit, start and end (audited each); the run published before becomes
    superseded. Operations that started or ended since the run are skipped and named."""
    run = await get(session, run_id, lock=True)
    check_version(run, expected_version, f"schedule {run.id}")
    if ScheduleStatus(run.status) != ScheduleStatus.solved:
        raise InvalidTransition(
            f"schedule {run.id} is {run.status}; only a solved schedule can be published",
            current_status=str(run.status),
        )
    now = ctx.clock.now()
    assignments = [a for a in run.result.get("assignments", []) if not a.get("fixed")]
    ops, units = await _targets(session, assignments)
    published = 0
    skipped: list[str] = []
    for a in assignments:
        op = ops.get(uuid.UUID(str(a["operation_id"])))
        if op is None or OperationStatus(op.status) not in OPEN_OPERATIONS:
            skipped.append(f"{a['work_order']}/{a['seq']}")
            continue
        await _plan(session, principal, run, op, a, units[a["equipment_code"]], reason, now)
        published += 1
    await _supersede_published(ctx, session, principal, run, now)
    old = {"status": run.status, "published_at": None, "published_by": None}
    run.status = ScheduleStatus.published
    run.published_at = now
    run.published_by = principal.username
    bump_version(run, now)
    session.add(run)
    await audit.record_change(
        session,
        principal,
        action="publish",
        entity_type="schedule_run",
        entity_id=run.id,
        entity_version=run.version,
        old=old,
        new={"status": run.status, "published_at": now, "published_by": principal.username},
        fields=RUN_FIELDS,
        reason=reason,
    )
    return run, published, skipped


async def _targets(
    session: AsyncSession, assignments: list[dict[str, Any]]
) -> tuple[dict[uuid.UUID, Operation], dict[str, uuid.UUID]]:
    """The operations the assignments plan (locked) and the ids of their units."""
    ids = [uuid.UUID(str(a["operation_id"])) for a in assignments]
    rows = await session.execute(
        select(Operation).where(col(Operation.id).in_(ids)).with_for_update()
    )
    codes = {a["equipment_code"] for a in assignments}
    units = await session.execute(select(Equipment).where(col(Equipment.code).in_(codes)))
    return {op.id: op for op in rows.scalars()}, {u.code: u.id for u in units.scalars()}


async def _plan(
    session: AsyncSession,
    principal: Principal,
    run: ScheduleRun,
    op: Operation,
    assignment: dict[str, Any],
    unit_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> None:
    """One operation gets its planned unit, start and end from the run (audited)."""
    start = _as_datetime(assignment["start"])
    end = _as_datetime(assignment["end"])
    changes = _changes(op, unit_id, start, end, assignment["equipment_code"])
    op.planned_start, op.planned_end = start, end
    op.planned_equipment_id = unit_id
    op.schedule_run_id = run.id
    op.needs_reschedule = False
    op.reschedule_reason = None
    bump_version(op, now)
    session.add(op)
    await audit.record(
        session,
        principal,
        action="plan",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=changes or [{"field": "schedule_run_id", "old": None, "new": str(run.id)}],
        reason=f"{reason} (schedule {run.id})"[:1000],
    )


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _changes(
    op: Operation, unit_id: uuid.UUID, start: datetime, end: datetime, unit_code: str
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if op.planned_equipment_id != unit_id:
        out.append({"field": "planned_equipment", "old": op.planned_equipment_id, "new": unit_code})
    if op.planned_start != start:
        out.append({"field": "planned_start", "old": op.planned_start, "new": start})
    if op.planned_end != end:
        out.append({"field": "planned_end", "old": op.planned_end, "new": end})
    return out


async def _supersede_published(
    ctx: AppContext, session: AsyncSession, principal: Principal, run: ScheduleRun, now: datetime
) -> None:
    rows = await session.execute(
        select(ScheduleRun)
        .where(ScheduleRun.status == ScheduleStatus.published, ScheduleRun.id != run.id)
        .with_for_update()
    )
    for old in rows.scalars():
        old.status = ScheduleStatus.superseded
        bump_version(old, now)
        session.add(old)
        await audit.record(
            session,
            principal,
            action="supersede",
            entity_type="schedule_run",
            entity_id=old.id,
            entity_version=old.version,
            changes=[{"field": "status", "old": "published", "new": "superseded"}],
            reason=f"schedule {run.id} published",
        )
