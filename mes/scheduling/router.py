"""Scheduling runs (API.md, Schedules): start one, follow it, publish it, see it as a Gantt."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    SessionDep,
    VersionDep,
    decode_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.models import Role
from mes.models.scheduling import ScheduleKind, ScheduleStatus
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.scheduling import publish as publishing
from mes.scheduling import service
from mes.scheduling.schemas import (
    Gantt,
    PublishRequest,
    PublishResult,
    ScheduleCreate,
    ScheduleList,
    SchedulePublic,
)

router = APIRouter(prefix=API_PREFIX)

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
Planner = Annotated[Principal, Depends(Allow(Role.planner, Role.supervisor))]


@router.post("/schedules", status_code=202, response_model=SchedulePublic, tags=["scheduling"])
async def start_schedule(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Planner,
    body: ScheduleCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Start a scheduling run of the released and in-progress work orders (or the ones
    named) from ``horizon_start``: answers at once with the queued run; follow it at its
    ``Location``. Orders that cannot be scheduled are listed in the run's ``problems`` with
    the reason (SCH-4); a time limit outside 1..600 s is a 422."""

    async def create() -> tuple[int, SchedulePublic, dict[str, str]]:
        run = await service.create_run(ctx, session, principal, body)
        service.wake_after_commit(ctx, session)
        return (
            202,
            service.public(run),
            {"ETag": etag(run.version), "Location": f"{API_PREFIX}/schedules/{run.id}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/schedules", response_model=ScheduleList, tags=["scheduling"])
async def list_schedules(
    session: SessionDep,
    _: Reader,
    status: ScheduleStatus | None = None,
    kind: ScheduleKind | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> ScheduleList:
    """Scheduling runs, newest first."""
    after = decode_cursor(cursor)
    rows, last = await service.list_runs(
        session,
        status=status,
        kind=kind,
        before=uuid.UUID(str(after)) if after else None,
        limit=limit,
    )
    return ScheduleList(
        items=[service.summary(r) for r in rows],
        next_cursor=encode_cursor(str(last)) if last else None,
    )


@router.get("/schedules/{run_id}", response_model=SchedulePublic, tags=["scheduling"])
async def get_schedule(
    run_id: uuid.UUID, session: SessionDep, _: Reader, response: Response
) -> SchedulePublic:
    """Status (queued, running, solved, published, superseded, failed), objective value,
    solver bound and gap, makespan, total tardiness, late orders, problems and every
    assignment with the changeover before it."""
    run = await service.get(session, run_id)
    response.headers["ETag"] = etag(run.version)
    return service.public(run)


@router.get("/schedules/{run_id}/gantt", response_model=Gantt, tags=["scheduling"])
async def schedule_gantt(
    run_id: uuid.UUID,
    session: SessionDep,
    _: Reader,
    by: Annotated[Literal["unit", "work_order"], Query()] = "unit",
) -> Gantt:
    """The run's bars per unit (with each unit's unavailable time) or per work order."""
    run = await service.get(session, run_id)
    return await service.gantt(session, run, by)


@router.post("/schedules/{run_id}/publish", response_model=PublishResult, tags=["scheduling"])
async def publish_schedule(
    run_id: uuid.UUID,
    body: PublishRequest,
    principal: Planner,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> PublishResult:
    """solved -> published: the planned unit, start and end of every operation the run
    placed that has not started since, which orders the dispatch queues; the schedule
    published before is superseded."""
    run, published, skipped = await publishing.publish(
        ctx, session, principal, run_id, version, body.reason
    )
    response.headers["ETag"] = etag(run.version)
    return PublishResult(schedule=service.public(run), published=published, skipped=skipped)
