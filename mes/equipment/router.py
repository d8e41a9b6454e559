"""Plant-model API: equipment hierarchy, equipment classes, status, qualification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from mes.equipment import service
from mes.equipment.schemas import (
    EquipmentClassCreate,
    EquipmentClassList,
    EquipmentClassPublic,
    EquipmentClassUpdate,
    EquipmentCreate,
    EquipmentList,
    EquipmentPublic,
    EquipmentUpdate,
    QualificationApproval,
    QualificationResult,
    StatusChange,
)
from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    OptionalVersionDep,
    SessionDep,
    VersionDep,
    decode_str_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.models import EquipmentLevel, EquipmentStatus, Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.signature import service as signatures

router = APIRouter(prefix=API_PREFIX, tags=["plant model"])

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
Editor = Annotated[Principal, Depends(Allow(Role.admin, Role.supervisor))]
FloorUser = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor))]
Qa = Annotated[Principal, Depends(Allow(Role.qa))]


@router.get("/equipment", response_model=EquipmentList)
async def list_equipment(
    ctx: ContextDep,
    session: SessionDep,
    _: Reader,
    level: EquipmentLevel | None = None,
    parent_code: str | None = None,
    site_code: str | None = None,
    status: EquipmentStatus | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> EquipmentList:
    """The equipment hierarchy (sites, areas, work centers, units, rooms) ordered by code."""
    items, last = await service.list_equipment(
        session,
        now=ctx.clock.now(),
        level=level,
        parent_code=parent_code,
        site_code=site_code,
        status=status,
        after=decode_str_cursor(cursor),
        limit=limit,
    )
    return EquipmentList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/equipment", status_code=201, response_model=EquipmentPublic)
async def create_equipment(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Editor,
    body: EquipmentCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Add a node to the plant model under its ISA-95 parent. Audited."""

    async def create() -> tuple[int, EquipmentPublic, dict[str, str]]:
        eq = await service.create_equipment(ctx, session, principal, body)
        return (
            201,
            await service.public(session, eq, ctx.clock.now()),
            {"ETag": etag(eq.version), "Location": f"/api/v1/equipment/{eq.code}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/equipment/{code}", response_model=EquipmentPublic)
async def get_equipment(
    code: str, ctx: ContextDep, session: SessionDep, _: Reader, response: Response
) -> EquipmentPublic:
    """One node, with whether it may be used for production now and why not (PROC-3)."""
    eq = await service.get(session, code)
    response.headers["ETag"] = etag(eq.version)
    return await service.public(session, eq, ctx.clock.now())


@router.patch("/equipment/{code}", response_model=EquipmentPublic)
async def update_equipment(
    code: str,
    body: EquipmentUpdate,
    principal: Editor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> EquipmentPublic:
    """Edit attributes (If-Match and a reason required). Audited field by field."""
    eq = await service.update_equipment(ctx, session, principal, code, version, body)
    response.headers["ETag"] = etag(eq.version)
    return await service.public(session, eq, ctx.clock.now())


@router.post("/equipment/{code}/status", response_model=EquipmentPublic)
async def change_equipment_status(
    code: str,
    body: StatusChange,
    principal: FloorUser,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> EquipmentPublic:
    """Report a unit idle, down, cleaning or in maintenance, with a reason."""
    eq = await service.change_status(
        ctx, session, principal, code, body.status, body.reason, version
    )
    response.headers["ETag"] = etag(eq.version)
    return await service.public(session, eq, ctx.clock.now())


@router.post("/equipment/{code}/qualify", response_model=QualificationResult)
async def qualify_equipment(
    code: str,
    body: QualificationApproval,
    principal: Qa,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> QualificationResult:
    """QA approves a unit's qualification (IQ/OQ/PQ) until a date with an e-signature
    (meaning ``approved``). A wrong password signs nothing and changes nothing (401)."""
    eq, esig = await service.approve_qualification(ctx, session, principal, code, version, body)
    response.headers["ETag"] = etag(eq.version)
    return QualificationResult(
        equipment=await service.public(session, eq, ctx.clock.now()),
        signature=await signatures.public(session, esig),
    )


# --- equipment classes ---------------------------------------------------------------------------


@router.get("/equipment-classes", response_model=EquipmentClassList)
async def list_equipment_classes(
    session: SessionDep, _: Reader, cursor: CursorQuery = None, limit: LimitQuery = 50
) -> EquipmentClassList:
    """Equipment classes ordered by code."""
    items, last = await service.list_classes(session, after=decode_str_cursor(cursor), limit=limit)
    return EquipmentClassList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/equipment-classes", status_code=201, response_model=EquipmentClassPublic)
async def create_equipment_class(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Editor,
    body: EquipmentClassCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Add an equipment class. Audited."""

    async def create() -> tuple[int, EquipmentClassPublic, dict[str, str]]:
        created = await service.create_class(ctx, session, principal, body)
        return (
            201,
            service.class_public(created),
            {
                "ETag": etag(created.version),
                "Location": f"/api/v1/equipment-classes/{created.code}",
            },
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/equipment-classes/{code}", response_model=EquipmentClassPublic)
async def get_equipment_class(
    code: str, session: SessionDep, _: Reader, response: Response
) -> EquipmentClassPublic:
    """One equipment class."""
    found = await service.get_class(session, code)
    response.headers["ETag"] = etag(found.version)
    return service.class_public(found)


@router.patch("/equipment-classes/{code}", response_model=EquipmentClassPublic)
async def update_equipment_class(
    code: str,
    body: EquipmentClassUpdate,
    principal: Editor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> EquipmentClassPublic:
    """Edit an equipment class (If-Match and a reason required). Audited."""
    found = await service.update_class(ctx, session, principal, code, version, body)
    response.headers["ETag"] = etag(found.version)
    return service.class_public(found)
