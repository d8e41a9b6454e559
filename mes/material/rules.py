"""Pure material rules."""

from __future__ import annotations


def gtin_check_digit(body: str) -> int:
    """GS1 mod-10 check digit of the digits before it (weights 3,1,3,... from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def gtin_problem(gtin: str) -> str | None:
    """UDI-1: a GTIN-14 with a valid check digit, or why not."""
    if len(gtin) != 14 or not gtin.isdigit():
        return "GTIN must be exactly 14 digits (GTIN-14; pad shorter GTINs with leading zeros)"
    expected = gtin_check_digit(gtin[:-1])
    if int(gtin[-1]) != expected:
        return f"GTIN check digit is {gtin[-1]}, expected {expected} (UDI-1)"
    return None
