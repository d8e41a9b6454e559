"""Pure lot rules: the disposition state machine (DOMAIN 3.3), consumption eligibility
(ID-1), quantity conservation (TR-4) and unit conversion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

import pint

from mes.models import LotStatus, SignatureMeaning, TransactionKind
from mes.units import registry

S = LotStatus
M = SignatureMeaning


@dataclass(frozen=True)
class Transition:
    """A disposition change people may ask for, and the signature it needs."""

    meaning: SignatureMeaning | None
    needs_signature: bool


# (from, to) -> what a person needs to make that change. System-made transitions
# (quarantine -> under_test at first sample, -> consumed at zero, in_rework -> quarantine,
# released -> expired) are made by services, never requested.
MANUAL_TRANSITIONS: dict[tuple[LotStatus, LotStatus], Transition] = {
    (S.quarantine, S.released): Transition(M.released, True),
    (S.under_test, S.released): Transition(M.released, True),
    (S.quarantine, S.conditionally_released): Transition(M.released, True),
    (S.under_test, S.conditionally_released): Transition(M.released, True),
    (S.conditionally_released, S.released): Transition(M.released, True),
    (S.conditionally_released, S.rejected): Transition(M.rejected, True),
    (S.quarantine, S.on_hold): Transition(None, False),
    (S.under_test, S.on_hold): Transition(None, False),
    (S.released, S.on_hold): Transition(None, False),
    (S.conditionally_released, S.on_hold): Transition(None, False),
    (S.on_hold, S.rejected): Transition(M.rejected, True),
    (S.quarantine, S.rejected): Transition(M.rejected, True),
    (S.under_test, S.rejected): Transition(M.rejected, True),
    (S.rejected, S.scrapped): Transition(M.approved, True),
    (S.rejected, S.returned_to_supplier): Transition(M.approved, True),
    (S.rejected, S.in_rework): Transition(M.approved, True),
    (S.expired, S.quarantine): Transition(M.approved, True),
}
# on_hold -> the status it was held from: QA, signed "approved" (handled with the held status).
RELEASE_HOLD = Transition(M.approved, True)

CONSUMABLE = frozenset({S.released})
CONSUMABLE_IF_ALLOWED = frozenset({S.released, S.conditionally_released})
SHIPPABLE = frozenset({S.released})

# Quantity sign of each transaction kind on the lot's remaining quantity.
SIGN: dict[TransactionKind, int] = {
    TransactionKind.received: +1,
    TransactionKind.produced: +1,
    TransactionKind.returned: +1,
    TransactionKind.consumed: -1,
    TransactionKind.sampled: -1,
    TransactionKind.scrapped: -1,
    TransactionKind.shipped: -1,
    TransactionKind.transferred: 0,
    TransactionKind.adjusted: 0,  # signed by the caller
}


def transition_for(
    current: LotStatus, target: LotStatus, held_from: LotStatus | None
) -> Transition | None:
    """The requested change's requirements, or None when the state machine forbids it."""
    if current == S.on_hold and held_from is not None and target == held_from:
        return RELEASE_HOLD
    return MANUAL_TRANSITIONS.get((current, target))


def consumption_problem(
    status: LotStatus,
    *,
    expires_at: datetime | None,
    now: datetime,
    allow_conditional: bool,
) -> str | None:
    """ID-1: why a lot may not be consumed now, or None."""
    allowed = CONSUMABLE_IF_ALLOWED if allow_conditional else CONSUMABLE
    if status not in allowed:
        if status == S.conditionally_released:
            return "lot is conditionally released and this use does not permit that"
        return f"lot is {status}; only released lots can be consumed"
    if expires_at is not None and expires_at <= now:
        return f"lot expired on {expires_at:%Y-%m-%d}"
    return None


def status_after_movement(
    kind: TransactionKind, status: LotStatus, remaining: Decimal, *, is_reversal: bool
) -> tuple[LotStatus, str] | None:
    """The system transition a movement causes (DOMAIN 3.3), as (status, reason), or None:
    released -> consumed at zero, released -> shipped when all shipped, and back to released
    when a reversal refills a lot that such a movement had emptied."""
    if is_reversal:
        if remaining > 0 and status in (S.consumed, S.shipped):
            return S.released, "reversal refilled the lot"
        return None
    if remaining == 0 and status == S.released:
        if kind == TransactionKind.consumed:
            return S.consumed, "quantity reached zero"
        if kind == TransactionKind.shipped:
            return S.shipped, "fully shipped"
    return None


def remaining_after(remaining: Decimal, delta: Decimal) -> Decimal | None:
    """TR-4: the new remaining quantity, or None when it would go below zero."""
    result = remaining + delta
    return result if result >= 0 else None


class UnitMismatch(ValueError):
    """The entered unit cannot be converted to the lot's unit."""


def to_lot_unit(quantity: Decimal, entered_uom: str, lot_uom: str) -> Decimal:
    """Convert an entered quantity to the lot's unit (exact for equal units)."""
    if entered_uom == lot_uom:
        return quantity
    ureg = registry()
    try:
        converted = ureg.Quantity(Decimal(quantity), entered_uom).to(lot_uom)
    except (pint.errors.PintError, ValueError, TypeError, InvalidOperation) as exc:
        raise UnitMismatch(
            f"{entered_uom} cannot be converted to the lot's unit {lot_uom}"
        ) from exc
    return Decimal(converted.magnitude).quantize(Decimal("0.000001"))
