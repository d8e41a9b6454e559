"""Payload parsing for the JSON and plain-number codecs.

Everything a device sends is untrusted input (OWASP API10): each helper either returns a
clean Python value or raises ``DecodeError`` with a short machine-readable reason that the
MES counts per source. Non-finite numbers never get through, because Python's ``json``
accepts ``NaN`` and turns ``1e309`` into infinity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.base import Quality

Scalar = float | int | bool | str
Payload = bytes | bytearray
ValueType = Literal["number", "bool", "string", "any"]
TimestampFormat = Literal["iso8601", "epoch_ms", "epoch_s"]
PathKey = str | int

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
MAX_STRING = 4096


class DecodeError(Exception):
    """A payload or one of its samples cannot become an observation."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


_Scanner = Callable[[str, int], tuple[Any, int]]
_scan: _Scanner = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_BLANKS = " \t\n\r"


def load_json(payload: Payload) -> Any:
    """Parse a UTF-8 JSON document; any syntax, encoding or nesting problem is
    ``invalid_json``. Calls the C scanner directly: ``json.loads`` adds encoding detection
    and two regex matches per message, a third of the cost of a small payload."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_json", f"not UTF-8: {exc}") from None
    if text[:1] in _BLANKS:
        text = text.strip(_BLANKS)
    try:
        document, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end == len(text):
        return document
    if end < 0 or text[end:].strip(_BLANKS):
        try:
            json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("invalid_json", str(exc)[:200]) from None
        raise DecodeError("invalid_json", "not a JSON document")
    return document


def parse_number(payload: Payload) -> int | float:
    """A plain-number payload such as ``21.5`` or ``-3`` (ASCII, surrounding blanks allowed)."""
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DecodeError("not_a_number", "payload is not ASCII text") from None
    if not text or "_" in text:
        raise DecodeError("not_a_number", f"{text[:40]!r} is not a number")
    try:
        return check_int(int(text))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DecodeError("not_a_number", f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DecodeError("non_finite", f"{text[:40]!r} is not a finite number")
    return value


def check_int(value: int) -> int:
    """Integers must fit a 64-bit column (signed, or unsigned for counters)."""
    if value < INT64_MIN or value > UINT64_MAX:
        raise DecodeError("out_of_range", f"integer {str(value)[:40]} exceeds 64 bits")
    return value


def to_number(value: Any, what: str) -> int | float:
    """A JSON value that must be a finite number (booleans and strings are refused)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("non_finite", f"{what} is {value}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int(value)
    raise DecodeError("not_a_number", f"{what} is {type(value).__name__}, expected a number")


def to_value(value: Any, value_type: ValueType, what: str) -> Scalar:
    """Check a sample's value against the subscription's ``value_type``."""
    if value_type == "number":
        return to_number(value, what)
    if value_type == "bool":
        if isinstance(value, bool):
            return value
        raise DecodeError("wrong_type", f"{what} is {type(value).__name__}, expected a boolean")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise DecodeError("oversize", f"{what} is a string of {len(value)} characters")
        return value
    if value_type == "string":
        raise DecodeError("wrong_type", f"{what} is {type(value).__name__}, expected a string")
    if isinstance(value, bool):
        return value
    if value is None:
        raise DecodeError("null_value", f"{what} is null")
    if isinstance(value, int | float):
        return to_number(value, what)
    raise DecodeError("wrong_type", f"{what} is {type(value).__name__}, expected a scalar")


def compile_path(path: str) -> tuple[PathKey, ...]:
    """``"data.0.temp"`` -> ``("data", 0, "temp")``; digits index lists."""
    return tuple(int(part) if part.isdigit() else part for part in path.split("."))


_MISSING = object()


def lookup(document: Any, path: tuple[PathKey, ...], default: Any = _MISSING) -> Any:
    """Follow a compiled dotted path; a missing step raises ``missing_field`` unless a
    ``default`` is given."""
    node = document
    for key in path:
        if type(node) is dict:
            node = node.get(key, _MISSING)
            if node is not _MISSING:
                continue
        elif type(node) is list and type(key) is int and key < len(node):
            node = node[key]
            continue
        if default is not _MISSING:
            return default
        dotted = ".".join(str(k) for k in path)
        raise DecodeError("missing_field", f"no field {dotted!r}")
    return node


def parse_timestamp(value: Any, fmt: TimestampFormat, what: str) -> datetime:
    """A device timestamp as an aware UTC datetime.

    ISO 8601 must carry an offset (``Z`` or ``+01:00``): a naive local time is ambiguous
    twice a year and across sites.
    """
    if fmt == "iso8601":
        if not isinstance(value, str):
            raise DecodeError("invalid_timestamp", f"{what} is not an ISO 8601 string")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError(
                "invalid_timestamp", f"{what} {value[:40]!r} is not ISO 8601"
            ) from None
        if parsed.tzinfo is UTC:
            return parsed
        if parsed.tzinfo is None:
            raise DecodeError("invalid_timestamp", f"{what} {value[:40]!r} has no UTC offset")
        return parsed.astimezone(UTC)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError("invalid_timestamp", f"{what} is not a finite epoch number")
    seconds = value / 1000 if fmt == "epoch_ms" else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise DecodeError("invalid_timestamp", f"{what} {value} is out of range") from None


_QUALITY_NAMES = {q.value: q for q in Quality}


def parse_quality(value: Any, what: str) -> tuple[Quality, int | None]:
    """``good``/``uncertain``/``bad`` or an OPC UA StatusCode (severity in bits 30-31)."""
    if isinstance(value, str):
        quality = _QUALITY_NAMES.get(value.strip().lower())
        if quality is None:
            raise DecodeError("invalid_quality", f"{what} {value[:40]!r} is not a quality")
        return quality, None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
        severity = value >> 30
        quality = Quality.good if severity == 0 else Quality.uncertain if severity == 1 else None
        return quality or Quality.bad, value
    raise DecodeError("invalid_quality", f"{what} is not a quality name or status code")
