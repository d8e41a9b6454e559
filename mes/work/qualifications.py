"""Operator qualifications (training) that an operation may require before it starts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import InvalidInput
from mes.identity import service as identity
from mes.models import Qualification
from mes.principal import Principal
from mes.records import apply_update
from mes.work.schemas import QualificationGrant, QualificationPublic


def public(q: Qualification, now: datetime) -> QualificationPublic:
    return QualificationPublic(
        username=q.username,
        code=q.code,
        valid_until=q.valid_until,
        granted_by=q.granted_by,
        current=q.valid_until > now,
        version=q.version,
    )


async def list_for(session: AsyncSession, username: str) -> list[Qualification]:
    user = await identity.get_user(session, username)
    rows = await session.execute(
        select(Qualification)
        .where(Qualification.username == user.username)
        .order_by(col(Qualification.code))
    )
    return list(rows.scalars())


async def grant(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    username: str,
    data: QualificationGrant,
) -> Qualification:
    """Grant or renew a qualification until a date; a past date withdraws it."""
    user = await identity.get_user(session, username)
    if user.username == principal.username:
        raise InvalidInput("nobody grants their own qualification", rule="AC-2", field="username")
    now = ctx.clock.now()
    found = (
        await session.execute(
            select(Qualification)
            .where(Qualification.username == user.username, Qualification.code == data.code)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if found is None:
        found = Qualification(
            username=user.username,
            code=data.code,
            valid_until=data.valid_until,
            granted_by=principal.username,
            created_at=now,
            updated_at=now,
        )
        session.add(found)
        await session.flush()
        old: dict[str, object] = {}
        new: dict[str, object] = {"code": data.code, "valid_until": data.valid_until}
    else:
        old, new = apply_update(
            found, {"valid_until": data.valid_until, "granted_by": principal.username}, now
        )
        session.add(found)
    await audit.record_change(
        session,
        principal,
        action="qualify",
        entity_type="user",
        entity_id=user.username,
        entity_version=found.version,
        old=old,
        new=new,
        fields=("code", "valid_until", "granted_by"),
        reason=data.reason,
    )
    return found
