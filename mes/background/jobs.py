"""The background jobs: an explicit registry, run by ``BackgroundRunner`` in the one process of
a deployment that holds the lease.

Every job is stateless and idempotent: each run reads from the database what needs doing now,
so a missed run, a doubled run or a new lease holder after a restart loses nothing (APScheduler
keeps its jobs in memory only). Each job is a boundary (ARCHITECTURE 2.3): it opens its own
sessions and commits, one transaction per order or unit, so one that cannot be moved does not
hold back the others; those are logged, and the run reports them by raising ``JobIncomplete``
once the rest is done. Changes are audited as ``system:background``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Exists, exists, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

import mes.scheduling.service
import mes.work.dispatch  # noqa: F401  (registers the status listeners equipment changes call)
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import MesError
from mes.models import (
    Equipment,
    EquipmentLevel,
    EquipmentStatus,
    Operation,
    OperationStatus,
    WorkOrder,
    WorkOrderStatus,
)
from mes.principal import system_principal
from mes.settings import MesSettings
from mes.telemetry import rollup
from mes.work import orders, rules

log = logging.getLogger(__name__)

PRINCIPAL = system_principal("background")


class JobIncomplete(Exception):
    """Some items of a run could not be done (each logged); the others were."""


def _always(_settings: MesSettings) -> bool:
    return True


@dataclass(frozen=True)
class JobSpec:
    """One periodic job: its name (the APScheduler job id, the key in health), how often it
    runs (fixed, or read from the settings), what it runs and whether this deployment runs
    it at all."""

    name: str
    every: timedelta | Callable[[MesSettings], timedelta]
    func: Callable[[AppContext], Awaitable[Any]]
    enabled: Callable[[MesSettings], bool] = _always

    def interval(self, settings: MesSettings) -> timedelta:
        every = self.every if isinstance(self.every, timedelta) else self.every(settings)
        if every <= timedelta(0):
            raise ValueError(f"background job {self.name} needs a positive interval")
        return every


def when(moment: datetime) -> str:
    """A date as an audit reason names it: UTC, to the minute."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --- release-due-orders ----------------------------------------------------------------------


def _has_operation(status: OperationStatus) -> Exists:
    return exists().where(
        col(Operation.work_order_id) == WorkOrder.id, col(Operation.status) == status
    )


def _due_orders(now: datetime) -> SelectOfScalar[str]:
    """Released orders whose release date has come and whose work has not been made ready
    (WO-REL): some operation waits and none is ready."""
    return (
        select(WorkOrder.number)
        .where(
            WorkOrder.status == WorkOrderStatus.released,
            col(WorkOrder.release_at).is_not(None),
            col(WorkOrder.release_at) <= now,
            _has_operation(OperationStatus.waiting),
            ~_has_operation(OperationStatus.ready),
        )
        .order_by(col(WorkOrder.release_at), col(WorkOrder.number))
    )


async def _make_ready(ctx: AppContext, session: AsyncSession, number: str, now: datetime) -> bool:
    """WO-REL: the first operation not yet done goes waiting -> ready, the release date as the
    reason (what ``orders.advance`` does at release for an order due at once)."""
    order = await orders.get(session, number, lock=True)
    release_at = order.release_at
    if (
        WorkOrderStatus(order.status) != WorkOrderStatus.released
        or release_at is None
        or release_at > now
    ):
        return False  # changed since it was found: cancelled, started or moved
    for op in await orders.operations_of(session, order, lock=True):
        status = OperationStatus(op.status)
        spec = orders.op_spec(order, op.seq)
        if rules.operation_done(status, bool(spec.get("requires_verification"))):
            continue
        if status != OperationStatus.waiting:
            return False
        reason = f"release date {when(release_at)} reached (WO-REL)"
        await orders.set_operation_status(ctx, session, PRINCIPAL, op, order, "ready", reason)
        return True
    return False


async def _each_in_own_transaction(
    ctx: AppContext,
    query: SelectOfScalar[str],
    act: Callable[[AsyncSession, str], Awaitable[bool]],
    *,
    done: str,
    refused: str,
) -> list[str]:
    """``act`` on each key the query finds, each in its own transaction so one refusal stops
    nothing else; the keys acted on. Refusals are logged and the job reported incomplete."""
    async with ctx.db.sessionmaker() as session:
        keys = list((await session.execute(query)).scalars())
    acted: list[str] = []
    failed: dict[str, str] = {}
    for key in keys:
        try:
            async with ctx.db.sessionmaker() as session, session.begin():
                if await act(session, key):
                    acted.append(key)
        except MesError as exc:
            log.warning("%s: %s: %s", refused, key, exc)
            failed[key] = exc.detail
    if acted:
        log.info("%s: %s", done, ", ".join(acted))
    if failed:
        raise JobIncomplete(
            f"{refused}: " + "; ".join(f"{k}: {d}" for k, d in sorted(failed.items()))
        )
    return acted


