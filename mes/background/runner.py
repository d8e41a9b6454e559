"""The background runner: APScheduler 3.11 running the registered jobs while this process holds
the lease.

Any number of processes may run a runner (``mes background``, every ``mes serve`` worker with
``background_enabled``, ``mes demo``); each renews the lease every third of its TTL and runs a
job only while it holds it, so exactly one process of a deployment does the work and another
takes over within a TTL when it stops or dies. The scheduler keeps its jobs in memory only:
the jobs are stateless (mes.background.jobs), so nothing is lost with a process.

A job's failure is logged and shown in health (``components.background``: every job with its
last run and last error), and the job runs again at its next interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from mes.background.jobs import JOBS, JobSpec
from mes.background.lease import Lease, default_holder
from mes.context import AppContext, ComponentHealth

log = logging.getLogger(__name__)

LEASE_NAME = "background"
COMPONENT = "background"
ERROR_CHARS = 500


@dataclass
class JobState:
    """What health shows of one job in this process."""

    name: str
    every: timedelta
    runs: int = 0
    failures: int = 0
    last_run_at: datetime | None = None
    last_status: str | None = None  # "ok" or "failed" (of the last run)
    last_error: str | None = None  # the last failure's message, kept after later successes
    last_error_at: datetime | None = None


@dataclass
class BackgroundHealth(ComponentHealth):
    """``ctx.components["background"]``: the lease and every job of this process. Status and
    detail are refreshed at every renewal and run; whether this process leads is read live."""

    lease: Lease | None = field(default=None, repr=False)
    jobs: dict[str, JobState] = field(default_factory=dict)

    @property
    def instance(self) -> str | None:
        """This process as the lease names it."""
        return self.lease.holder if self.lease is not None else None

    @property
    def is_leader(self) -> bool:
        return self.lease is not None and self.lease.held


class BackgroundRunner:
    """Runs ``jobs`` (the enabled ones of the registry by default) on an AsyncIOScheduler in
    this process's event loop, guarded by the lease."""

    def __init__(
        self,
        ctx: AppContext,
        jobs: Sequence[JobSpec] = JOBS,
        *,
        holder: str | None = None,
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.jobs = {spec.name: spec for spec in jobs if spec.enabled(settings)}
        self.intervals = {name: spec.interval(settings) for name, spec in self.jobs.items()}
        self.lease = Lease(
            ctx.db,
            LEASE_NAME,
            holder or default_holder(),
            settings.background_lease_ttl,
            ctx.clock,
        )
        self.health = BackgroundHealth(
            name=COMPONENT,
            status="starting",
            lease=self.lease,
            jobs={name: JobState(name, every) for name, every in self.intervals.items()},
        )
        self.lease_error: str | None = None
        self._scheduler: AsyncIOScheduler | None = None
        # Runs in progress, cancelled and awaited by ``stop`` (no task outlives the runner).
        self._running: set[asyncio.Task[Any]] = set()

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    async def start(self) -> None:
        """Try the lease once now (so health tells at once whether this process runs the
        jobs), then schedule the renewals and the jobs."""
        self.ctx.components[COMPONENT] = self.health
        await self.renew()
        scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                # A run missed while the loop was busy is run once, late, whatever the delay.
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": None,
            },
        )
        renew_every = self.lease.ttl / 3
        scheduler.add_job(
            self.renew, "interval", seconds=renew_every.total_seconds(), id="lease", name="lease"
        )
        for name, every in self.intervals.items():
            scheduler.add_job(
                self.run_scheduled,
                "interval",
                seconds=every.total_seconds(),
                args=[name],
                id=name,
                name=name,
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "background jobs %s as %s (%s)",
            ", ".join(f"{n} every {int(e.total_seconds())} s" for n, e in self.intervals.items()),
            self.lease.holder,
            "lease holder" if self.is_leader else "standby",
        )

    async def stop(self) -> None:
        """Stop scheduling, cancel runs in progress (each is one transaction and is redone by
        the next holder) and give the lease up so another process takes over at once."""
        if self._scheduler is not None:
            if self._scheduler.running:
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
        current = asyncio.current_task()
        running = [task for task in self._running if task is not current]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        try:
            await self.lease.release()
        except Exception as exc:  # noqa: BLE001 - shutting down; the lease expires after its TTL
            log.warning("background lease not released (%s); it expires by itself", exc)
        self.ctx.components.pop(COMPONENT, None)

    async def renew(self) -> bool:
        """Take or renew the lease; whether this process holds it. Never raises: a database
        that cannot be reached shows in health and the lease lapses by itself."""
        try:
            held = await self.lease.acquire_or_renew()
        except Exception as exc:  # noqa: BLE001 - a supervisor: the next renewal retries
            log.warning("background lease not renewed: %s", exc)
            self.lease_error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            held = False
        else:
            self.lease_error = None
        self._update_health()
        return held

    async def run_scheduled(self, name: str) -> bool:
        """A scheduled run: the job runs only while this process holds the lease (otherwise
        it is skipped silently); whether it ran."""
        if not self.lease.held:
            return False
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._run(name)
        except Exception:  # noqa: BLE001 - a job boundary: _run logged and recorded it
            return True
        finally:
            if task is not None:
                self._running.discard(task)
        return True

    async def run_once(self, name: str) -> Any:
        """Run one job now, whoever holds the lease (``mes background --once``, tests); its
        result, or its error raised after it is recorded. Safe beside the holder's runs: the
        jobs are idempotent and lock what they change."""
        if name not in self.jobs:
            raise ValueError(
                f"no background job {name!r} here; jobs: {', '.join(self.jobs) or 'none'}"
            )
        return await self._run(name)

    async def _run(self, name: str) -> Any:
        spec = self.jobs[name]
        state = self.health.jobs[name]
        started = self.ctx.clock.now()
        state.runs += 1
        state.last_run_at = started
        try:
            result = await spec.func(self.ctx)
        except Exception as exc:
            state.failures += 1
            state.last_status = "failed"
            state.last_error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            state.last_error_at = started
            log.exception(
                "background job %s failed; it runs again in %s", name, self.intervals[name]
            )
            self._update_health()
            raise
        state.last_status = "ok"
        self._update_health()
        return result

    def _update_health(self) -> None:
        health = self.health
        failed = sorted(n for n, s in health.jobs.items() if s.last_status == "failed")
        if self.lease_error is not None:
            health.status = "degraded"
            health.detail = f"lease not renewed: {self.lease_error}"
        elif failed:
            health.status = "degraded"
            health.detail = f"last run failed: {', '.join(failed)}"
        else:
            health.status = "ok"
            health.detail = (
                "running the jobs (lease holder)"
                if health.is_leader
                else "standby: another process holds the lease"
            )
