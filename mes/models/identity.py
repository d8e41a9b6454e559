"""Users, role assignments, machine API keys, server-side sessions and the auth event log."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from mes.clock import utc_now
from mes.models.base import VersionedRecord, id_field, seq_column, utc_field


class UserStatus(StrEnum):
    active = "active"
    locked = "locked"
    disabled = "disabled"


class AppUser(VersionedRecord, table=True):
    """One account per person; usernames are never reused and accounts never deleted (AC-1)."""

    __tablename__ = "app_user"

    username: str = Field(max_length=64, unique=True, index=True)
    full_name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=254)
    password_hash: str = Field(max_length=512)
    status: UserStatus = Field(default=UserStatus.active, max_length=20, sa_type=String(20))
    failed_attempts: int = 0
    locked_at: datetime | None = utc_field(default=None)
    password_changed_at: datetime | None = utc_field(default=None)
    last_login_at: datetime | None = utc_field(default=None)


class RoleAssignment(SQLModel, table=True):
    """A role held by a user (all sites)."""

    __tablename__ = "role_assignment"
    __table_args__ = (UniqueConstraint("user_id", "role"),)

    id: uuid.UUID = id_field()
    user_id: uuid.UUID = Field(foreign_key="app_user.id", index=True)
    role: str = Field(max_length=20)
    created_at: datetime = utc_field(default_factory=utc_now)


class ApiKey(VersionedRecord, table=True):
    """A machine credential: 256-bit secret stored as SHA-256, scoped to named sources."""

    __tablename__ = "api_key"

    name: str = Field(max_length=64, unique=True, index=True)
    key_prefix: str = Field(max_length=16, index=True)
    key_hash: str = Field(max_length=64, unique=True)
    sources: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=64)
    revoked_at: datetime | None = utc_field(default=None)
    last_used_at: datetime | None = utc_field(default=None)


class AuthSession(SQLModel, table=True):
    """Server-side session behind each bearer token: idle and absolute timeouts, logout (AC-6)."""

    __tablename__ = "auth_session"

    id: uuid.UUID = id_field()
    user_id: uuid.UUID = Field(foreign_key="app_user.id", index=True)
    created_at: datetime = utc_field(default_factory=utc_now)
    last_activity_at: datetime = utc_field(default_factory=utc_now)
    expires_at: datetime = utc_field()
    ended_at: datetime | None = utc_field(default=None)
    end_reason: str | None = Field(default=None, max_length=40)
    terminal: str | None = Field(default=None, max_length=100)
    client_ip: str | None = Field(default=None, max_length=64)


class AuthEventKind(StrEnum):
    login_succeeded = "login_succeeded"
    login_failed = "login_failed"
    account_locked = "account_locked"
    account_unlocked = "account_unlocked"
    logout = "logout"
    session_expired = "session_expired"
    signature_failed = "signature_failed"
    api_key_rejected = "api_key_rejected"


class AuthEvent(SQLModel, table=True):
    """Append-only log of authentication events (AC-5)."""

    __tablename__ = "auth_event"

    seq: int | None = Field(default=None, sa_column=seq_column())
    at: datetime = utc_field(default_factory=utc_now)
    event: AuthEventKind = Field(max_length=30, sa_type=String(30))
    username: str | None = Field(default=None, max_length=64)
    user_id: uuid.UUID | None = Field(default=None)
    session_id: uuid.UUID | None = Field(default=None)
    client_ip: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=500)
