"""Configuration validation and the pure topic/payload mapping (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.base import Quality
from connectors.mqtt import MqttConfig
from connectors.mqtt.mapping import Mapper, Output, topic_matches

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATEST = NOW + timedelta(minutes=5)


def make(*subscriptions: dict[str, Any], **options: Any) -> MqttConfig:
    return MqttConfig.model_validate(
        {"client_id": "test", "subscriptions": list(subscriptions), **options}
    )


def run(mapper: Mapper, topic: str, payload: bytes | str) -> Output:
    out = Output()
    data = payload.encode() if isinstance(payload, str) else payload
    mapper.map(topic, data, NOW, LATEST, out)
    return out


def reasons(out: Output) -> list[str]:
    return [r.reason for r in out.rejects]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"subscriptions": []}, "at least 1 item"),
        ({"password": "x"}, "password is set but username is not"),
        ({"protocol": "3.1"}, "Input should be '5' or '3.1.1'"),
        ({"reconnect_min_delay": 10, "reconnect_max_delay": 5}, "reconnect_min_delay is larger"),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file: no such file"),
        ({"client_id": " padded "}, "surrounding blanks"),
    ],
)
def test_config_errors_name_the_problem(change: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"client_id": "c", "subscriptions": [{"filter": "a/b", "tag": "t"}]}
    values.update(change)
    with pytest.raises(ValidationError, match=message):
        MqttConfig.model_validate(values)


@pytest.mark.parametrize(
    ("subscription", "message"),
    [
        ({"filter": "a/#/b", "tag": "t"}, "'#' must be a whole level and the last one"),
        ({"filter": "a/b+", "tag": "t"}, "'\\+' must be a whole level"),
        ({"filter": "$share/g/a", "tag": "t"}, "set shared_group"),
        ({"filter": "a/+", "tag": "x/{2}"}, "uses topic level \\{2\\} but the filter has only 2"),
        ({"filter": "a/+", "tag": "x/{colour}"}, "unknown placeholder \\{colour\\}"),
        ({"filter": "a/+", "tag": "x/{field}"}, "unknown placeholder \\{field\\}"),
        ({"filter": "a/+", "tag": "{0!r}"}, "format specs and conversions not allowed"),
        ({"filter": "a/+"}, "codec json needs a tag template or a tag_field"),
        ({"filter": "a/+", "codec": "number"}, "codec number needs a tag template"),
        ({"filter": "a/+", "codec": "number", "tag": "t", "value_field": "v"}, "JSON options"),
        ({"filter": "a/+", "codec": "sparkplug"}, "a sparkplug filter starts with 'spBv1.0/'"),
        ({"filter": "spBv1.0/#", "codec": "sparkplug", "node_tag": "{device}"}, "\\{device\\}"),
        ({"filter": "a/+", "tag": "t", "qos": 2}, "Input should be 0 or 1"),
        ({"filter": "a/+", "tag": "t", "shared_group": "g/h"}, "shared_group must be"),
    ],
)
def test_subscription_errors_name_the_problem(subscription: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(subscription)


def test_protocol_accepts_yaml_spellings() -> None:
    assert make({"filter": "a", "tag": "t"}, protocol=5).protocol == "5"
    assert make({"filter": "a", "tag": "t"}, protocol="3.1.1").protocol == "3.1.1"
    assert make({"filter": "a", "tag": "t"}, protocol="3.1.1").session_expiry == 86400


def test_shared_subscription_filter() -> None:
    sub = make({"filter": "plant/#", "tag": "t", "shared_group": "mes"}).subscriptions[0]
    assert sub.subscribe_filter == "$share/mes/plant/#"


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "$SYS/broker/load", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b", True),
    ],
)
def test_topic_matching(pattern: str, topic: str, matches: bool) -> None:
    assert topic_matches(pattern.split("/"), topic.split("/")) is matches


def test_json_single_sample_with_template_timestamp_and_quality() -> None:
    mapper = Mapper(
        make({"filter": "plant/+/+/temp", "tag": "CORE/{1}/{2}/temperature", "quality_field": "q"}),
        "gw",
    )
    out = run(mapper, "plant/cr2/zone1/temp", '{"value": 21.5, "ts": "2026-03-01T12:59:00+01:00"}')
    (obs,) = out.observations
    assert (obs.source, obs.tag, obs.value, obs.quality) == (
        "gw",
        "CORE/cr2/zone1/temperature",
        21.5,
        Quality.good,
    )
    assert obs.source_ts == datetime(2026, 3, 1, 11, 59, tzinfo=UTC)
    assert obs.received_ts == NOW
    out = run(mapper, "plant/cr2/zone1/temp", '{"value": 3, "q": 1073741824}')
    assert out.observations[0].quality is Quality.uncertain
    assert out.observations[0].status_code == 1073741824
    assert out.observations[0].source_ts == NOW  # no timestamp: received time
    out = run(mapper, "plant/cr2/zone1/temp", '{"value": 3, "q": "BAD"}')
    assert out.observations[0].quality is Quality.bad


def test_json_array_and_samples_field_with_tag_field_and_source() -> None:
    mapper = Mapper(
        make(
            {
                "filter": "line/+/batch",
                "tag_field": "name",
                "tag": "{1}/{field}",
                "value_field": "v.num",
                "timestamp_field": "t",
                "timestamp_format": "epoch_ms",
                "source": "line-{1}",
            },
            {"filter": "cell/+/batch", "samples_field": "data.samples", "tag_field": "id"},
        ),
        "gw",
    )
    payload = '[{"name": "a", "v": {"num": 1}, "t": 1772366400000}, {"name": "b", "v": {"num": 2}}]'
    out = run(mapper, "line/L7/batch", payload)
    assert [(o.source, o.tag, o.value) for o in out.observations] == [
        ("line-L7", "L7/a", 1),
        ("line-L7", "L7/b", 2),
    ]
    assert out.observations[0].source_ts == NOW
    out = run(mapper, "cell/C1/batch", '{"data": {"samples": [{"id": "x", "value": 5}]}}')
    assert [(o.source, o.tag, o.value) for o in out.observations] == [("gw", "x", 5)]


def test_number_codec_and_value_types() -> None:
    mapper = Mapper(
        make(
            {"filter": "n/+", "codec": "number", "tag": "num/{last}"},
            {"filter": "s/+", "tag": "state/{1}", "value_type": "any"},
            {"filter": "b/+", "tag": "flag/{1}", "value_type": "bool"},
        ),
        "gw",
    )
    assert run(mapper, "n/a", b" 42 \n").observations[0].value == 42
    assert run(mapper, "n/a", b"-1.5e3").observations[0].value == -1500.0
    assert run(mapper, "n/a", b"-1.5e3").observations[0].tag == "num/a"
    assert run(mapper, "s/x", '{"value": "RUNNING"}').observations[0].value == "RUNNING"
    assert run(mapper, "b/x", '{"value": true}').observations[0].value is True
    assert reasons(run(mapper, "b/x", '{"value": 1}')) == ["wrong_type"]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("j/a", "{not json", "invalid_json"),
        ("j/a", b"\xff\xfe", "invalid_json"),
        ("j/a", '{"value": 1} trailing', "invalid_json"),
        ("j/a", '{"value": "12.5"}', "not_a_number"),
        ("j/a", '{"value": true}', "not_a_number"),
        ("j/a", '{"value": NaN}', "non_finite"),
        ("j/a", '{"value": Infinity}', "non_finite"),
        ("j/a", '{"value": 1e309}', "non_finite"),
        ("j/a", '{"value": 123456789012345678901234567890}', "out_of_range"),
        ("j/a", '{"other": 1}', "missing_field"),
        ("j/a", "42", "wrong_type"),
        ("j/a", '{"value": 1, "ts": "2026-03-01T12:00:00"}', "invalid_timestamp"),
        ("j/a", '{"value": 1, "ts": "yesterday"}', "invalid_timestamp"),
        ("j/a", '{"value": 1, "ts": "2026-03-01T12:06:00Z"}', "future_timestamp"),
        ("j/a", '{"value": 1, "q": "great"}', "invalid_quality"),
        ("j/a", '{"value": 1, "pad": "' + "x" * 300 + '"}', "oversize"),
        ("n/a", "abc", "not_a_number"),
        ("n/a", "1_000", "not_a_number"),
        ("n/a", "", "not_a_number"),
        ("n/a", "nan", "non_finite"),
        ("n/a", "1e309", "non_finite"),
        ("elsewhere", "1", "unmapped_topic"),
        ("t/only", '{"value": 1}', "template_level_missing"),
    ],
)
def test_each_reject_reason(topic: str, payload: bytes | str, reason: str) -> None:
    mapper = Mapper(
        make(
            {"filter": "j/+", "tag": "t", "quality_field": "q"},
            {"filter": "n/+", "codec": "number", "tag": "t"},
            {"filter": "t/#", "tag": "x/{3}"},
            max_payload_bytes=256,
        ),
        "gw",
    )
    out = run(mapper, topic, payload)
    assert out.observations == []
    assert reasons(out) == [reason]
    rejected = out.rejects[0]
    assert rejected.source == "gw"
    assert topic in rejected.detail
    data = payload.encode() if isinstance(payload, str) else payload
    assert rejected.payload == data[:256]


def test_a_bad_sample_in_an_array_is_rejected_alone() -> None:
    mapper = Mapper(make({"filter": "a", "tag_field": "n"}), "gw")
    out = run(mapper, "a", '[{"n": "x", "value": 1}, {"n": "y", "value": "oops"}, {"value": 3}]')
    assert [o.tag for o in out.observations] == ["x"]
    assert reasons(out) == ["not_a_number", "missing_field"]
    assert "sample 1" in out.rejects[0].detail


def test_tls_files_are_loaded_when_the_config_is_validated(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValidationError, match="tls: cannot load the CA, certificate or key"):
        make({"filter": "a", "tag": "t"}, tls={"ca_file": str(garbage)})
    with pytest.raises(ValidationError, match=r"tls\.key_file is set but tls\.cert_file is not"):
        make({"filter": "a", "tag": "t"}, tls={"key_file": str(garbage)})