async def release_due_orders(ctx: AppContext) -> dict[str, Any]:
    """WO-REL: an order released ahead of its release date keeps its first operation waiting;
    once the date has come this makes it ready, so the order enters its work center's queue."""
    now = ctx.clock.now()
    advanced = await _each_in_own_transaction(
        ctx,
        _due_orders(now),
        lambda session, number: _make_ready(ctx, session, number, now),
        done="release date reached, made ready",
        refused="not made ready",
    )
    return {"advanced": advanced}


# --- equipment-due-check ---------------------------------------------------------------------


def passed_dates(eq: Equipment, now: datetime) -> list[str]:
    """PROC-3: the calibration, maintenance and qualification dates of a unit that have
    passed, as the reason names them (the same dates ``rules.usability_problems`` judges)."""
    dates = (
        ("calibration due", eq.calibration_due_at),
        ("maintenance due", eq.maintenance_due_at),
        ("qualified until", eq.qualified_until),
    )
    return [f"{label} {when(at)}" for label, at in dates if at is not None and at <= now]


def _overdue_idle_units(now: datetime) -> SelectOfScalar[str]:
    return (
        select(Equipment.code)
        .where(
            Equipment.level == EquipmentLevel.unit,
            Equipment.status == EquipmentStatus.idle,
            col(Equipment.is_active).is_(True),
            or_(
                col(Equipment.calibration_due_at) <= now,
                col(Equipment.maintenance_due_at) <= now,
                col(Equipment.qualified_until) <= now,
            ),
        )
        .order_by(col(Equipment.code))
    )


async def _take_out_of_use(
    ctx: AppContext, session: AsyncSession, code: str, now: datetime
) -> bool:
    unit = await equipment.get(session, code, lock=True)
    passed = passed_dates(unit, now)
    if unit.status != EquipmentStatus.idle or not unit.is_active or not passed:
        return False  # started, taken out of use or given new dates since it was found
    reason = f"{', '.join(passed)} passed: out of use until done (PROC-3)"
    await equipment.change_status(
        ctx, session, PRINCIPAL, unit.code, EquipmentStatus.maintenance, reason, None
    )
    return True


async def equipment_due_check(ctx: AppContext) -> dict[str, Any]:
    """PROC-3: an idle unit whose calibration or maintenance is due, or whose qualification
    has expired, goes to ``maintenance``: nobody starts work on it, the scheduler counts it
    unavailable and its planned operations are marked for rescheduling. A running unit is
    left to finish its operation and is taken at a check after it is idle again."""
    now = ctx.clock.now()
    moved = await _each_in_own_transaction(
        ctx,
        _overdue_idle_units(now),
        lambda session, code: _take_out_of_use(ctx, session, code, now),
        done="past a due date, moved to maintenance",
        refused="not moved to maintenance",
    )
    return {"maintenance": moved}


# --- telemetry-rollup ------------------------------------------------------------------------


async def telemetry_rollup(ctx: AppContext) -> dict[str, Any]:
    """The hourly aggregates of the last ``rollup.LOOKBACK`` recomputed, then raw-value
    retention (older hours stored late are rolled up by the ingest that stored them)."""
    return await rollup.roll_up_recent(ctx.db, ctx.clock)


# --- scheduling ------------------------------------------------------------------------------


async def periodic_schedule(ctx: AppContext) -> None:
    """A full scheduling run every ``schedule_every``."""
    # Imported at the first run: scheduling brings the solver (OR-Tools) into the process,
    # which a process that never runs this job does not need to load.
    from mes.scheduling import jobs as scheduling

    await scheduling.periodic_schedule(ctx)


async def late_operations(ctx: AppContext) -> None:
    """Operations later than ``schedule_late_after`` against the published plan ask for a
    repair run."""
    from mes.scheduling import jobs as scheduling

    await scheduling.check_late_operations(ctx)


def _schedule_every(settings: MesSettings) -> timedelta:
    if settings.schedule_every is None:
        raise ValueError("periodic-schedule runs only when schedule_every is set")
    return settings.schedule_every


JOBS: tuple[JobSpec, ...] = (
    JobSpec("release-due-orders", timedelta(seconds=60), release_due_orders),
    JobSpec("equipment-due-check", timedelta(seconds=300), equipment_due_check),
    JobSpec("telemetry-rollup", timedelta(seconds=60), telemetry_rollup),
    JobSpec(
        "periodic-schedule",
        _schedule_every,
        periodic_schedule,
        enabled=lambda settings: settings.schedule_every is not None,
    ),
    JobSpec("late-operations", timedelta(seconds=60), late_operations),
)
"""Every background job, in the order health lists them."""
