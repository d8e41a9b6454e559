"""Pure translation between OPC UA values and the MES's ``Observation``.

Kept free of I/O so the rules (quality from status severity, which timestamp is kept, which
status bits become flags, how a setpoint is encoded) are tested without a server. The
functions run once per notification, so the status-code work is cached per code.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache
from typing import Any

from asyncua import ua

from connectors.base import Observation, Quality, Rejected

Scalar = float | int | bool | str | None

NO_FLAGS: frozenset[str] = frozenset()

SEVERITY_QUALITY: dict[int, Quality] = {
    0b00: Quality.good,
    0b01: Quality.uncertain,
    0b10: Quality.bad,
    0b11: Quality.bad,
}
"""Status code bits 30-31 (Part 4, 7.39) to quality."""

INFO_TYPE_MASK = 0x0C00
INFO_TYPE_DATA_VALUE = 0x0400

STATUS_FLAGS: tuple[tuple[int, int, bool, str], ...] = (
    # (mask, expected bits, only when InfoType is DataValue, flag)
    (0x8000, 0x8000, False, "structure_changed"),
    (0x4000, 0x4000, False, "semantics_changed"),
    (0x0080, 0x0080, True, "overflow"),
    (0x0300, 0x0100, True, "limit_low"),
    (0x0300, 0x0200, True, "limit_high"),
    (0x0300, 0x0300, True, "limit_constant"),
)
"""Status code bits that are kept as Observation flags."""

FLAG_REPLAYED = "replayed"
"""Delivered by Republish after a reconnect: later than values already stored."""
FLAG_FULL_READ = "full_read"
"""Read (not subscribed) after subscriptions had to be recreated."""
FLAG_SERVER_TS = "server_ts"
"""The server sent no source timestamp; its server timestamp is used."""
FLAG_RECEIVED_TS = "received_ts"
"""The server sent no timestamp at all; the connector's receive time is used."""
FLAG_NON_FINITE = "non_finite"
"""The server sent NaN or infinity; stored as a bad value."""
FLAG_SUBSCRIBE_FAILED = "subscribe_failed"
"""The server refused to monitor the node; the status code says why."""

_MIN_TS = datetime(1601, 1, 2, tzinfo=UTC)


def quality_of(code: int) -> Quality:
    """Quality from the severity bits of a status code."""
    return SEVERITY_QUALITY[(code >> 30) & 0b11]


@lru_cache(maxsize=4096)
def flags_for(code: int, extra: frozenset[str] = NO_FLAGS) -> frozenset[str]:
    """Flags from the status code bits plus ``extra`` (cached: few distinct combinations)."""
    is_data_value = (code & INFO_TYPE_MASK) == INFO_TYPE_DATA_VALUE
    found = {
        flag
        for mask, bits, needs_info, flag in STATUS_FLAGS
        if (code & mask) == bits and (is_data_value or not needs_info)
    }
    return frozenset(found) | extra


def _finite(value: float) -> Scalar:
    if math.isfinite(value):
        return value
    raise ArithmeticError


def _localized(value: ua.LocalizedText) -> Scalar:
    return value.Text


def _iso(value: datetime) -> Scalar:
    return value.isoformat()


def _enum(value: Any) -> Scalar:
    inner = value.value
    return inner if isinstance(inner, int | str) else str(inner)


CONVERTERS: dict[type[Any], Callable[[Any], Scalar]] = {
    float: _finite,
    int: int,
    bool: bool,
    str: str,
    ua.LocalizedText: _localized,
    ua.QualifiedName: lambda v: f"{v.NamespaceIndex}:{v.Name}",
    ua.NodeId: lambda v: v.to_string(),
    ua.StatusCode: lambda v: int(v.value),
    datetime: _iso,
    uuid.UUID: str,
}
"""OPC UA scalar types (as decoded by asyncua) the MES stores, and how."""


class UnsupportedValue(TypeError):
    """An OPC UA value with no scalar form (array, structure, byte string)."""


def convert_value(raw: object) -> Scalar:
    """The storable form of a decoded variant value.

    Raises ``ArithmeticError`` for NaN/infinity and ``UnsupportedValue`` otherwise.
    """
    if raw is None:
        return None
    converter: Callable[[Any], Scalar] | None = CONVERTERS.get(type(raw))
    if converter is None:
        if isinstance(raw, Enum):
            converter = _enum
        else:
            converter = next(
                (conv for kind, conv in CONVERTERS.items() if isinstance(raw, kind)), None
            )
    if converter is None:
        raise UnsupportedValue(type(raw).__name__)
    return converter(raw)


