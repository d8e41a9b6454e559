"""Health endpoint: database reachability and schema revision, and component states (the
background runner's with every job's last run and last error)."""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import mes
from mes.background.runner import BackgroundHealth
from mes.context import ComponentHealth
from mes.http import ContextDep
from mes.migrate import current_revision, head_revision
from mes.routes import API_PREFIX

log = logging.getLogger(__name__)

router = APIRouter(prefix=API_PREFIX, tags=["health"])


class JobState(BaseModel):
    """One background job as this process last ran it."""

    name: str
    every_s: float
    runs: int
    failures: int
    last_run_at: datetime | None
    last_status: str | None
    last_error: str | None
    last_error_at: datetime | None


class ComponentState(BaseModel):
    status: str
    detail: str | None = None
    # The background runner only: this process as the lease knows it (hostname:pid:random),
    # whether it holds the lease (runs the jobs), and the jobs (a standby's never run).
    instance: str | None = None
    leader: bool | None = None
    jobs: list[JobState] | None = None


def component_state(component: ComponentHealth) -> ComponentState:
    if not isinstance(component, BackgroundHealth):
        return ComponentState(status=component.status, detail=component.detail)
    return ComponentState(
        status=component.status,
        detail=component.detail,
        instance=component.instance,
        leader=component.is_leader,
        jobs=[
            JobState(
                name=job.name,
                every_s=job.every.total_seconds(),
                runs=job.runs,
                failures=job.failures,
                last_run_at=job.last_run_at,
                last_status=job.last_status,
                last_error=job.last_error,
                last_error_at=job.last_error_at,
            )
            for job in component.jobs.values()
        ],
    )


class DatabaseState(BaseModel):
    status: str
    dialect: str
    revision: str | None
    expected_revision: str | None
    detail: str | None = None


class Health(BaseModel):
    status: str
    version: str
    started_at: datetime | None
    database: DatabaseState
    components: dict[str, ComponentState]


@router.get("/health", response_model=Health)
async def health(ctx: ContextDep, response: Response) -> Health:
    """Liveness and readiness: 200 when the database answers at the expected schema
    revision, 503 otherwise. Public, for load balancers and the compose health check."""
    expected = head_revision()
    try:
        async with ctx.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        revision = await current_revision(ctx.db.engine)
        db = DatabaseState(
            status="ok" if revision == expected else "outdated",
            dialect=ctx.db.dialect,
            revision=revision,
            expected_revision=expected,
            detail=None if revision == expected else "run `mes db upgrade`",
        )
    except (SQLAlchemyError, OSError) as exc:
        log.warning("health: database unreachable: %s", exc.__class__.__name__)
        db = DatabaseState(
            status="down",
            dialect=ctx.db.dialect,
            revision=None,
            expected_revision=expected,
            detail=exc.__class__.__name__,
        )
    components = {name: component_state(c) for name, c in sorted(ctx.components.items())}
    degraded = any(c.status != "ok" for c in components.values())
    status = (
        "ok"
        if db.status == "ok" and not degraded
        else ("down" if db.status != "ok" else "degraded")
    )
    if db.status != "ok":
        response.status_code = 503
    return Health(
        status=status,
        version=mes.__version__,
        started_at=ctx.started_at,
        database=db,
        components=components,
    )
