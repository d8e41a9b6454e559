"""Helpers for versioned regulated records: optimistic concurrency and audited updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from mes.errors import StaleVersion
from mes.models import VersionedRecord


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
        record.version += 1
        record.updated_at = now
    return old, new
