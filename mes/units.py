"""Units of measure (pint). Quantities carry a pint unit string; ``each`` counts pieces."""

from __future__ import annotations

import re
import tokenize
from decimal import Decimal
from functools import lru_cache
from typing import Any

import pint

# Unit expressions are products/quotients of named units with integer powers (kg, mg/L,
# 1/m**3); anything else is refused before pint's expression parser sees it.
_UNIT_EXPR = re.compile(
    r"^(1/)?[A-Za-z%][A-Za-z0-9_%]*(\*\*-?[1-9])?([*/][A-Za-z%][A-Za-z0-9_%]*(\*\*-?[1-9])?)*$"
)


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry[Any]:
    # Decimal magnitudes: conversions of recorded quantities are exact, never binary floats.
    ureg: pint.UnitRegistry[Any] = pint.UnitRegistry(non_int_type=Decimal)
    ureg.define("each = [count] = ea = piece = pcs")
    return ureg


def check_uom(text: str) -> str:
    """Return ``text`` when pint knows it as a unit; ValueError naming it otherwise."""
    candidate = text.strip()
    if not candidate or len(candidate) > 20:
        raise ValueError(f"unit {text!r} must be 1-20 characters")
    if not _UNIT_EXPR.match(candidate):
        raise ValueError(f"unknown unit of measure {text!r}")
    try:
        registry().parse_units(candidate)
    except (
        pint.errors.PintError,
        tokenize.TokenError,
        SyntaxError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        TypeError,
        AssertionError,
        ArithmeticError,
    ) as exc:
        # pint's parser surfaces tokenizer and evaluation errors of its own expression
        # language; every one of them means the text is not a unit.
        raise ValueError(f"unknown unit of measure {text!r}") from exc
    return candidate
