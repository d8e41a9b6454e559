"""Scheduling's periodic jobs (registered in ``mes.background.jobs``): a full scheduling run
every ``schedule_every``, and a repair run when operations fall late against the published
plan."""

from __future__ import annotations

import logging

from mes.context import AppContext
from mes.models.scheduling import ScheduleKind
from mes.scheduling import service
from mes.scheduling.problem import Objective
from mes.scheduling.schemas import ScheduleCreate

log = logging.getLogger(__name__)

PERIODIC_TIME_LIMIT_S = 60


async def periodic_schedule(ctx: AppContext) -> None:
    """Queue a full run from now with the objective of the schedule in force; published only
    where the policy says so (``schedule_auto_publish_repairs``)."""
    async with ctx.db.sessionmaker() as session:
        last = await service.last_published(session)
        data = ScheduleCreate(
            horizon_start=ctx.clock.now(),
            time_limit_s=int(last.time_limit_s) if last else PERIODIC_TIME_LIMIT_S,
            objective=Objective(last.objective) if last else Objective.weighted_tardiness,
            makespan_weight=int((last.request if last else {}).get("makespan_weight", 1)),
            reason="periodic scheduling run",
        )
        run = await service.create_run(
            ctx,
            session,
            service.scheduler_principal(),
            data,
            kind=ScheduleKind.full,
            trigger="periodic",
        )
        service.wake_after_commit(ctx, session)
        await session.commit()
    log.info("periodic scheduling run %s queued", run.id)


async def check_late_operations(ctx: AppContext) -> None:
    """Operations late by more than ``schedule_late_after`` against the published plan ask for
    a repair run (one at a time)."""
    now = ctx.clock.now()
    async with ctx.db.sessionmaker() as session:
        late = await service.late_operations(session, now, ctx.settings.schedule_late_after)
        if not late:
            return
        late_after = ctx.settings.schedule_late_after
        # The moment the newest of them fell late: a repair asked for since covers it.
        since = (
            max(
                (op.planned_end if op.status == "running" else op.planned_start) or now
                for op, _ in late
            )
            + late_after
        )
        named = ", ".join(f"{number}/{op.seq}" for op, number in late[:10])
        more = f" and {len(late) - 10} more" if len(late) > 10 else ""
        run = await service.request_repair(
            ctx,
            session,
            service.scheduler_principal(),
            "late_operation",
            f"late against the plan: {named}{more}",
            covered_since=since,
        )
        await session.commit()
    if run is not None:
        log.info("repair run %s queued: %d operations late", run.id, len(late))
