"""Identity API: OAuth2 password login, sessions, user accounts and machine keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Request, Response

from mes.errors import InvalidInput
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
from mes.identity import keys, service
from mes.identity.deps import ANY_HUMAN, ANYONE, Allow, client_ip
from mes.identity.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyList,
    ApiKeyPublic,
    Me,
    PasswordChange,
    PasswordReset,
    TokenResponse,
    UserAction,
    UserCreate,
    UserList,
    UserPublic,
    UserUpdate,
)
from mes.models import Role, UserStatus
from mes.principal import Principal
from mes.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["identity"])

AdminDep = Annotated[Principal, Depends(Allow(Role.admin))]
UserReaderDep = Annotated[Principal, Depends(Allow(Role.admin, Role.qa))]
HumanDep = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
AnyoneDep = Annotated[Principal, Depends(Allow(*ANYONE))]
TerminalHeader = Annotated[
    str | None,
    Header(alias="X-Terminal-Id", max_length=100, description="Tablet or workstation id."),
]


@router.post("/auth/token", response_model=TokenResponse)
async def issue_token(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=256)],
    terminal: TerminalHeader = None,
) -> TokenResponse:
    """OAuth2 password grant: a short-lived bearer token bound to a server-side session.

    Five consecutive failures lock the account (AC-5); the session ends after
    10 minutes without activity (AC-6)."""
    for field, value in (("username", username), ("password", password)):
        if "\x00" in value:
            raise InvalidInput(f"{field} must not contain NUL characters", field=field)
    return await service.login(
        ctx, session, username, password, terminal=terminal, client_ip=client_ip(request)
    )


@router.post("/auth/refresh", response_model=TokenResponse)
async def refresh_token(ctx: ContextDep, session: SessionDep, principal: HumanDep) -> TokenResponse:
    """A new access token for the caller's still-live session."""
    return await service.refresh(ctx, session, principal)


@router.post("/auth/logout", status_code=204)
async def logout(ctx: ContextDep, session: SessionDep, principal: HumanDep) -> Response:
    """End the caller's session; its tokens stop working at once."""
    await service.logout(ctx, session, principal)
    return Response(status_code=204)


@router.get("/auth/me", response_model=Me)
async def whoami(ctx: ContextDep, session: SessionDep, principal: AnyoneDep) -> Me:
    """The authenticated caller and its roles."""
    return Me(
        username=principal.username,
        full_name=principal.full_name,
        kind=principal.kind,
        roles=sorted(principal.roles),
        session_expires_in=await service.session_remaining(ctx, session, principal),
    )


@router.post("/auth/password", status_code=204)
async def change_password(
    ctx: ContextDep, session: SessionDep, principal: HumanDep, body: PasswordChange
) -> Response:
    """Change the caller's own password (the current one is required)."""
    await service.change_own_password(
        ctx, session, principal, body.current_password, body.new_password
    )
    return Response(status_code=204)


# --- users ---------------------------------------------------------------------------------------


@router.get("/users", response_model=UserList)
async def list_users(
    session: SessionDep,
    _: UserReaderDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    status: UserStatus | None = None,
) -> UserList:
    """User accounts ordered by username."""
    items, last = await service.list_users(
        session, after=decode_str_cursor(cursor), limit=limit, status=status
    )
    return UserList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/users", status_code=201, response_model=UserPublic)
