"""Pure rules of the plant model (mes/equipment/rules.py): ISA-95 nesting, kinds per level,
manual status transitions and PROC-3 usability of units.

The expected tables below are written out independently of the module under test, so a
changed rule table fails here instead of being mirrored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product

import pytest

from mes.equipment.rules import (
    hierarchy_problem,
    kind_problem,
    status_transition_problem,
    usability_problems,
)
from mes.models import EquipmentKind, EquipmentLevel, EquipmentStatus

L = EquipmentLevel
K = EquipmentKind
S = EquipmentStatus

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

EXPECTED_PARENT: dict[EquipmentLevel, EquipmentLevel | None] = {
    L.enterprise: None,
    L.site: L.enterprise,
    L.area: L.site,
    L.work_center: L.area,
    L.room: L.area,
    L.unit: L.work_center,
}

EXPECTED_KINDS: dict[EquipmentLevel, set[EquipmentKind]] = {
    L.work_center: {K.process_cell, K.production_line, K.work_cell, K.storage_zone},
    L.unit: {K.unit, K.storage_unit, K.equipment_module, K.control_module},
}

EXPECTED_MANUAL: dict[EquipmentStatus, set[EquipmentStatus]] = {
    S.idle: {S.down, S.cleaning, S.maintenance},
    S.running: {S.idle, S.down, S.cleaning},
    S.down: {S.maintenance, S.idle},
    S.cleaning: {S.idle, S.down},
    S.maintenance: {S.idle, S.down},
}

PARENT_CHOICES: list[EquipmentLevel | None] = [None, *EquipmentLevel]


# --- hierarchy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "parent"),
    list(product(EquipmentLevel, PARENT_CHOICES)),
    ids=lambda v: str(v) if v is not None else "none",
)
def test_hierarchy_problem_for_every_level_pair(
    level: EquipmentLevel, parent: EquipmentLevel | None
) -> None:
    """ISA-95: enterprise > site > area > (work_center | room); work_center > unit."""
    problem = hierarchy_problem(level, parent)
    if EXPECTED_PARENT[level] == parent:
        assert problem is None
    else:
        assert problem, f"{level} under {parent} must be refused"
        if EXPECTED_PARENT[level] is not None:
            assert str(EXPECTED_PARENT[level]) in problem
        else:
            assert "root" in problem


def test_every_level_but_enterprise_needs_a_parent() -> None:
    """Only the enterprise is a root; every other level refuses having no parent."""
    roots = [level for level in EquipmentLevel if hierarchy_problem(level, None) is None]
    assert roots == [L.enterprise]


# --- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "kind"),
    list(product(EquipmentLevel, [None, *EquipmentKind])),
    ids=lambda v: str(v) if v is not None else "none",
)
def test_kind_problem(level: EquipmentLevel, kind: EquipmentKind | None) -> None:
    """Work centers and units take a kind from their own list; other levels take none."""
    problem = kind_problem(level, kind)
    allowed = EXPECTED_KINDS.get(level)
    if kind is None:
        assert problem is None
    elif allowed is None:
        assert problem is not None
        assert str(level) in problem
    elif kind in allowed:
        assert problem is None
    else:
        assert problem is not None
        assert str(kind) in problem
        for name in allowed:
            assert str(name) in problem


# --- status --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"), list(product(EquipmentStatus, EquipmentStatus)), ids=str
)
def test_status_transition_problem(current: EquipmentStatus, target: EquipmentStatus) -> None:
    """Manual status changes follow the transition table; no self-transitions."""
    problem = status_transition_problem(current, target)
    if target != S.running and target in EXPECTED_MANUAL[current]:
        assert problem is None
    else:
        assert problem is not None


@pytest.mark.parametrize("current", list(EquipmentStatus), ids=str)
def test_running_is_never_a_manual_target(current: EquipmentStatus) -> None:
    """'running' is entered only by starting an operation or from telemetry."""
    problem = status_transition_problem(current, S.running)
    assert problem is not None
    assert "running" in problem


def test_transition_problem_names_both_statuses() -> None:
    problem = status_transition_problem(S.down, S.cleaning)
    assert problem is not None
    assert "down" in problem
    assert "cleaning" in problem


def test_same_status_is_refused() -> None:
    problem = status_transition_problem(S.idle, S.idle)
    assert problem is not None
    assert "already" in problem


# --- usability (PROC-3) ----------------------------------------------------------------------


def _unit(**overrides: object) -> list[str]:
    values: dict[str, object] = {
        "level": L.unit,
        "status": S.idle,
        "is_active": True,
        "qualified_until": NOW + timedelta(days=180),
        "calibration_due_at": NOW + timedelta(days=30),
        "maintenance_due_at": NOW + timedelta(days=60),
        "now": NOW,
    }
    values.update(overrides)
    return usability_problems(**values)  # type: ignore[arg-type]


def test_qualified_calibrated_idle_unit_is_usable() -> None:
    """PROC-3: a qualified unit within calibration and maintenance has no problems."""
    assert _unit() == []


@pytest.mark.parametrize("status", [S.idle, S.running, S.cleaning], ids=str)
def test_working_statuses_do_not_block(status: EquipmentStatus) -> None:
    assert _unit(status=status) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"calibration_due_at": NOW - timedelta(days=1)},
            ["calibration overdue"],
            id="calibration-overdue",
        ),
        pytest.param(
            {"calibration_due_at": NOW}, ["calibration overdue"], id="calibration-due-now"
        ),
        pytest.param(
            {"maintenance_due_at": NOW - timedelta(minutes=1)},
            ["maintenance overdue"],
            id="maintenance-overdue",
        ),
        pytest.param(
            {"qualified_until": NOW - timedelta(days=1)},
            ["qualification expired"],
            id="qualification-expired",
        ),
        pytest.param(
            {"qualified_until": NOW}, ["qualification expired"], id="qualification-ends-now"
        ),
        pytest.param({"qualified_until": None}, ["not qualified"], id="never-qualified"),
        pytest.param({"status": S.down}, ["status is down"], id="down"),
        pytest.param({"status": S.maintenance}, ["status is maintenance"], id="maintenance"),
        pytest.param({"is_active": False}, ["retired"], id="retired"),
    ],
)
def test_usability_problems(overrides: dict[str, object], expected: list[str]) -> None:
    """PROC-3: no start on unqualified, overdue-calibration or unavailable equipment."""
    assert _unit(**overrides) == expected


def test_no_due_dates_means_nothing_overdue() -> None:
    """Equipment without calibration or maintenance plans is not overdue for them."""
    assert _unit(calibration_due_at=None, maintenance_due_at=None) == []


def test_all_problems_are_reported_together() -> None:
    """PROC-3: every reason is listed, not only the first."""
    problems = _unit(
        status=S.down,
        is_active=False,
        qualified_until=None,
        calibration_due_at=NOW - timedelta(days=1),
        maintenance_due_at=NOW - timedelta(days=1),
    )
    assert set(problems) == {
        "retired",
        "status is down",
        "not qualified",
        "calibration overdue",
        "maintenance overdue",
    }


@pytest.mark.parametrize("level", [lvl for lvl in EquipmentLevel if lvl != L.unit], ids=str)
def test_non_units_are_never_blocked(level: EquipmentLevel) -> None:
    """Only units are used for production; other levels report no problems at all."""
    assert (
        usability_problems(
            level=level,
            status=S.down,
            is_active=False,
            qualified_until=None,
            calibration_due_at=NOW - timedelta(days=1),
            maintenance_due_at=NOW - timedelta(days=1),
            now=NOW,
        )
        == []
    )