def _timestamp(
    data_value: ua.DataValue, received_ts: datetime, flags: frozenset[str]
) -> tuple[datetime, frozenset[str]]:
    """Source timestamp, else server timestamp, else receive time (flagged)."""
    for stamp, flag in (
        (data_value.SourceTimestamp, FLAG_SERVER_TS),
        (data_value.ServerTimestamp, FLAG_RECEIVED_TS),
    ):
        if stamp is not None and stamp.year > _MIN_TS.year:
            return stamp, flags
        flags = flags | {flag}
    return received_ts, flags


def to_observation(
    source: str,
    tag: str,
    data_value: ua.DataValue,
    received_ts: datetime,
    extra_flags: frozenset[str] = NO_FLAGS,
) -> Observation | Rejected:
    """Map one DataValue of ``tag``; a value with no scalar form becomes a ``Rejected``.

    Runs per notification: plain floats, ints, bools and strings take the short path.
    """
    status = data_value.StatusCode
    code: int = status.value if status is not None else 0
    quality = SEVERITY_QUALITY[code >> 30]
    flags = extra_flags
    source_ts: datetime | None = data_value.SourceTimestamp
    if source_ts is None or source_ts.year <= _MIN_TS.year:
        source_ts, flags = _timestamp(data_value, received_ts, flags)
    value: Scalar = None
    variant = data_value.Value
    if quality is not Quality.bad and variant is not None:
        raw = variant.Value
        kind = type(raw)
        if kind is float and raw - raw == 0.0:  # finite
            value = raw
        elif kind is int or kind is str or kind is bool:
            value = raw
        else:
            try:
                value = convert_value(raw)
            except ArithmeticError:
                quality = Quality.bad
                flags = flags | {FLAG_NON_FINITE}
            except UnsupportedValue as exc:
                return Rejected(
                    source=source,
                    reason="unsupported OPC UA value type",
                    detail=f"{tag}: {exc} ({variant.VariantType.name})",
                )
    if code:
        flags = flags_for(code, flags)
    return Observation(source, tag, value, quality, source_ts, received_ts, None, code, flags)


def refused_observation(tag: str, source: str, code: int, now: datetime) -> Observation:
    """A bad value marking a node the server would not monitor."""
    return Observation(
        source=source,
        tag=tag,
        value=None,
        quality=quality_of(code) if code else Quality.bad,
        source_ts=now,
        received_ts=now,
        status_code=code,
        flags=frozenset({FLAG_SUBSCRIBE_FAILED}),
    )


INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
FLOAT_TYPES = frozenset({ua.VariantType.Float, ua.VariantType.Double})


def to_variant(value: object, variant_type: ua.VariantType) -> ua.Variant:
    """Encode a setpoint for the node's data type; ``ValueError`` if it does not fit."""
    if variant_type is ua.VariantType.Boolean:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
        return ua.Variant(value, variant_type)
    if variant_type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[variant_type]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{value!r} is not a {variant_type.name} ({low}..{high})")
        return ua.Variant(value, variant_type)
    if variant_type in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("setpoints must be finite")
        if variant_type is ua.VariantType.Float and abs(number) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} does not fit a Float")
        return ua.Variant(number, variant_type)
    if variant_type is ua.VariantType.String:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return ua.Variant(value, variant_type)
    raise ValueError(f"writing {variant_type.name} values is not supported")


def as_written(variant: ua.Variant) -> object:
    """The value the server should hold after storing ``variant`` (Float rounds to 32 bit)."""
    if variant.VariantType is ua.VariantType.Float:
        return struct.unpack("<f", struct.pack("<f", variant.Value))[0]
    return variant.Value


def confirms(read_back: object, variant: ua.Variant) -> bool:
    """Whether a read-back value equals what was written, in the node's own precision."""
    expected = as_written(variant)
    if isinstance(read_back, bool) or isinstance(expected, bool):
        return type(read_back) is type(expected) and read_back == expected
    if variant.VariantType is ua.VariantType.Float and isinstance(read_back, float):
        return as_written(ua.Variant(read_back, ua.VariantType.Float)) == expected
    return read_back == expected
