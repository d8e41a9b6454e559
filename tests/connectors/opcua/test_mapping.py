"""The pure mapping from OPC UA DataValues and status codes to Observations, and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import IntEnum

import pytest
from asyncua import ua

from connectors.base import Observation, Quality, Rejected
from connectors.opcua import mapping

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SOURCE_TS = NOW - timedelta(seconds=2)
SERVER_TS = NOW - timedelta(seconds=1)


def observe(
    value: object,
    code: int = 0,
    vtype: ua.VariantType = ua.VariantType.Double,
    source_ts: datetime | None = SOURCE_TS,
    server_ts: datetime | None = SERVER_TS,
    flags: frozenset[str] = mapping.NO_FLAGS,
) -> Observation:
    data_value = ua.DataValue(
        Value=ua.Variant(value, vtype),
        StatusCode=ua.StatusCode(code),
        SourceTimestamp=source_ts,
        ServerTimestamp=server_ts,
    )
    result = mapping.to_observation("R-101", "MeltTemp", data_value, NOW, flags)
    assert isinstance(result, Observation)
    return result


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (0x00000000, Quality.good),
        (0x002D0000, Quality.good),  # GoodSubscriptionTransferred
        (0x40000000, Quality.uncertain),
        (0x408F0000, Quality.uncertain),  # UncertainEngineeringUnitsExceeded
        (0x80000000, Quality.bad),
        (0x808A0000, Quality.bad),  # BadWaitingForInitialData
        (0xC0000000, Quality.bad),  # reserved severity 11: treated as bad
    ],
)
def test_quality_from_severity(code: int, quality: Quality) -> None:
    assert mapping.quality_of(code) is quality


def test_good_value_keeps_source_timestamp_and_status() -> None:
    obs = observe(181.5)
    assert (obs.value, obs.quality, obs.status_code) == (181.5, Quality.good, 0)
    assert obs.source_ts == SOURCE_TS
    assert obs.received_ts == NOW
    assert obs.flags == frozenset()


def test_bad_value_is_emitted_without_a_value() -> None:
    obs = observe(999.0, code=ua.StatusCodes.BadSensorFailure)
    assert obs.quality is Quality.bad
    assert obs.value is None
    assert obs.status_code == ua.StatusCodes.BadSensorFailure


def test_uncertain_value_is_kept() -> None:
    obs = observe(12.0, code=ua.StatusCodes.UncertainLastUsableValue)
    assert (obs.value, obs.quality) == (12.0, Quality.uncertain)


def test_overflow_and_limit_bits_become_flags() -> None:
    overflow = observe(1.0, code=0x00000480)
    assert overflow.flags == {"overflow"}
    assert overflow.quality is Quality.good
    high = observe(1.0, code=0x40000600)
    assert high.flags == {"limit_high"}
    # Without InfoType=DataValue the low bits mean nothing.
    assert observe(1.0, code=0x00000080).flags == frozenset()
    assert observe(1.0, code=0x00008000).flags == {"structure_changed"}


def test_replayed_flag_combines_with_status_flags() -> None:
    obs = observe(1.0, code=0x00000480, flags=frozenset({mapping.FLAG_REPLAYED}))
    assert obs.flags == {"overflow", "replayed"}


def test_timestamp_fallbacks_are_flagged() -> None:
    server = observe(1.0, source_ts=None)
    assert server.source_ts == SERVER_TS
    assert server.flags == {mapping.FLAG_SERVER_TS}
    received = observe(1.0, source_ts=None, server_ts=None)
    assert received.source_ts == NOW
    assert received.flags == {mapping.FLAG_SERVER_TS, mapping.FLAG_RECEIVED_TS}
    epoch = observe(1.0, source_ts=datetime(1601, 1, 1, tzinfo=UTC))
    assert epoch.source_ts == SERVER_TS


def test_non_finite_values_are_bad() -> None:
    obs = observe(float("nan"))
    assert obs.value is None
    assert obs.quality is Quality.bad
    assert obs.flags == {mapping.FLAG_NON_FINITE}


class Mode(IntEnum):
    auto = 2


@pytest.mark.parametrize(
    ("raw", "vtype", "stored"),
    [
        (True, ua.VariantType.Boolean, True),
        (7, ua.VariantType.Int16, 7),
        ("B-0001", ua.VariantType.String, "B-0001"),
        (ua.LocalizedText("Heating", "en"), ua.VariantType.LocalizedText, "Heating"),
        (NOW, ua.VariantType.DateTime, NOW.isoformat()),
        (Mode.auto, ua.VariantType.Int32, 2),
        (None, ua.VariantType.Null, None),
    ],
)
def test_scalar_conversion(raw: object, vtype: ua.VariantType, stored: object) -> None:
    obs = observe(raw, vtype=vtype)
    assert obs.value == stored
    assert type(obs.value) is type(stored)


def test_arrays_and_byte_strings_are_rejected() -> None:
    data_value = ua.DataValue(Value=ua.Variant([1.0, 2.0], ua.VariantType.Double))
    rejected = mapping.to_observation("R-101", "Profile", data_value, NOW)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "unsupported OPC UA value type"
    assert "Profile" in rejected.detail
    blob = ua.DataValue(Value=ua.Variant(b"\x00", ua.VariantType.ByteString))
    assert isinstance(mapping.to_observation("R-101", "Blob", blob, NOW), Rejected)


@pytest.mark.parametrize(
    ("value", "vtype", "encoded"),
    [
        (True, ua.VariantType.Boolean, True),
        (1200, ua.VariantType.Int16, 1200),
        (12.0, ua.VariantType.UInt32, 12),
        (185, ua.VariantType.Double, 185.0),
        (0.1, ua.VariantType.Float, 0.1),
        ("RCP-7", ua.VariantType.String, "RCP-7"),
    ],
)
def test_setpoints_are_encoded_for_the_node_type(
    value: object, vtype: ua.VariantType, encoded: object
) -> None:
    variant = mapping.to_variant(value, vtype)
    assert variant.VariantType is vtype
    assert variant.Value == encoded
    assert type(variant.Value) is type(encoded)


@pytest.mark.parametrize(
    ("value", "vtype"),
    [
        (40000, ua.VariantType.Int16),
        (-1, ua.VariantType.UInt16),
        (1.5, ua.VariantType.Int32),
        (True, ua.VariantType.Int32),
        (True, ua.VariantType.Double),
        (1, ua.VariantType.Boolean),
        ("12", ua.VariantType.Double),
        (float("inf"), ua.VariantType.Double),
        (1e39, ua.VariantType.Float),
        (12, ua.VariantType.String),
        (b"x", ua.VariantType.ByteString),
    ],
)
def test_setpoints_that_do_not_fit_are_refused(value: object, vtype: ua.VariantType) -> None:
    with pytest.raises(ValueError, match=r"not|finite"):
        mapping.to_variant(value, vtype)


def test_read_back_is_compared_in_the_node_precision() -> None:
    as_float = mapping.to_variant(0.1, ua.VariantType.Float)
    assert mapping.confirms(0.10000000149011612, as_float)
    assert not mapping.confirms(0.2, as_float)
    assert mapping.confirms(185.5, mapping.to_variant(185.5, ua.VariantType.Double))
    assert not mapping.confirms(185.50001, mapping.to_variant(185.5, ua.VariantType.Double))
    assert not mapping.confirms(1, mapping.to_variant(True, ua.VariantType.Boolean))
    assert mapping.confirms(7, mapping.to_variant(7, ua.VariantType.Int16))
