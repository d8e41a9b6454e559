"""Dispatch queues of work centers and rescheduling when a unit goes down."""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.models import Equipment, EquipmentStatus, Operation, OperationStatus, WorkOrder
from mes.principal import Principal
from mes.records import bump_version
from mes.work.execution import ACTIVE_ORDER

_QUEUE = (
    select(Operation, WorkOrder)
    .join(WorkOrder, col(WorkOrder.id) == Operation.work_order_id)
    .where(
        col(Operation.work_center_id) == bindparam("work_center_id"),
        Operation.status == OperationStatus.ready,
        col(WorkOrder.status).in_(sorted(s.value for s in ACTIVE_ORDER)),
    )
    .order_by(
        col(Operation.planned_start).is_(None),
        col(Operation.planned_start),
        col(WorkOrder.priority),
        col(WorkOrder.due_at).is_(None),
        col(WorkOrder.due_at),
        col(WorkOrder.number),
        col(Operation.seq),
    )
)


async def queue(session: AsyncSession, work_center_code: str) -> list[tuple[Operation, WorkOrder]]:
    """Ready operations of a work center: by planned start, then priority, then due date."""
    wc = await equipment.get(session, work_center_code)
    rows = await session.execute(_QUEUE, {"work_center_id": wc.id})
    return [(op, order) for op, order in rows.all()]


async def mark_for_reschedule(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    unit: Equipment,
    reason: str,
) -> int:
    """A unit went down: its scheduled operations that have not started need a new slot."""
    stmt = (
        select(Operation)
        .where(
            Operation.equipment_id == unit.id,
            col(Operation.status).in_([OperationStatus.waiting, OperationStatus.ready]),
            col(Operation.needs_reschedule).is_(False),
        )
        .with_for_update()
    )
    count = 0
    now = ctx.clock.now()
    for op in (await session.execute(stmt)).scalars():
        op.needs_reschedule = True
        op.reschedule_reason = f"{unit.code} down: {reason}"[:1000]
        bump_version(op, now)
        session.add(op)
        await audit.record(
            session,
            principal,
            action="needs_reschedule",
            entity_type="operation",
            entity_id=op.id,
            entity_version=op.version,
            changes=[{"field": "needs_reschedule", "old": False, "new": True}],
            reason=op.reschedule_reason,
        )
        count += 1
    return count


equipment.on_status_change(EquipmentStatus.down, mark_for_reschedule)
equipment.on_status_change(EquipmentStatus.maintenance, mark_for_reschedule)
