"""The solver runner of one MES process: claims queued scheduling runs, solves them in a worker
process (or thread) and stores the answer, so the API that queued them stays responsive.

Any process with a runner may take any queued run (the claim is an atomic status change), so a
repair queued by the ingest process when a unit's state signal says "down" is solved by an API
or scheduler process within a poll interval. A run that fails is stored as failed with the
reason; it never takes the runner down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from mes.context import AppContext
from mes.models.scheduling import ScheduleKind, ScheduleRun, ScheduleStatus
from mes.records import bump_version
from mes.scheduling import cpsat, loader, service
from mes.scheduling import publish as publishing
from mes.scheduling.problem import Objective, Problem, Solution
from mes.scheduling.rules import screen

log = logging.getLogger(__name__)

POLL_S = 2.0
# Kept from a run's time limit for storing its answer (and a millisecond per operation).
STORE_S = 0.3
# How much a repair prefers keeping the plan: a minute of the objective weighs as much as this
# many minutes of operations moved. Makespan is one number for the whole plan, tardiness a sum
# over the late orders (already weighted by priority), so they weigh differently.
REPAIR_STABILITY = {
    Objective.makespan: 20,
    Objective.weighted_tardiness: 1,
    Objective.mixed: 1,
}


def solve_problem(problem: Problem) -> tuple[Solution, list[dict[str, Any]]]:
    """Screen out what cannot be scheduled (SCH-4), then solve: the worker's entry point."""
    horizon = cpsat.horizon_of(problem)
    kept, problems = screen(problem, horizon)
    solution = cpsat.solve(kept)
    return solution, [
        {"work_order": p.work_order, "seq": p.seq, "reason": p.reason} for p in problems
    ]


