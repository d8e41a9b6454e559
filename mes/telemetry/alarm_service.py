"""Alarms as people see them: the list (raised, cleared, acknowledged) and acknowledgement.

Acknowledging an alarm is a supervisor's or QA's statement that they have seen it (RELIABILITY
3.1); it is audited with the reason, in the same transaction, and does not clear the alarm -
only the value returning inside its limits does.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.errors import InvalidTransition, NotFound, StaleVersion
from mes.models import Deviation, TelemetryAlarm, WorkOrder
from mes.principal import Principal

FIELDS = ("acknowledged_by", "acknowledged_at")


async def list_alarms(
    session: AsyncSession,
    *,
    active: bool | None,
    tag: str | None,
    work_order: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Alarms, newest first, with the work order and deviation numbers they name."""
    stmt = (
        select(TelemetryAlarm, col(WorkOrder.number), col(Deviation.number))
        .outerjoin(WorkOrder, col(WorkOrder.id) == TelemetryAlarm.work_order_id)
        .outerjoin(Deviation, col(Deviation.id) == TelemetryAlarm.deviation_id)
        .order_by(col(TelemetryAlarm.raised_at).desc())
        .limit(limit)
    )
    if active is True:
        stmt = stmt.where(col(TelemetryAlarm.cleared_at).is_(None))
    elif active is False:
        stmt = stmt.where(col(TelemetryAlarm.cleared_at).is_not(None))
    if tag:
        stmt = stmt.where(TelemetryAlarm.tag == tag)
    if work_order:
        stmt = stmt.where(WorkOrder.number == work_order)
    rows = await session.execute(stmt)
    return [view(alarm, number, dev) for alarm, number, dev in rows]


def view(alarm: TelemetryAlarm, work_order: str | None, deviation: str | None) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "tag": alarm.tag,
        "level": str(alarm.level),
        "direction": alarm.direction,
        "limit": alarm.limit_value,
        "value": alarm.value,
        "peak": alarm.peak,
        "started_at": alarm.started_at,
        "raised_at": alarm.raised_at,
        "cleared_at": alarm.cleared_at,
        "active": alarm.cleared_at is None,
        "work_order": work_order,
        "parameter": alarm.parameter,
        "deviation": deviation,
        "acknowledged_by": alarm.acknowledged_by,
        "acknowledged_at": alarm.acknowledged_at,
        "version": alarm.version,
    }


async def acknowledge(
    session: AsyncSession,
    principal: Principal,
    alarm_id: uuid.UUID,
    version: int,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    """Record who has seen the alarm (409 if someone already has; 412 on a stale version)."""
    alarm = await session.get(TelemetryAlarm, alarm_id, with_for_update=True)
    if alarm is None:
        raise NotFound(f"no alarm {alarm_id}", field="alarm_id")
    if alarm.version != version:
        raise StaleVersion(
            f"alarm is at version {alarm.version}, not {version}; reload and retry",
            headers={"ETag": f'"{alarm.version}"'},
            current_version=alarm.version,
        )
    if alarm.acknowledged_by is not None:
        raise InvalidTransition(
            f"alarm already acknowledged by {alarm.acknowledged_by}",
            current_state="acknowledged",
        )
    before = {"acknowledged_by": None, "acknowledged_at": None}
    alarm.acknowledged_by = principal.username
    alarm.acknowledged_at = now
    alarm.version += 1
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="acknowledge",
        entity_type="alarm",
        entity_id=alarm.id,
        entity_version=alarm.version,
        old=before,
        new={"acknowledged_by": alarm.acknowledged_by, "acknowledged_at": now.isoformat()},
        fields=FIELDS,
        reason=reason,
    )
    work_order = await session.get(WorkOrder, alarm.work_order_id) if alarm.work_order_id else None
    deviation = await session.get(Deviation, alarm.deviation_id) if alarm.deviation_id else None
    return view(
        alarm,
        work_order.number if work_order else None,
        deviation.number if deviation else None,
    )
