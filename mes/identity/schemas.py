"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from mes.identity.rules import USERNAME_PATTERN
from mes.models import Role, UserStatus
from mes.schemas import InputModel

Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN, max_length=64)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class Body(InputModel):
    """Request body: unknown fields and NUL characters refused."""


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserCreate(Body):
    username: Username
    full_name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None
    ) = None
    password: Password
    roles: list[Role] = Field(default_factory=list, max_length=5)
    reason: Reason = "account created"


class UserUpdate(Body):
    full_name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = None
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None
    ) = None
    roles: list[Role] | None = Field(default=None, max_length=5)
    reason: Reason


class UserAction(Body):
    reason: Reason


class PasswordReset(Body):
    new_password: Password
    reason: Reason


class PasswordChange(Body):
    current_password: Password
    new_password: Password


class UserPublic(BaseModel):
    username: str
    full_name: str
    email: str | None
    roles: list[Role]
    status: UserStatus
    failed_attempts: int
    locked_at: datetime | None
    last_login_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class UserList(BaseModel):
    items: list[UserPublic]
    next_cursor: str | None


class Me(BaseModel):
    username: str
    full_name: str
    kind: str
    roles: list[Role]
    session_expires_in: int | None = None


class ApiKeyCreate(Body):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    sources: list[SourceName] = Field(min_length=1, max_length=100)
    reason: Reason = "machine key issued"


class ApiKeyPublic(BaseModel):
    name: str
    key_prefix: str
    sources: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    version: int


class ApiKeyIssued(ApiKeyPublic):
    api_key: str = Field(description="The secret; shown only in this response.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
    next_cursor: str | None
