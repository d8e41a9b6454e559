"""Helpers for versioned regulated records: optimistic concurrency and audited updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from mes.errors import StaleVersion
from mes.ids import parse_uuid
from mes.models import VersionedRecord

T = TypeVar("T")
M = TypeVar("M", bound=SQLModel)


@cache
def keyed_stmt(model: type[M], column: str, lock: bool) -> SelectOfScalar[M]:
    """``model`` rows whose ``column`` equals the bound parameter ``key`` (row-locked with
    ``lock``). Built once per shape: constructing a statement, and the cache key SQLAlchemy
    derives from it, costs more than running a short one."""
    stmt = select(model).where(col(getattr(model, column)) == bindparam("key"))
    return stmt.with_for_update() if lock else stmt


def by_id_or_code(
    model: type[M], code_column: str, code: str, *, lock: bool = False
) -> tuple[SelectOfScalar[M], dict[str, Any]]:
    """The statement and its parameters that find ``model`` rows by business code, or by id
    (API.md: ids are also accepted where codes are)."""
    ident = parse_uuid(code)
    if ident is not None:
        return keyed_stmt(model, "id", lock), {"key": ident}
    return keyed_stmt(model, code_column, lock), {"key": code}


def check_version(record: VersionedRecord, expected: int | None, label: str) -> None:
    """412 when the client's If-Match version is not the stored one (RELIABILITY 2.2)."""
    if expected is not None and record.version != expected:
        raise StaleVersion(
            f"{label} is at version {record.version}, not {expected}; reload and retry",
            headers={"ETag": f'"{record.version}"'},
            current_version=record.version,
        )


def snapshot(record: Any, fields: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in fields}


def apply_update(
    record: VersionedRecord, values: Mapping[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set changed fields, bump the version; return (old, new) snapshots of changed fields."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(record, name)
        if current != value:
            old[name] = current
            new[name] = value
            setattr(record, name, value)
    if new:
        bump_version(record, now)
    return old, new


def bump_version(record: VersionedRecord, now: datetime) -> None:
    """Mark a record as changed: next version, new ``updated_at``."""
    record.version += 1
    record.updated_at = now


async def fetch_page(
    session: AsyncSession, stmt: SelectOfScalar[T], limit: int
) -> tuple[list[T], bool]:
    """One page of an ordered keyset query: (rows, whether more rows follow)."""
    rows = list((await session.execute(stmt.limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit
