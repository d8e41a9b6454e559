"""Machine API keys: 256-bit secrets stored as SHA-256, scoped to named telemetry sources,
revocable; every issue and revocation is audited (AT-1)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import AlreadyExists, InvalidTransition, NotAuthenticated, NotFound
from mes.identity import rules
from mes.identity.schemas import ApiKeyCreate, ApiKeyIssued, ApiKeyPublic
from mes.identity.service import TOUCH_INTERVAL
from mes.models import ApiKey, AuthEvent, AuthEventKind, Role
from mes.principal import Principal, PrincipalKind
from mes.records import bump_version, check_version, fetch_page


async def principal_from_api_key(
    ctx: AppContext, session: AsyncSession, secret: str, client_ip: str | None
) -> Principal:
    prefix = secret[: len(rules.API_KEY_PREFIX) + 8]
    result = await session.execute(select(ApiKey).where(ApiKey.key_prefix == prefix))
    for key in result.scalars():
        if rules.api_key_matches(secret, key.key_hash) and key.revoked_at is None:
            now = ctx.clock.now()
            if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
                key.last_used_at = now
                session.add(key)
            return Principal(
                kind=PrincipalKind.machine,
                username=f"key:{key.name}"[:64],
                full_name=f"Machine key {key.name}",
                roles=frozenset({Role.machine}),
                sources=tuple(key.sources),
            )
    session.add(
        AuthEvent(
            event=AuthEventKind.api_key_rejected,
            client_ip=client_ip,
            at=ctx.clock.now(),
            detail=f"prefix {prefix!r}",
        )
    )
    raise NotAuthenticated("invalid or revoked API key", persist=True)


def api_key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(
        name=key.name,
        key_prefix=key.key_prefix,
        sources=list(key.sources),
        created_by=key.created_by,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        version=key.version,
    )


async def create_api_key(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: ApiKeyCreate
) -> ApiKeyIssued:
    existing = await session.execute(select(ApiKey).where(ApiKey.name == data.name))
    if existing.scalar_one_or_none() is not None:
        raise AlreadyExists(f"API key {data.name!r} already exists", field="name")
    secret, prefix, digest = rules.new_api_key()
    now = ctx.clock.now()
    key = ApiKey(
        name=data.name,
        key_prefix=prefix,
        key_hash=digest,
        sources=sorted(set(data.sources)),
        created_by=principal.username,
        created_at=now,
        updated_at=now,
    )
    session.add(key)
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="api_key",
        entity_id=key.name,
        entity_version=key.version,
        old=None,
        new={"name": key.name, "key_prefix": key.key_prefix, "sources": key.sources},
        fields=("name", "key_prefix", "sources"),
        reason=data.reason,
    )
    return ApiKeyIssued(api_key=secret, **api_key_public(key).model_dump())


async def get_api_key(session: AsyncSession, name: str, *, lock: bool = False) -> ApiKey:
    stmt = select(ApiKey).where(ApiKey.name == name)
    if lock:
        stmt = stmt.with_for_update()
    key = (await session.execute(stmt)).scalar_one_or_none()
    if key is None:
        raise NotFound(f"API key {name!r} does not exist")
    return key


async def list_api_keys(
    session: AsyncSession, *, after: str | None, limit: int
) -> tuple[list[ApiKeyPublic], str | None]:
    stmt = select(ApiKey).order_by(col(ApiKey.name))
    if after is not None:
        stmt = stmt.where(col(ApiKey.name) > after)
    keys, more = await fetch_page(session, stmt, limit)
    return [api_key_public(k) for k in keys], (keys[-1].name if more else None)


async def revoke_api_key(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    name: str,
    reason: str,
    expected_version: int | None,
) -> ApiKey:
    key = await get_api_key(session, name, lock=True)
    check_version(key, expected_version, f"API key {name!r}")
    if key.revoked_at is not None:
        raise InvalidTransition(f"API key {name!r} is already revoked")
    now = ctx.clock.now()
    key.revoked_at = now
    bump_version(key, now)
    session.add(key)
    await audit.record(
        session,
        principal,
        action="revoke",
        entity_type="api_key",
        entity_id=key.name,
        entity_version=key.version,
        changes=[{"field": "revoked_at", "old": None, "new": now}],
        reason=reason,
    )
    return key
