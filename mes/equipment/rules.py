"""Pure rules of the plant model."""

from __future__ import annotations

from datetime import datetime

from mes.models import EquipmentKind, EquipmentLevel, EquipmentStatus

L = EquipmentLevel
K = EquipmentKind
S = EquipmentStatus

PARENT_LEVEL: dict[EquipmentLevel, EquipmentLevel | None] = {
    L.enterprise: None,
    L.site: L.enterprise,
    L.area: L.site,
    L.work_center: L.area,
    L.room: L.area,
    L.unit: L.work_center,
}

KINDS: dict[EquipmentLevel, frozenset[EquipmentKind]] = {
    L.work_center: frozenset({K.process_cell, K.production_line, K.work_cell, K.storage_zone}),
    L.unit: frozenset({K.unit, K.storage_unit, K.equipment_module, K.control_module}),
}

# Status changes made by people. ``running`` is entered only by starting an operation or
# from equipment telemetry, never typed in.
MANUAL_STATUS_TRANSITIONS: dict[EquipmentStatus, frozenset[EquipmentStatus]] = {
    S.idle: frozenset({S.down, S.cleaning, S.maintenance}),
    S.running: frozenset({S.idle, S.down, S.cleaning}),
    S.down: frozenset({S.maintenance, S.idle}),
    S.cleaning: frozenset({S.idle, S.down}),
    S.maintenance: frozenset({S.idle, S.down}),
}

CLEANROOM_CLASSES = frozenset(f"ISO {n}" for n in range(1, 10))


def hierarchy_problem(level: EquipmentLevel, parent_level: EquipmentLevel | None) -> str | None:
    """Why a node of ``level`` cannot sit under ``parent_level``, or None (ISA-95 levels)."""
    expected = PARENT_LEVEL[level]
    if expected is None and parent_level is not None:
        return "an enterprise is the root and has no parent"
    if expected is not None and parent_level != expected:
        return f"a {level} must sit under a {expected}, not under {parent_level or 'nothing'}"
    return None


def kind_problem(level: EquipmentLevel, kind: EquipmentKind | None) -> str | None:
    allowed = KINDS.get(level)
    if allowed is None:
        return f"a {level} has no kind" if kind is not None else None
    if kind is None:
        return None
    if kind not in allowed:
        return f"kind {kind} is not valid for a {level}; use one of {', '.join(sorted(allowed))}"
    return None


def status_transition_problem(current: EquipmentStatus, target: EquipmentStatus) -> str | None:
    if target == S.running:
        return "equipment enters 'running' only when an operation starts or telemetry says so"
    if target == current:
        return f"equipment is already {current}"
    if target not in MANUAL_STATUS_TRANSITIONS[current]:
        return f"equipment cannot go from {current} to {target}"
    return None


# What a machine's own state signal can say; cleaning and maintenance are begun and ended by
# people, and telemetry does not override them.
TELEMETRY_STATUSES = frozenset({S.idle, S.running, S.down})


def telemetry_status_problem(current: EquipmentStatus, target: EquipmentStatus) -> str | None:
    """Why a state reported by the equipment's own signal cannot be applied, or None."""
    if target not in TELEMETRY_STATUSES:
        return f"telemetry reports only {', '.join(sorted(TELEMETRY_STATUSES))}, not {target}"
    if target == current:
        return f"equipment is already {current}"
    if current in (S.cleaning, S.maintenance):
        return f"equipment is in {current}, which people end, not telemetry"
    return None


def usability_problems(
    *,
    level: EquipmentLevel,
    status: EquipmentStatus | None,
    is_active: bool,
    qualified_until: datetime | None,
    calibration_due_at: datetime | None,
    maintenance_due_at: datetime | None,
    now: datetime,
) -> list[str]:
    """PROC-3: reasons a unit may not be used for production now (empty when usable)."""
    if level != L.unit:
        return []
    problems: list[str] = []
    if not is_active:
        problems.append("retired")
    if status in (S.down, S.maintenance):
        problems.append(f"status is {status}")
    if qualified_until is None:
        problems.append("not qualified")
    elif qualified_until <= now:
        problems.append("qualification expired")
    if calibration_due_at is not None and calibration_due_at <= now:
        problems.append("calibration overdue")
    if maintenance_due_at is not None and maintenance_due_at <= now:
        problems.append("maintenance overdue")
    return problems
