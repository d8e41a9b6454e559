"""Pure rules of work orders and operations: the state machines of DOMAIN 3.1 and 3.2,
parameter limit evaluation (PROC-2), BOM tolerance (TR-1) and reconciliation (PR-2)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from mes.models import OperationStatus as Op
from mes.models import WorkOrderStatus as Wo

# action -> (allowed from-states, to-state)
ORDER_ACTIONS: dict[str, tuple[frozenset[Wo], Wo]] = {
    "release": (frozenset({Wo.draft}), Wo.released),
    "cancel": (frozenset({Wo.draft, Wo.released}), Wo.cancelled),
    "start": (frozenset({Wo.released}), Wo.in_progress),
    "hold": (frozenset({Wo.in_progress}), Wo.held),
    "resume": (frozenset({Wo.held}), Wo.in_progress),
    "complete": (frozenset({Wo.in_progress}), Wo.completed),
    "close": (frozenset({Wo.completed}), Wo.closed),
}

OPERATION_ACTIONS: dict[str, tuple[frozenset[Op], Op]] = {
    "ready": (frozenset({Op.waiting}), Op.ready),
    "start": (frozenset({Op.ready}), Op.running),
    "pause": (frozenset({Op.running}), Op.paused),
    "resume": (frozenset({Op.paused}), Op.running),
    "hold": (frozenset({Op.running}), Op.held),
    "release_hold": (frozenset({Op.held}), Op.running),
    "complete": (frozenset({Op.running}), Op.completed),
    "verify": (frozenset({Op.completed}), Op.verified),
    "abort": (frozenset({Op.waiting, Op.ready}), Op.aborted),
}

# Work that may be recorded against an operation (consume, record, report output).
RECORDING = frozenset({Op.running})
# An operation in one of these no longer blocks the next one or the order's completion.
DONE = frozenset({Op.completed, Op.verified, Op.skipped})


def order_target(action: str, current: Wo) -> Wo | None:
    allowed, target = ORDER_ACTIONS[action]
    return target if current in allowed else None


def operation_target(action: str, current: Op) -> Op | None:
    allowed, target = OPERATION_ACTIONS[action]
    return target if current in allowed else None


def operation_done(status: Op, requires_verification: bool) -> bool:
    """Whether an operation lets the next one start: completed (and verified when the work
    master asks for a second person), or skipped."""
    if status in (Op.verified, Op.skipped):
        return True
    return status == Op.completed and not requires_verification


def limit_state(spec: dict[str, Any], value: Decimal) -> str:
    """``action`` outside the validated (action) limits, ``alert`` outside the alert limits,
    ``ok`` otherwise. Limits are inclusive: a value equal to a limit is within it."""

    def outside(low_key: str, high_key: str) -> bool:
        low, high = spec.get(low_key), spec.get(high_key)
        return (low is not None and value < Decimal(str(low))) or (
            high is not None and value > Decimal(str(high))
        )

    if outside("action_low", "action_high"):
        return "action"
    if outside("alert_low", "alert_high"):
        return "alert"
    return "ok"


def bom_window(line: dict[str, Any], order_qty: Decimal) -> tuple[Decimal, Decimal, Decimal]:
    """(expected, lowest accepted, highest accepted) consumption of a BOM line for an order."""
    expected = Decimal(str(line["qty_per_unit"])) * order_qty
    tolerance = expected * Decimal(str(line.get("tolerance_pct", 0))) / Decimal(100)
    return expected, expected - tolerance, expected + tolerance


def reconciliation_problem(
    started: Decimal, good: Decimal, scrap: Decimal, sampled: Decimal, tolerance_pct: Decimal
) -> str | None:
    """PR-2: started = good + scrap + samples, within tolerance."""
    accounted = good + scrap + sampled
    allowed = started * tolerance_pct / Decimal(100)
    if abs(started - accounted) > allowed:
        return (
            f"started {started} but good {good} + scrap {scrap} + samples {sampled} = "
            f"{accounted} (tolerance {tolerance_pct}%)"
        )
    return None
