"""Pure rules of mes/work/rules.py: the work order and operation state machines (DOMAIN 3.1,
3.2; AC-3), parameter limit states with inclusive limits (PROC-2), the BOM consumption window
(TR-1) and the quantity reconciliation (PR-2)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from mes.models import OperationStatus as Op
from mes.models import WorkOrderStatus as Wo
from mes.work import rules

# DOMAIN 3.1 rows that are actions of the API (abort is not offered yet).
ORDER_TABLE: dict[str, tuple[set[Wo], Wo]] = {
    "release": ({Wo.draft}, Wo.released),
    "cancel": ({Wo.draft, Wo.released}, Wo.cancelled),
    "start": ({Wo.released}, Wo.in_progress),
    "hold": ({Wo.in_progress}, Wo.held),
    "resume": ({Wo.held}, Wo.in_progress),
    "complete": ({Wo.in_progress}, Wo.completed),
    "close": ({Wo.completed}, Wo.closed),
}

# DOMAIN 3.2 rows that are actions (skip and abort are not offered yet).
OPERATION_TABLE: dict[str, tuple[set[Op], Op]] = {
    "ready": ({Op.waiting}, Op.ready),
    "start": ({Op.ready}, Op.running),
    "pause": ({Op.running}, Op.paused),
    "resume": ({Op.paused}, Op.running),
    "hold": ({Op.running}, Op.held),
    "release_hold": ({Op.held}, Op.running),
    "complete": ({Op.running}, Op.completed),
    "verify": ({Op.completed}, Op.verified),
    # An order cancelled before it started aborts its unstarted operations (DOMAIN 3.1).
    "abort": ({Op.waiting, Op.ready}, Op.aborted),
}


@pytest.mark.parametrize("action", sorted(ORDER_TABLE))
@pytest.mark.parametrize("current", list(Wo))
def test_order_transitions_follow_domain_3_1(action: str, current: Wo) -> None:
    """DOMAIN 3.1: an order action leads to its target from the listed states only; every other
    state refuses it (None)."""
    allowed, target = ORDER_TABLE[action]
    expected = target if current in allowed else None
    assert rules.order_target(action, current) == expected


def test_order_actions_are_exactly_the_domain_3_1_actions() -> None:
    """DOMAIN 3.1: no action beyond the table (unlisted transitions are rejected)."""
    assert set(rules.ORDER_ACTIONS) == set(ORDER_TABLE)


def test_terminal_order_states_allow_nothing() -> None:
    """DOMAIN 3.1: closed and cancelled orders never move again."""
    for state in (Wo.closed, Wo.cancelled, Wo.aborted):
        assert all(rules.order_target(a, state) is None for a in rules.ORDER_ACTIONS)


@pytest.mark.parametrize("action", sorted(a for a in OPERATION_TABLE if a != "hold"))
@pytest.mark.parametrize("current", list(Op))
def test_operation_transitions_follow_domain_3_2(action: str, current: Op) -> None:
    """DOMAIN 3.2 / AC-3: an out-of-sequence operation action is refused (None)."""
    allowed, target = OPERATION_TABLE[action]
    expected = target if current in allowed else None
    assert rules.operation_target(action, current) == expected


def test_operation_hold_from_running() -> None:
    """DOMAIN 3.2: running -> held (CPP out of limits)."""
    assert rules.operation_target("hold", Op.running) == Op.held
    for state in (Op.waiting, Op.ready, Op.held, Op.completed, Op.verified, Op.skipped):
        assert rules.operation_target("hold", state) is None


def test_operation_hold_not_from_paused() -> None:
    """DOMAIN 3.2 / AC-3: paused -> held is not a listed transition."""
    assert rules.operation_target("hold", Op.paused) is None


def test_operation_actions_are_exactly_the_domain_3_2_actions() -> None:
    """DOMAIN 3.2 / AC-3: no operation action beyond the table."""
    assert set(rules.OPERATION_ACTIONS) == set(OPERATION_TABLE)


@pytest.mark.parametrize(
    ("status", "verification", "done"),
    [
        (Op.waiting, False, False),
        (Op.ready, False, False),
        (Op.running, False, False),
        (Op.paused, False, False),
        (Op.held, False, False),
        (Op.completed, False, True),
        (Op.completed, True, False),
        (Op.verified, True, True),
        (Op.skipped, True, True),
        (Op.aborted, False, False),
    ],
)
def test_operation_done_needs_verification_where_asked(
    status: Op, verification: bool, done: bool
) -> None:
    """DOMAIN 3.1 complete guard / ES-5: completed counts as done only when no second-person
    verification is required; verified and skipped always count."""
    assert rules.operation_done(status, verification) is done


# --- limit states (PROC-2) -----------------------------------------------------------------

MELT: dict[str, Any] = {  # as frozen in a work order snapshot: strings
    "target": "160",
    "alert_low": "145",
    "alert_high": "175",
    "action_low": "140",
    "action_high": "180",
}


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("160", "ok"),
        ("145", "ok"),  # alert limits are inclusive
        ("175", "ok"),
        ("144.999999", "alert"),
        ("175.000001", "alert"),
        ("140", "alert"),  # action limits are inclusive: still within
        ("180", "alert"),
        ("139.999999", "action"),
        ("180.000001", "action"),
        ("-5", "action"),
    ],
)
def test_limit_state_boundaries_are_inclusive(value: str, state: str) -> None:
    """PROC-2: a value equal to a limit is within it; beyond the action limits is ``action``,
    beyond the alert limits only ``alert``."""
    assert rules.limit_state(MELT, Decimal(value)) == state


def test_limit_state_with_open_limits() -> None:
    """PROC-2: a missing limit is open (devol_pressure has only action_high)."""
    spec = {"target": "2", "action_high": "5"}
    assert rules.limit_state(spec, Decimal("-1000")) == "ok"
    assert rules.limit_state(spec, Decimal("5")) == "ok"
    assert rules.limit_state(spec, Decimal("5.000001")) == "action"
    assert rules.limit_state({"target": "1"}, Decimal("99999")) == "ok"


def test_limit_state_numeric_limits_and_alert_only() -> None:
    """PROC-2: numeric (not string) limits work alike; alert limits alone never give action."""
    spec = {"alert_low": 15, "alert_high": 25.5}
    assert rules.limit_state(spec, Decimal("25.5")) == "ok"
    assert rules.limit_state(spec, Decimal("25.6")) == "alert"
    assert rules.limit_state(spec, Decimal("1")) == "alert"


# --- BOM window (TR-1) ---------------------------------------------------------------------


def test_bom_window_from_quantity_per_unit_and_tolerance() -> None:
    """TR-1: expected = qty_per_unit x order quantity, +/- tolerance_pct of it."""
    line = {"material_code": "LLA", "qty_per_unit": "0.9", "uom": "kg", "tolerance_pct": "1"}
    assert rules.bom_window(line, Decimal("50")) == (
        Decimal("45.0"),
        Decimal("44.55"),
        Decimal("45.45"),
    )


def test_bom_window_without_tolerance_is_exact() -> None:
    """TR-1: no tolerance_pct means exactly the expected quantity."""
    line = {"material_code": "NDL-38RC-19", "qty_per_unit": "1", "uom": "each"}
    assert rules.bom_window(line, Decimal("100")) == (
        Decimal("100"),
        Decimal("100"),
        Decimal("100"),
    )


def test_bom_window_small_quantities_stay_exact() -> None:
    """TR-1: decimal arithmetic, no binary rounding (0.2 g/kg x 5 kg, 5 %)."""
    line = {"material_code": "SNOCT", "qty_per_unit": "0.2", "uom": "g", "tolerance_pct": "5"}
    expected, low, high = rules.bom_window(line, Decimal("5"))
    assert (expected, low, high) == (Decimal("1.0"), Decimal("0.95"), Decimal("1.05"))


# --- reconciliation (PR-2) -----------------------------------------------------------------


def test_reconciliation_balanced() -> None:
    """PR-2: started = good + scrap + samples reconciles."""
    d = Decimal
    assert rules.reconciliation_problem(d("50"), d("48.5"), d("1"), d("0.5"), d("0")) is None


def test_reconciliation_tolerance_is_inclusive() -> None:
    """PR-2: a gap equal to the tolerance is accepted; a larger one is a problem."""
    d = Decimal
    assert rules.reconciliation_problem(d("100"), d("98"), d("0"), d("0"), d("2")) is None
    problem = rules.reconciliation_problem(d("100"), d("97.99"), d("0"), d("0"), d("2"))
    assert problem == ("started 100 but good 97.99 + scrap 0 + samples 0 = 97.99 (tolerance 2%)")


def test_reconciliation_more_accounted_than_started_is_a_problem() -> None:
    """PR-2: the balance holds both ways: more output than started does not reconcile."""
    d = Decimal
    problem = rules.reconciliation_problem(d("10"), d("10"), d("1"), d("0"), d("0"))
    assert problem is not None
    assert "= 11" in problem


def test_reconciliation_zero_tolerance_needs_exact_balance() -> None:
    """PR-2: with no tolerance the smallest gap is a problem."""
    d = Decimal
    assert rules.reconciliation_problem(d("10"), d("9.999999"), d("0"), d("0"), d("0"))
    assert rules.reconciliation_problem(d("10"), d("9"), d("0.5"), d("0.5"), d("0")) is None
