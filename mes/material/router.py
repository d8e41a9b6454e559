"""Material-definition API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    SessionDep,
    VersionDep,
    decode_str_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.material import service
from mes.material.schemas import MaterialCreate, MaterialList, MaterialPublic, MaterialUpdate
from mes.models import MaterialKind, Role
from mes.principal import Principal
from mes.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["plant model"])

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
Editor = Annotated[Principal, Depends(Allow(Role.admin, Role.supervisor))]


@router.get("/materials", response_model=MaterialList)
async def list_materials(
    session: SessionDep,
    _: Reader,
    kind: MaterialKind | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> MaterialList:
    """Material definitions ordered by code."""
    items, last = await service.list_materials(
        session, kind=kind, after=decode_str_cursor(cursor), limit=limit
    )
    return MaterialList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/materials", status_code=201, response_model=MaterialPublic)
async def create_material(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Editor,
    body: MaterialCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Define a material (GTIN check digit verified, UDI-1; unit checked with pint). Audited."""

    async def create() -> tuple[int, MaterialPublic, dict[str, str]]:
        m = await service.create(ctx, session, principal, body)
        return (
            201,
            service.public(m),
            {"ETag": etag(m.version), "Location": f"/api/v1/materials/{m.code}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/materials/{code}", response_model=MaterialPublic)
async def get_material(
    code: str, session: SessionDep, _: Reader, response: Response
) -> MaterialPublic:
    """One material definition."""
    m = await service.get(session, code)
    response.headers["ETag"] = etag(m.version)
    return service.public(m)


@router.patch("/materials/{code}", response_model=MaterialPublic)
async def update_material(
    code: str,
    body: MaterialUpdate,
    principal: Editor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> MaterialPublic:
    """Edit a material definition (If-Match and a reason required). Audited."""
    m = await service.update(ctx, session, principal, code, version, body)
    response.headers["ETag"] = etag(m.version)
    return service.public(m)
