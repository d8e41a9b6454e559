"""Pure audit rules: canonical JSON, hashing and field-level diffs (AT-2, AT-5)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum

import pytest

from mes.audit.rules import (
    GENESIS_HASH,
    canonical_json,
    entry_hash,
    field_changes,
    to_jsonable,
)


class Colour(StrEnum):
    red = "red"


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    """AT-5: the hashed bytes do not depend on key order."""
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert canonical_json({"a": [1, 2], "b": 1}) == canonical_json({"b": 1, "a": [1, 2]})


def test_times_are_utc_with_z_whatever_the_offset() -> None:
    """TM-1: the same instant in two zones canonicalises identically."""
    utc = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    cet = utc.astimezone(timezone(timedelta(hours=1)))
    assert to_jsonable(utc) == to_jsonable(cet) == "2026-11-25T10:00:00.000000Z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("1.50"), "1.50"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Colour.red, "red"),
        ({"x"}, ["x"]),
        (None, None),
        (True, True),
    ],
)
def test_to_jsonable(value: object, expected: object) -> None:
    assert to_jsonable(value) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        to_jsonable(bad)


def test_unknown_types_are_refused() -> None:
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_entry_hash_chains_on_previous_hash() -> None:
    """AT-5: the same content under another predecessor hashes differently."""
    content = {"action": "create", "entity_id": "R-101"}
    first = entry_hash(GENESIS_HASH, content)
    assert len(first) == 64
    assert entry_hash(first, content) != first
    assert entry_hash(GENESIS_HASH, dict(content, action="update")) != first


def test_field_changes_lists_only_changed_fields() -> None:
    """AT-2: field-level old and new values."""
    old = {"name": "Reactor", "status": "idle", "asset_no": None}
    new = {"name": "Reactor", "status": "down", "asset_no": "A-1"}
    assert field_changes(old, new, ("name", "status", "asset_no")) == [
        {"field": "status", "old": "idle", "new": "down"},
        {"field": "asset_no", "old": None, "new": "A-1"},
    ]


def test_field_changes_on_create_skips_empty_fields() -> None:
    changes = field_changes(None, {"name": "R", "asset_no": None}, ("name", "asset_no"))
    assert changes == [{"field": "name", "old": None, "new": "R"}]