class SolverRunner:
    def __init__(self, ctx: AppContext, *, executor: str | None = None) -> None:
        self.ctx = ctx
        self.executor = executor or ctx.settings.schedule_executor
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.Executor | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="schedule-runner")

    def wake(self) -> None:
        """A run was just queued here: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _loop(self) -> None:
        while True:
            try:
                while await self.run_next():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling runner: claiming a run failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_next(self) -> bool:
        """Claim and solve the oldest queued run; False when there is none."""
        async with self.ctx.db.sessionmaker() as session:
            await service.mark_stale(self.ctx, session)
            await session.commit()
        run_id = await self._claim()
        if run_id is None:
            return False
        await self.execute(run_id)
        return True

    async def _claim(self) -> uuid.UUID | None:
        now = self.ctx.clock.now()
        async with self.ctx.db.sessionmaker() as session:
            queued = (
                await session.execute(
                    select(ScheduleRun.id, ScheduleRun.version)
                    .where(ScheduleRun.status == ScheduleStatus.queued)
                    .order_by(col(ScheduleRun.id))
                    .limit(1)
                )
            ).first()
            if queued is None:
                return None
            run_id, version = queued
            claimed = await session.execute(
                update(ScheduleRun)
                .where(
                    col(ScheduleRun.id) == run_id,
                    col(ScheduleRun.status) == ScheduleStatus.queued,
                )
                .values(
                    status=ScheduleStatus.running,
                    started_at=now,
                    version=version + 1,
                    updated_at=now,
                )
            )
            await session.commit()
            return run_id if claimed.rowcount == 1 else None  # type: ignore[attr-defined]

    async def execute(self, run_id: uuid.UUID) -> None:
        """Load, solve, store; a failure is stored on the run. The run's time limit covers it
        all: what loading took is not left to the solver."""
        began = time.monotonic()
        try:
            async with self.ctx.db.sessionmaker() as session:
                run = await service.get(session, run_id)
                request = dict(run.request)
                loaded = await loader.load(
                    session,
                    horizon_start=run.horizon_start,
                    firm=self.ctx.settings.schedule_firm_horizon,
                    objective=Objective(run.objective),
                    makespan_weight=int(request.get("makespan_weight", 1)),
                    work_orders=request.get("work_orders"),
                    with_previous=ScheduleKind(run.kind) == ScheduleKind.repair,
                )
                kind = ScheduleKind(run.kind)
            problem = loaded.problem
            spent = time.monotonic() - began
            # Storing the answer takes about a millisecond per operation.
            storing = STORE_S + len(problem.tasks()) / 1000
            problem.time_limit_s = max(0.1, run.time_limit_s - spent - storing)
            problem.num_workers = self.ctx.settings.schedule_solver_workers
            if kind == ScheduleKind.repair:
                problem.stability_weight = REPAIR_STABILITY[problem.objective]
            solution, screened = await self._solve(problem)
            await self._store(run_id, loaded, solution, screened)
        except Exception as exc:
            log.exception("scheduling run %s failed", run_id)
            await self._fail(run_id, f"{type(exc).__name__}: {exc}")

    async def _solve(self, problem: Problem) -> tuple[Solution, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        if self.executor == "thread":
            return await asyncio.to_thread(solve_problem, problem)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            return await loop.run_in_executor(self._pool, solve_problem, problem)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None
            raise

    async def _store(
        self,
        run_id: uuid.UUID,
        loaded: loader.Loaded,
        solution: Solution,
        screened: list[dict[str, Any]],
    ) -> None:
        now = self.ctx.clock.now()
        assignments = _assignment_rows(loaded, solution)
        problems = [
            {"work_order": p.work_order, "seq": p.seq, "reason": p.reason} for p in loaded.problems
        ] + screened
        async with self.ctx.db.sessionmaker() as session:
            run = await service.get(session, run_id, lock=True)
            if ScheduleStatus(run.status) != ScheduleStatus.running:
                return
            run.status = ScheduleStatus.solved
            run.finished_at = now
            run.solver_status = solution.status
            run.method = solution.method
            run.objective_value = solution.objective_value
            run.bound = solution.bound
            run.gap = solution.gap
            run.makespan_min = solution.makespan
            run.total_tardiness_min = solution.total_tardiness
            run.solve_s = round(solution.solve_s, 3)
            run.result = {
                "assignments": assignments,
                "late_work_orders": sorted(solution.late_jobs),
                "problems": problems,
                "moved": solution.moved if loaded.problem.previous else None,
            }
            bump_version(run, now)
            session.add(run)
            auto = (
                ScheduleKind(run.kind) == ScheduleKind.repair or run.trigger == "periodic"
            ) and self.ctx.settings.schedule_auto_publish_repairs
            await session.flush()
            if auto:
                await publishing.publish(
                    self.ctx,
                    session,
                    service.scheduler_principal(),
                    run.id,
                    run.version,
                    "published by policy (schedule_auto_publish_repairs)",
                )
            await session.commit()
        log.info(
            "scheduling run %s: %s by %s, objective %s, %d operations",
            run_id,
            solution.status,
            solution.method,
            solution.objective_value,
            len(assignments),
        )

    async def _fail(self, run_id: uuid.UUID, error: str) -> None:
        now = self.ctx.clock.now()
        try:
            async with self.ctx.db.sessionmaker() as session:
                run = await service.get(session, run_id, lock=True)
                run.status = ScheduleStatus.failed
                run.error = error[:2000]
                run.finished_at = now
                bump_version(run, now)
                session.add(run)
                await session.commit()
        except Exception:
            log.exception("scheduling run %s: storing its failure failed", run_id)


def _assignment_rows(loaded: loader.Loaded, solution: Solution) -> list[dict[str, Any]]:
    """The solution's assignments as the run stores them: times as UTC instants."""
    origin = loaded.horizon_start
    fixed = {t.key for t in loaded.problem.tasks() if t.fixed is not None}
    return [
        {
            "operation_id": a.task,
            "work_order": a.job,
            "seq": a.seq,
            "operation": loaded.operations[a.task].name,
            "equipment_code": a.unit,
            "start": _at(origin, a.start),
            "end": _at(origin, a.end),
            "changeover_min": a.changeover_min,
            "fixed": a.task in fixed,
        }
        for a in solution.assignments
    ]


def _at(origin: datetime, minutes: int) -> str:
    return (origin + timedelta(minutes=minutes)).isoformat()