async def create_user(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: AdminDep,
    body: UserCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create an account for one person (AC-1). Audited."""

    async def create() -> tuple[int, UserPublic, dict[str, str]]:
        user = await service.create_user(ctx, session, principal, body)
        return (
            201,
            await service.user_public(session, user),
            {
                "ETag": etag(user.version),
                "Location": f"/api/v1/users/{user.username}",
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


@router.get("/users/{username}", response_model=UserPublic)
async def get_user(
    username: str, session: SessionDep, _: UserReaderDep, response: Response
) -> UserPublic:
    """One account."""
    user = await service.get_user(session, username)
    response.headers["ETag"] = etag(user.version)
    return await service.user_public(session, user)


@router.patch("/users/{username}", response_model=UserPublic)
async def update_user(
    username: str,
    body: UserUpdate,
    principal: AdminDep,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UserPublic:
    """Change name, e-mail or roles. Requires If-Match and a reason (AT-3)."""
    user = await service.update_user(ctx, session, principal, username, version, body)
    response.headers["ETag"] = etag(user.version)
    return await service.user_public(session, user)


async def _status_action(
    action: str,
    username: str,
    body: UserAction,
    version: int | None,
    ctx: ContextDep,
    session: SessionDep,
    principal: Principal,
    response: Response,
) -> UserPublic:
    user = await service.change_status(
        ctx, session, principal, username, action, body.reason, version
    )
    response.headers["ETag"] = etag(user.version)
    return await service.user_public(session, user)


@router.post("/users/{username}/unlock", response_model=UserPublic)
async def unlock_user(
    username: str,
    body: UserAction,
    principal: AdminDep,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UserPublic:
    """Unlock an account locked by repeated failures (AC-5)."""
    return await _status_action(
        "unlock", username, body, version, ctx, session, principal, response
    )


@router.post("/users/{username}/disable", response_model=UserPublic)
async def disable_user(
    username: str,
    body: UserAction,
    principal: AdminDep,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UserPublic:
    """Disable an account and end its sessions. Accounts are never deleted (AC-1)."""
    return await _status_action(
        "disable", username, body, version, ctx, session, principal, response
    )


@router.post("/users/{username}/enable", response_model=UserPublic)
async def enable_user(
    username: str,
    body: UserAction,
    principal: AdminDep,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UserPublic:
    """Re-enable a disabled account."""
    return await _status_action(
        "enable", username, body, version, ctx, session, principal, response
    )


@router.post("/users/{username}/password", response_model=UserPublic)
async def reset_password(
    username: str,
    body: PasswordReset,
    principal: AdminDep,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> UserPublic:
    """Set a new password for an account (administrator reset). Audited, value redacted."""
    user = await service.reset_password(
        ctx, session, principal, username, body.new_password, body.reason, version
    )
    response.headers["ETag"] = etag(user.version)
    return await service.user_public(session, user)


# --- machine keys --------------------------------------------------------------------------------


@router.get("/api-keys", response_model=ApiKeyList)
async def list_api_keys(
    session: SessionDep, _: AdminDep, cursor: CursorQuery = None, limit: LimitQuery = 50
) -> ApiKeyList:
    """Machine keys (never their secrets)."""
    items, last = await keys.list_api_keys(session, after=decode_str_cursor(cursor), limit=limit)
    return ApiKeyList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/api-keys", status_code=201, response_model=ApiKeyIssued)
async def create_api_key(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: AdminDep,
    body: ApiKeyCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Issue a 256-bit machine key scoped to named telemetry sources; the secret is shown
    once and stored only as its SHA-256."""
    if idempotency_key is not None:
        raise InvalidInput(
            "API keys are never replayed: the secret is shown once; omit Idempotency-Key",
            field="header.Idempotency-Key",
        )

    async def create() -> tuple[int, ApiKeyIssued, dict[str, str]]:
        issued = await keys.create_api_key(ctx, session, principal, body)
        return (
            201,
            issued,
            {"ETag": etag(issued.version), "Location": f"/api/v1/api-keys/{issued.name}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=None,
        body=body,
        create=create,
    )


@router.get("/api-keys/{name}", response_model=ApiKeyPublic)
async def get_api_key(
    name: str, session: SessionDep, _: AdminDep, response: Response
) -> ApiKeyPublic:
    """One machine key."""
    key = await keys.get_api_key(session, name)
    response.headers["ETag"] = etag(key.version)
    return keys.api_key_public(key)


@router.post("/api-keys/{name}/revoke", response_model=ApiKeyPublic)
async def revoke_api_key(
    name: str,
    body: UserAction,
    principal: AdminDep,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> ApiKeyPublic:
    """Revoke a machine key; it is refused from the next request on."""
    key = await keys.revoke_api_key(ctx, session, principal, name, body.reason, version)
    response.headers["ETag"] = etag(key.version)
    return keys.api_key_public(key)
