"""E-signature API: signatures with their manifestation and verification status."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from mes.errors import InvalidInput
from mes.http import CursorQuery, LimitQuery, SessionDep, decode_str_cursor, encode_cursor
from mes.identity.deps import Allow
from mes.models import Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.signature import service
from mes.signature.schemas import SignatureList, SignaturePublic

router = APIRouter(prefix=API_PREFIX, tags=["e-signatures"])

Reader = Annotated[Principal, Depends(Allow(Role.supervisor, Role.qa, Role.admin))]
Filter = Annotated[str | None, Query(max_length=64)]


@router.get("/signatures", response_model=SignatureList)
async def list_signatures(
    session: SessionDep,
    _: Reader,
    record_type: Filter = None,
    record_id: Filter = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> SignatureList:
    """Executed signatures, each with printed name, UTC time and meaning (ES-2) and whether
    the signed record version still matches its hash (ES-3)."""
    after = decode_str_cursor(cursor)
    if after is not None:
        try:
            uuid.UUID(after)
        except ValueError:
            raise InvalidInput(
                "cursor is not a value returned by this API", field="query.cursor"
            ) from None
    rows, last = await service.list_signatures(
        session, record_type=record_type, record_id=record_id, after=after, limit=limit
    )
    return SignatureList(
        items=[await service.public(session, r) for r in rows],
        next_cursor=encode_cursor(last) if last else None,
    )


@router.get("/signatures/{signature_id}", response_model=SignaturePublic)
async def get_signature(signature_id: uuid.UUID, session: SessionDep, _: Reader) -> SignaturePublic:
    """One signature and its verification status."""
    return await service.public(session, await service.get_signature(session, signature_id))
