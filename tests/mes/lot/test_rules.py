"""Pure lot rules (mes/lot/rules.py): the disposition state machine of DOMAIN 3.3, ID-1
consumption eligibility and expiry at use, TR-4 quantity conservation and unit conversion
to the lot's unit.

The expected tables below are written out from DOMAIN.md independently of the module under
test, so a changed rule table fails here instead of being mirrored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import product

import pytest

from mes.lot.rules import (
    MANUAL_TRANSITIONS,
    RELEASE_HOLD,
    SIGN,
    UnitMismatch,
    consumption_problem,
    remaining_after,
    status_after_movement,
    to_lot_unit,
    transition_for,
)
from mes.models import LotStatus, SignatureMeaning, TransactionKind

S = LotStatus
M = SignatureMeaning

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# DOMAIN 3.3: (from, to) -> e-signature meaning (None: no signature) for changes a person asks
# for. System-made transitions (new -> quarantine, quarantine -> under_test, released ->
# expired/consumed/shipped, in_rework -> quarantine, shipped -> returned) are not listed.
EXPECTED_MANUAL: dict[tuple[LotStatus, LotStatus], SignatureMeaning | None] = {
    (S.quarantine, S.released): M.released,
    (S.under_test, S.released): M.released,
    (S.quarantine, S.conditionally_released): M.released,
    (S.under_test, S.conditionally_released): M.released,
    (S.conditionally_released, S.released): M.released,
    (S.conditionally_released, S.rejected): M.rejected,
    (S.quarantine, S.on_hold): None,
    (S.under_test, S.on_hold): None,
    (S.released, S.on_hold): None,
    (S.conditionally_released, S.on_hold): None,
    (S.on_hold, S.rejected): M.rejected,
    (S.quarantine, S.rejected): M.rejected,
    (S.under_test, S.rejected): M.rejected,
    (S.rejected, S.scrapped): M.approved,
    (S.rejected, S.returned_to_supplier): M.approved,
    (S.rejected, S.in_rework): M.approved,
    (S.expired, S.quarantine): M.approved,
}

# A hold may be placed from these statuses, and lifting it returns there.
HOLDABLE = (S.quarantine, S.under_test, S.released, S.conditionally_released)

FORBIDDEN = [pair for pair in product(LotStatus, LotStatus) if pair not in EXPECTED_MANUAL]

# Transitions people must never request although the domain knows them (system-made), and
# short cuts the domain does not know at all.
NOTABLE_FORBIDDEN = [
    (S.released, S.quarantine),
    (S.quarantine, S.under_test),
    (S.released, S.expired),
    (S.released, S.consumed),
    (S.released, S.shipped),
    (S.in_rework, S.quarantine),
    (S.shipped, S.returned),
    (S.released, S.rejected),
    (S.rejected, S.released),
    (S.consumed, S.released),
    (S.scrapped, S.quarantine),
    (S.expired, S.released),
    (S.on_hold, S.released),
    (S.quarantine, S.quarantine),
]


def _id(value: object) -> str:
    if isinstance(value, tuple):
        return "->".join(str(v) for v in value)
    return str(value)


# --- disposition state machine (DOMAIN 3.3) ------------------------------------------------------


def test_manual_transition_table_is_the_domain_table() -> None:
    """DOMAIN 3.3: exactly the person-made transitions of the table, no more, no less."""
    assert set(MANUAL_TRANSITIONS) == set(EXPECTED_MANUAL)


@pytest.mark.parametrize(("pair", "meaning"), list(EXPECTED_MANUAL.items()), ids=_id)
def test_every_manual_transition_is_allowed_with_its_signature(
    pair: tuple[LotStatus, LotStatus], meaning: SignatureMeaning | None
) -> None:
    """DOMAIN 3.3, ES-1: release, rejection and NC dispositions are e-signed with their
    meaning; a hold needs no signature."""
    current, target = pair
    transition = transition_for(current, target, None)
    assert transition is not None
    assert transition == MANUAL_TRANSITIONS[pair]
    assert transition.meaning == meaning
    assert transition.needs_signature is (meaning is not None)


@pytest.mark.parametrize("pair", FORBIDDEN, ids=_id)
def test_unlisted_transitions_are_refused(pair: tuple[LotStatus, LotStatus]) -> None:
    """DOMAIN 3: unlisted transitions are rejected (None)."""
    current, target = pair
    assert transition_for(current, target, None) is None


@pytest.mark.parametrize("pair", NOTABLE_FORBIDDEN, ids=_id)
def test_system_transitions_and_short_cuts_are_not_manual(
    pair: tuple[LotStatus, LotStatus],
) -> None:
    """DOMAIN 3.3: system-made transitions (expiry, consumption, shipment, rework done) and
    short cuts such as released -> quarantine cannot be requested, whatever the hold origin."""
    current, target = pair
    for held_from in (None, *HOLDABLE):
        if current == S.on_hold and target == held_from:
            continue
        assert transition_for(current, target, held_from) is None, held_from


@pytest.mark.parametrize("held_from", HOLDABLE, ids=str)
def test_lifting_a_hold_returns_to_the_held_from_status(held_from: LotStatus) -> None:
    """DOMAIN 3.3 on_hold -> previous: QA, e-signed with meaning approved."""
    transition = transition_for(S.on_hold, held_from, held_from)
    assert transition == RELEASE_HOLD
    assert transition is not None
    assert transition.meaning == M.approved
    assert transition.needs_signature is True


@pytest.mark.parametrize(
    ("held_from", "target"),
    [(h, t) for h in HOLDABLE for t in HOLDABLE if t != h],
    ids=_id,
)
def test_a_hold_is_lifted_only_to_where_it_came_from(
    held_from: LotStatus, target: LotStatus
) -> None:
    """DOMAIN 3.3: lifting a hold cannot skip a decision (e.g. quarantine -> hold ->
    released)."""
    assert transition_for(S.on_hold, target, held_from) is None


def test_lifting_a_hold_without_a_known_origin_is_refused() -> None:
    """A hold without a recorded origin has no 'previous' status to return to."""
    for target in HOLDABLE:
        assert transition_for(S.on_hold, target, None) is None


def test_rejection_from_hold_needs_the_rejected_meaning_whatever_the_origin() -> None:
    """DOMAIN 3.3 on_hold -> rejected: QA, meaning rejected."""
    for held_from in (None, *HOLDABLE):
        transition = transition_for(S.on_hold, S.rejected, held_from)
        assert transition is not None
        assert transition.meaning == M.rejected


# --- ID-1: consumption eligibility ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "allow_conditional"), list(product(LotStatus, (False, True))), ids=_id
)
def test_only_released_lots_are_consumed(status: LotStatus, allow_conditional: bool) -> None:
    """ID-1, DOMAIN 3.3: consumption accepts released lots, and conditionally released lots
    only where the BOM line allows it; any other status is refused with a reason naming it."""
    problem = consumption_problem(
        status, expires_at=None, now=NOW, allow_conditional=allow_conditional
    )
    allowed = status == S.released or (allow_conditional and status == S.conditionally_released)
    if allowed:
        assert problem is None
    else:
        assert problem is not None
        assert str(status) in problem or str(status).replace("_", " ") in problem


@pytest.mark.parametrize("allow_conditional", [False, True])
def test_future_expiry_does_not_block_use(allow_conditional: bool) -> None:
    """ID-1: a released lot within its shelf life may be consumed."""
    for expires_at in (NOW + timedelta(seconds=1), NOW + timedelta(days=365)):
        assert (
            consumption_problem(
                S.released, expires_at=expires_at, now=NOW, allow_conditional=allow_conditional
            )
            is None
        )


@pytest.mark.parametrize(
    "expires_at",
    [NOW, NOW - timedelta(seconds=1), NOW - timedelta(days=400)],
    ids=["at-now", "a-second-ago", "last-year"],
)
@pytest.mark.parametrize("status", [S.released, S.conditionally_released], ids=str)
def test_expired_lot_is_refused_at_use(expires_at: datetime, status: LotStatus) -> None:
    """ID-1, DOMAIN 3.3 released -> expired 'at use': a passed expiry blocks consumption even
    though the nightly job has not yet set the status."""
    problem = consumption_problem(status, expires_at=expires_at, now=NOW, allow_conditional=True)
    assert problem is not None
    assert "expired" in problem
    assert f"{expires_at:%Y-%m-%d}" in problem


def test_expiry_is_compared_as_an_instant_not_a_wall_time() -> None:
    """TM-1: an expiry given in another zone is the same instant in UTC."""
    tz = datetime(2026, 6, 1, 15, 30, tzinfo=timezone(timedelta(hours=2)))  # 13:30 UTC
    assert consumption_problem(S.released, expires_at=tz, now=NOW, allow_conditional=False) is None
    assert (
        consumption_problem(
            S.released, expires_at=tz, now=NOW + timedelta(hours=2), allow_conditional=False
        )
        is not None
    )


# --- TR-4: remaining quantity never below zero ---------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "delta", "expected"),
    [
        ("10", "-3", "7"),
        ("10", "-10", "0"),
        ("10", "5", "15"),
        ("0", "0", "0"),
        ("0.000001", "-0.000001", "0"),
        ("99999999999999.999999", "-99999999999999.999999", "0"),
        ("2.5", "-2.499999", "0.000001"),
    ],
)
def test_remaining_after_within_stock(remaining: str, delta: str, expected: str) -> None:
    """TR-4: remaining + delta when it stays at or above zero, exactly."""
    result = remaining_after(Decimal(remaining), Decimal(delta))
    assert result == Decimal(expected)
    assert result is not None
    assert result >= 0


@pytest.mark.parametrize(
    ("remaining", "delta"),
    [
        ("10", "-10.000001"),
        ("0", "-0.000001"),
        ("0", "-1"),
        ("2.5", "-3"),
        ("99999999999999.999999", "-100000000000000"),
    ],
)
def test_remaining_after_never_goes_below_zero(remaining: str, delta: str) -> None:
    """TR-4: a movement that would take the lot below zero is refused (None)."""
    assert remaining_after(Decimal(remaining), Decimal(delta)) is None


def test_transaction_signs() -> None:
    """DOMAIN 7 mass balance: in (received, produced, returned) adds; consumed, sampled,
    scrapped, shipped subtract; transfers move nothing; adjustments carry their own sign."""
    T = TransactionKind
    assert SIGN == {
        T.received: 1,
        T.produced: 1,
        T.returned: 1,
        T.consumed: -1,
        T.sampled: -1,
        T.scrapped: -1,
        T.shipped: -1,
        T.transferred: 0,
        T.adjusted: 0,
    }


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "entered", "lot_uom", "expected"),
    [
        ("1.5", "kg", "g", "1500"),
        ("0.1", "kg", "g", "100"),
        ("0.3", "kg", "g", "300"),
        ("0.000001", "kg", "g", "0.001"),
        ("12345678.123456", "kg", "g", "12345678123.456"),
        ("2500", "g", "kg", "2.5"),
        ("1", "g", "kg", "0.001"),
        ("0.7", "g", "kg", "0.0007"),
        ("1234567.891", "g", "kg", "1234.567891"),
        ("5", "kg", "kg", "5"),
        ("7", "each", "each", "7"),
    ],
)
def test_to_lot_unit_converts_mass_exactly(
    quantity: str, entered: str, lot_uom: str, expected: str
) -> None:
    """Quantities are Decimal plus a pint unit: kg <-> g converts to the lot's unit exactly,
    without binary floating-point error."""
    result = to_lot_unit(Decimal(quantity), entered, lot_uom)
    assert isinstance(result, Decimal)
    assert result == Decimal(expected)


def test_conversion_round_trip_is_exact() -> None:
    """g -> kg -> g gives back the entered quantity (no drift in the ledger)."""
    grams = Decimal("987654.321")
    kilos = to_lot_unit(grams, "g", "kg")
    assert kilos == Decimal("987.654321")
    assert to_lot_unit(kilos, "kg", "g") == grams


@pytest.mark.parametrize(
    ("entered", "lot_uom"),
    [("each", "kg"), ("kg", "each"), ("each", "g"), ("m", "kg"), ("kg", "m"), ("L", "kg")],
    ids=_id,
)
def test_incompatible_units_raise_unit_mismatch(entered: str, lot_uom: str) -> None:
    """Counts and masses (or lengths, volumes) do not convert: UnitMismatch naming both."""
    with pytest.raises(UnitMismatch) as info:
        to_lot_unit(Decimal("1"), entered, lot_uom)
    assert entered in str(info.value)
    assert lot_uom in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kind", "status", "remaining", "is_reversal", "expected"),
    [
        (TransactionKind.consumed, LotStatus.released, Decimal(0), False, LotStatus.consumed),
        (TransactionKind.consumed, LotStatus.released, Decimal(1), False, None),
        (TransactionKind.shipped, LotStatus.released, Decimal(0), False, LotStatus.shipped),
        (TransactionKind.consumed, LotStatus.quarantine, Decimal(0), False, None),
        (TransactionKind.scrapped, LotStatus.released, Decimal(0), False, None),
        (TransactionKind.consumed, LotStatus.consumed, Decimal(5), True, LotStatus.released),
        (TransactionKind.shipped, LotStatus.shipped, Decimal(5), True, LotStatus.released),
        (TransactionKind.consumed, LotStatus.released, Decimal(5), True, None),
    ],
)
def test_status_after_movement(
    kind: TransactionKind,
    status: LotStatus,
    remaining: Decimal,
    is_reversal: bool,
    expected: LotStatus | None,
) -> None:
    """DOMAIN 3.3 system transitions: released -> consumed/shipped at zero, and back."""
    result = status_after_movement(kind, status, remaining, is_reversal=is_reversal)
    assert (result[0] if result else None) == expected
