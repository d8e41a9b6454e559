"""Shared column types and mixins. Importing this module sets the constraint naming convention
before any table exists, so Alembic migrations get stable constraint names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Dialect, Identity, Integer, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

from mes.clock import utc_now
from mes.ids import uuid7

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both databases (SQLite stores no offset; we restore it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: all times are timezone-aware UTC (TM-1)")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """Quantities as exact decimals: NUMERIC(20, 6) on PostgreSQL; text on SQLite, whose
    NUMERIC affinity would store them as binary floating point."""

    impl = Numeric(20, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(20, 6))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value).quantize(Decimal("0.000001"))
        return str(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(Decimal("0.000001"))


def seq_column() -> Any:
    """Monotonic integer key for append-only logs (INTEGER PRIMARY KEY on SQLite)."""
    return Column(BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True)


def id_field() -> Any:
    return Field(default_factory=uuid7, primary_key=True)


def utc_field(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kwargs)


class VersionedRecord(SQLModel):
    """A regulated record: UUIDv7 id, optimistic-concurrency version, UTC timestamps."""

    id: uuid.UUID = id_field()
    version: int = Field(default=1, ge=1)
    created_at: datetime = utc_field(default_factory=utc_now)
    updated_at: datetime = utc_field(default_factory=utc_now)


class Role(StrEnum):
    """Human roles (RELIABILITY.md 3.1). ``machine`` is the role of an API key."""

    operator = "operator"
    supervisor = "supervisor"
    planner = "planner"
    qa = "qa"
    admin = "admin"
    machine = "machine"


HUMAN_ROLES: tuple[Role, ...] = (Role.operator, Role.supervisor, Role.planner, Role.qa, Role.admin)
