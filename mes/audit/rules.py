"""Pure rules of the audit trail: canonical JSON, field-level diffs and the hash chain (AT-5)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from mes.clock import iso_z

GENESIS_HASH = "0" * 64


def to_jsonable(value: Any) -> Any:
    """A JSON-safe, deterministic form: UTC ``Z`` times, decimals and ids as strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("non-finite number cannot be audited")
        return value
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [to_jsonable(v) for v in value]
        return sorted(items, key=canonical_json) if isinstance(value, set | frozenset) else items
    raise TypeError(f"cannot audit a value of type {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the exact bytes that are hashed."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(content: Mapping[str, Any]) -> str:
    """AT-5: ``SHA-256(canonical_json(entry))`` of everything an entry says, without its
    place in the chain. Computed when the entry is recorded."""
    return sha256_hex(canonical_json(content))


def chain_hash(prev_hash: str, entry_content_hash: str) -> str:
    """AT-5: ``SHA-256(prev_hash || content_hash)`` (hex text), the link of an entry to its
    predecessor. PostgreSQL computes the same in ``mes_audit_seal`` (migration 0005)."""
    return sha256_hex(prev_hash + entry_content_hash)


def entry_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    """AT-5, entries chained before content hashes were stored (``content_hash`` is NULL):
    ``SHA-256(prev_hash || canonical_json(entry with prev_hash, without its own hash))``."""
    return sha256_hex(prev_hash + canonical_json(content))


def field_changes(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, fields: Iterable[str]
) -> list[dict[str, Any]]:
    """Field-level ``{field, old, new}`` for every field whose value differs (AT-2)."""
    changes: list[dict[str, Any]] = []
    for name in fields:
        before = to_jsonable(old.get(name)) if old is not None else None
        after = to_jsonable(new.get(name)) if new is not None else None
        if old is None or new is None or before != after:
            if old is None and after is None:
                continue
            changes.append({"field": name, "old": before, "new": after})
    return changes
