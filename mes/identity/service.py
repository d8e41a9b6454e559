"""Identity services: accounts, login with lockout, sessions, machine keys.

Every change to an account is a regulated change and is audited in the same transaction
(AT-1). Accounts are never deleted and usernames never reused (AC-1).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, delete, select

from mes.audit import service as audit
from mes.audit.rules import field_changes
from mes.clock import utc_now
from mes.context import AppContext
from mes.errors import (
    AccountLocked,
    AlreadyExists,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotAuthenticated,
    NotFound,
)
from mes.identity import rules
from mes.identity.schemas import (
    TokenResponse,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from mes.identity.tokens import TokenError
from mes.models import (
    AppUser,
    AuthEvent,
    AuthEventKind,
    AuthSession,
    Role,
    RoleAssignment,
    UserStatus,
)
from mes.principal import Principal, PrincipalKind, system_principal
from mes.records import bump_version, check_version, fetch_page

log = logging.getLogger(__name__)

USER_FIELDS = ("username", "full_name", "email", "status", "roles")
REDACTED = "<redacted>"
TOUCH_INTERVAL = timedelta(seconds=30)


# --- reads ---------------------------------------------------------------------------------------


async def roles_of(session: AsyncSession, user_id: uuid.UUID) -> list[Role]:
    result = await session.execute(
        select(RoleAssignment.role).where(RoleAssignment.user_id == user_id)
    )
    return sorted(Role(r) for r in result.scalars())


async def find_user(session: AsyncSession, username: str, *, lock: bool = False) -> AppUser | None:
    stmt = select(AppUser).where(AppUser.username == username)
    if lock:
        stmt = stmt.with_for_update()
    result = await session.execute(stmt)
    return result.scalar_one_or_none()


async def get_user(session: AsyncSession, username: str, *, lock: bool = False) -> AppUser:
    user = await find_user(session, username, lock=lock)
    if user is None:
        raise NotFound(f"user {username!r} does not exist")
    return user


async def user_public(session: AsyncSession, user: AppUser) -> UserPublic:
    return UserPublic(
        username=user.username,
        full_name=user.full_name,
        email=user.email,
        roles=await roles_of(session, user.id),
        status=UserStatus(user.status),
        failed_attempts=user.failed_attempts,
        locked_at=user.locked_at,
        last_login_at=user.last_login_at,
        version=user.version,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


async def list_users(
    session: AsyncSession, *, after: str | None, limit: int, status: UserStatus | None
) -> tuple[list[UserPublic], str | None]:
    stmt = select(AppUser).order_by(col(AppUser.username))
    if after is not None:
        stmt = stmt.where(col(AppUser.username) > after)
    if status is not None:
        stmt = stmt.where(AppUser.status == status)
    users, more = await fetch_page(session, stmt, limit)
    items = [await user_public(session, u) for u in users]
    return items, (users[-1].username if more else None)


def _snapshot(user: AppUser, roles: Sequence[Role]) -> dict[str, object]:
    return {
        "username": user.username,
        "full_name": user.full_name,
        "email": user.email,
        "status": user.status,
        "roles": sorted(str(r) for r in roles),
    }


async def _audit_user(
    session: AsyncSession,
    principal: Principal,
    user: AppUser,
    *,
    action: str,
    old: dict[str, object] | None,
    new: dict[str, object],
    reason: str,
    extra_changes: list[dict[str, object]] | None = None,
) -> None:
    changes = field_changes(old, new, USER_FIELDS) + (extra_changes or [])
    await audit.record(
        session,
        principal,
        action=action,
        entity_type="user",
        entity_id=user.username,
        entity_version=user.version,
        changes=changes,
        reason=reason,
    )


# --- account administration ----------------------------------------------------------------------


def _check_password(ctx: AppContext, password: str, username: str, field: str) -> None:
    problems = rules.password_problems(password, username, ctx.settings.password_min_length)
    if problems:
        raise InvalidInput(f"{field} " + "; ".join(problems), field=field)


async def create_user(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: UserCreate
) -> AppUser:
    if await find_user(session, data.username) is not None:
        raise AlreadyExists(
            f"username {data.username!r} is taken (usernames are never reused)",
            rule="AC-1",
            field="username",
        )
    _check_password(ctx, data.password, data.username, "password")
    now = ctx.clock.now()
    user = AppUser(
        username=data.username,
        full_name=data.full_name,
        email=data.email,
        password_hash=await ctx.passwords.hash(data.password),
        password_changed_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    roles = sorted(set(data.roles))
    for role in roles:
        session.add(RoleAssignment(user_id=user.id, role=role, created_at=now))
    await session.flush()
    await _audit_user(
        session,
        principal,
        user,
        action="create",
        old=None,
        new=_snapshot(user, roles),
        reason=data.reason,
        extra_changes=[{"field": "password", "old": None, "new": REDACTED}],
    )
    return user


async def _set_roles(
    session: AsyncSession, user: AppUser, roles: Sequence[Role], now: datetime
) -> None:
    await session.execute(delete(RoleAssignment).where(col(RoleAssignment.user_id) == user.id))
    for role in sorted(set(roles)):
        session.add(RoleAssignment(user_id=user.id, role=role, created_at=now))


async def update_user(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    username: str,
    expected_version: int,
    data: UserUpdate,
) -> AppUser:
    user = await get_user(session, username, lock=True)
    check_version(user, expected_version, f"user {username!r}")
    current_roles = await roles_of(session, user.id)
    old = _snapshot(user, current_roles)
    if data.full_name is not None:
        user.full_name = data.full_name
    if "email" in data.model_fields_set:
        user.email = data.email
    new_roles = sorted(set(data.roles)) if data.roles is not None else current_roles
    if principal.user_id == user.id and Role.admin in current_roles and Role.admin not in new_roles:
        raise Forbidden("administrators cannot remove their own admin role", field="roles")
    new = _snapshot(user, new_roles)
    if new == old:
        return user
    now = ctx.clock.now()
    if new_roles != current_roles:
        await _set_roles(session, user, new_roles, now)
    bump_version(user, now)
    session.add(user)
    await _audit_user(
        session, principal, user, action="update", old=old, new=new, reason=data.reason
    )
    return user


_STATUS_ACTIONS: dict[str, tuple[frozenset[UserStatus], UserStatus]] = {
    "unlock": (frozenset({UserStatus.locked}), UserStatus.active),
    "disable": (frozenset({UserStatus.active, UserStatus.locked}), UserStatus.disabled),
    "enable": (frozenset({UserStatus.disabled}), UserStatus.active),
}


async def change_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    username: str,
    action: str,
    reason: str,
    expected_version: int | None,
) -> AppUser:
    """unlock / disable / enable an account; disabling ends its sessions at once."""
    allowed_from, target = _STATUS_ACTIONS[action]
    user = await get_user(session, username, lock=True)
    check_version(user, expected_version, f"user {username!r}")
    if UserStatus(user.status) not in allowed_from:
        raise InvalidTransition(
            f"cannot {action} user {username!r}: account is {user.status}",
            current_status=str(user.status),
        )
    if action == "disable" and principal.user_id == user.id:
        raise Forbidden("administrators cannot disable their own account")
    roles = await roles_of(session, user.id)
    old = _snapshot(user, roles)
    now = ctx.clock.now()
    user.status = target
    user.failed_attempts = 0
    user.locked_at = None
    bump_version(user, now)
    session.add(user)
    if action == "disable":
        await _end_sessions(session, user.id, now, "account_disabled")
    if action == "unlock":
        session.add(
            AuthEvent(
                event=AuthEventKind.account_unlocked,
                username=user.username,
                user_id=user.id,
                detail=f"by {principal.username}",
                at=now,
            )
        )
    await _audit_user(
        session, principal, user, action=action, old=old, new=_snapshot(user, roles), reason=reason
    )
    return user


async def reset_password(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    username: str,
    new_password: str,
    reason: str,
    expected_version: int | None,
) -> AppUser:
    user = await get_user(session, username, lock=True)
    check_version(user, expected_version, f"user {username!r}")
    _check_password(ctx, new_password, username, "new_password")
    await _store_password(ctx, session, principal, user, new_password, reason)
    if principal.user_id != user.id:
        await _end_sessions(session, user.id, ctx.clock.now(), "password_reset")
    return user


async def change_own_password(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    current_password: str,
    new_password: str,
) -> None:
    if principal.kind != PrincipalKind.user or principal.user_id is None:
        raise Forbidden("only people have passwords")
    user = await session.get(AppUser, principal.user_id, with_for_update=True)
    if user is None:  # pragma: no cover - the session check loaded this user
        raise NotAuthenticated()
    ok, _ = await ctx.passwords.verify(current_password, user.password_hash)
    if not ok:
        # A wrong current password is a password guess like a failed login (AC-5).
        await register_failure(ctx, session, user, event=AuthEventKind.login_failed, client_ip=None)
        raise InvalidInput(
            "current_password is not correct", field="current_password", persist=True
        )
    _check_password(ctx, new_password, user.username, "new_password")
    await _store_password(ctx, session, principal, user, new_password, "password changed by user")


async def _store_password(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    user: AppUser,
    new_password: str,
    reason: str,
) -> None:
    now = ctx.clock.now()
    user.password_hash = await ctx.passwords.hash(new_password)
    user.password_changed_at = now
    bump_version(user, now)
    session.add(user)
    await audit.record(
        session,
        principal,
        action="password",
        entity_type="user",
        entity_id=user.username,
        entity_version=user.version,
        changes=[{"field": "password", "old": REDACTED, "new": REDACTED}],
        reason=reason,
    )


# --- login, sessions -----------------------------------------------------------------------------


async def register_failure(
    ctx: AppContext,
    session: AsyncSession,
    user: AppUser,
    *,
    event: AuthEventKind,
    client_ip: str | None,
) -> bool:
    """Count a failed password (login or signature); lock at the threshold (AC-5).

    Returns True when this failure locked the account."""
    now = ctx.clock.now()
    user.failed_attempts += 1
    session.add(
        AuthEvent(
            event=event,
            username=user.username,
            user_id=user.id,
            client_ip=client_ip,
            at=now,
            detail=f"consecutive failures: {user.failed_attempts}",
        )
    )
    locked = False
    if UserStatus(user.status) == UserStatus.active and rules.should_lock(
        user.failed_attempts, ctx.settings.lockout_threshold
    ):
        roles = await roles_of(session, user.id)
        old = _snapshot(user, roles)
        user.status = UserStatus.locked
        user.locked_at = now
        bump_version(user, now)
        await _end_sessions(session, user.id, now, "account_locked")
        session.add(
            AuthEvent(
                event=AuthEventKind.account_locked,
                username=user.username,
                user_id=user.id,
                client_ip=client_ip,
                at=now,
                detail=f"{user.failed_attempts} consecutive failures",
            )
        )
        await _audit_user(
            session,
            system_principal("lockout"),
            user,
            action="lock",
            old=old,
            new=_snapshot(user, roles),
            reason=f"AC-5: {user.failed_attempts} consecutive failed attempts",
        )
        # QA is alerted through the log until the notification channel exists.
        log.warning(
            "AC-5: account %s locked after %s failed attempts", user.username, user.failed_attempts
        )
        locked = True
    session.add(user)
    return locked


async def login(
    ctx: AppContext,
    session: AsyncSession,
    username: str,
    password: str,
    *,
    terminal: str | None,
    client_ip: str | None,
) -> TokenResponse:
    """OAuth2 password grant. Failures are recorded and committed although the call fails."""
    user = await find_user(session, username, lock=True)
    ok, new_hash = await ctx.passwords.verify(password, user.password_hash if user else None)
    now = ctx.clock.now()
    if user is None:
        session.add(
            AuthEvent(
                event=AuthEventKind.login_failed,
                username=username[:64],
                client_ip=client_ip,
                at=now,
                detail="unknown username",
            )
        )
        raise NotAuthenticated("invalid username or password", persist=True)
    status = UserStatus(user.status)
    if status == UserStatus.disabled:
        session.add(
            AuthEvent(
                event=AuthEventKind.login_failed,
                username=user.username,
                user_id=user.id,
                client_ip=client_ip,
                at=now,
                detail="account disabled",
            )
        )
        raise NotAuthenticated("invalid username or password", persist=True)
    if status == UserStatus.locked:
        session.add(
            AuthEvent(
                event=AuthEventKind.login_failed,
                username=user.username,
                user_id=user.id,
                client_ip=client_ip,
                at=now,
                detail="account locked",
            )
        )
        raise AccountLocked(
            "account is locked after repeated failures; an administrator must unlock it",
            rule="AC-5",
            persist=True,
        )
    if not ok:
        locked = await register_failure(
            ctx, session, user, event=AuthEventKind.login_failed, client_ip=client_ip
        )
        if locked:
            raise AccountLocked(
                "account locked after repeated failures; an administrator must unlock it",
                rule="AC-5",
                persist=True,
            )
        raise NotAuthenticated("invalid username or password", persist=True)
    if new_hash:
        user.password_hash = new_hash
    user.failed_attempts = 0
    user.last_login_at = now
    session.add(user)
    auth_session = AuthSession(
        user_id=user.id,
        created_at=now,
        last_activity_at=now,
        expires_at=now + ctx.settings.session_absolute_timeout,
        terminal=terminal,
        client_ip=client_ip,
    )
    session.add(auth_session)
    session.add(
        AuthEvent(
            event=AuthEventKind.login_succeeded,
            username=user.username,
            user_id=user.id,
            session_id=auth_session.id,
            client_ip=client_ip,
            at=now,
        )
    )
    # Token times follow the wall clock that PyJWT validates them against.
    token, expires_in = ctx.tokens.issue(user.id, auth_session.id, utc_now())
    return TokenResponse(access_token=token, expires_in=expires_in)


async def _end_sessions(
    session: AsyncSession, user_id: uuid.UUID, now: datetime, reason: str
) -> None:
    result = await session.execute(
        select(AuthSession).where(
            AuthSession.user_id == user_id, col(AuthSession.ended_at).is_(None)
        )
    )
    for live in result.scalars():
        live.ended_at = now
        live.end_reason = reason
        session.add(live)


# Built once: every request runs it, and a statement object keeps its cache key.
_SESSION_OF_TOKEN = (
    select(AuthSession, AppUser, RoleAssignment.role)
    .join(AppUser, col(AppUser.id) == AuthSession.user_id)
    .outerjoin(RoleAssignment, col(RoleAssignment.user_id) == AppUser.id)
    .where(
        col(AuthSession.id) == bindparam("session_id"),
        col(AuthSession.user_id) == bindparam("user_id"),
    )
)


async def principal_from_token(ctx: AppContext, session: AsyncSession, token: str) -> Principal:
    """Resolve a bearer token to its live session and user, or 401 (S4, AC-6). Session, user
    and roles come in one statement: every request pays for it."""
    try:
        claims = ctx.tokens.decode(token)
    except TokenError:
        raise NotAuthenticated("invalid or expired access token") from None
    rows = (
        await session.execute(
            _SESSION_OF_TOKEN, {"session_id": claims.session_id, "user_id": claims.user_id}
        )
    ).all()
    if not rows:
        raise NotAuthenticated("session not found")
    auth_session, user = rows[0][0], rows[0][1]
    roles = sorted(Role(row[2]) for row in rows if row[2] is not None)
    now = ctx.clock.now()
    reason = rules.session_end_reason(
        now=now,
        last_activity_at=auth_session.last_activity_at,
        expires_at=auth_session.expires_at,
        ended_at=auth_session.ended_at,
        idle_timeout=ctx.settings.idle_timeout_for(roles),
    )
    if reason is not None:
        if auth_session.ended_at is None:
            auth_session.ended_at = now
            auth_session.end_reason = reason
            session.add(auth_session)
            session.add(
                AuthEvent(
                    event=AuthEventKind.session_expired,
                    user_id=auth_session.user_id,
                    session_id=auth_session.id,
                    at=now,
                    detail=reason,
                )
            )
            raise NotAuthenticated(
                f"session ended ({reason}); sign in again", rule="AC-6", persist=True
            )
        raise NotAuthenticated(
            f"session ended ({auth_session.end_reason}); sign in again", rule="AC-6"
        )
    if UserStatus(user.status) != UserStatus.active:
        raise NotAuthenticated("account is not active")
    if now - auth_session.last_activity_at >= TOUCH_INTERVAL:
        auth_session.last_activity_at = now
        session.add(auth_session)
    return Principal(
        kind=PrincipalKind.user,
        username=user.username,
        full_name=user.full_name,
        roles=frozenset(roles),
        user_id=user.id,
        session_id=auth_session.id,
        terminal=auth_session.terminal,
    )


async def refresh(ctx: AppContext, session: AsyncSession, principal: Principal) -> TokenResponse:
    assert principal.user_id is not None
    assert principal.session_id is not None
    token, expires_in = ctx.tokens.issue(principal.user_id, principal.session_id, utc_now())
    return TokenResponse(access_token=token, expires_in=expires_in)


async def logout(ctx: AppContext, session: AsyncSession, principal: Principal) -> None:
    if principal.session_id is None:
        return
    auth_session = await session.get(AuthSession, principal.session_id)
    if auth_session is None or auth_session.ended_at is not None:
        return
    now = ctx.clock.now()
    auth_session.ended_at = now
    auth_session.end_reason = "logout"
    session.add(auth_session)
    session.add(
        AuthEvent(
            event=AuthEventKind.logout,
            username=principal.username,
            user_id=principal.user_id,
            session_id=auth_session.id,
            at=now,
        )
    )


async def session_remaining(
    ctx: AppContext, session: AsyncSession, principal: Principal
) -> int | None:
    if principal.session_id is None:
        return None
    auth_session = await session.get(AuthSession, principal.session_id)
    if auth_session is None:
        return None
    idle_end = auth_session.last_activity_at + ctx.settings.idle_timeout_for(principal.roles)
    end = min(idle_end, auth_session.expires_at)
    return max(0, int((end - ctx.clock.now()).total_seconds()))
