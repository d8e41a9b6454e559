"""Sparkplug B payload codec and host rules, without a broker (the broker tests use the
edge node class against a real Mosquitto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import Quality
from connectors.mqtt import MqttConfig
from connectors.mqtt.mapping import Mapper, Output
from connectors.mqtt.sparkplug import (
    REBIRTH_METRIC,
    DataType,
    Metric,
    Payload,
    PayloadMessage,
    decode_payload,
    encode_payload,
    parse_topic,
    rebirth_request,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MS = int(T0.timestamp() * 1000)


class Host:
    """A mapper with one Sparkplug subscription, fed message by message."""

    def __init__(self, **subscription: str) -> None:
        config = MqttConfig.model_validate(
            {
                "client_id": "host",
                "rebirth_interval": 5,
                "subscriptions": [{"filter": "spBv1.0/#", "codec": "sparkplug", **subscription}],
            }
        )
        self.mapper = Mapper(config, "plant")
        self.now = T0

    def send(self, kind: str, node: str, payload: Payload, device: str | None = None) -> Output:
        self.now += timedelta(seconds=1)
        topic = f"spBv1.0/G1/{kind}/{node}" + (f"/{device}" if device else "")
        out = Output()
        self.mapper.map(
            topic, encode_payload(payload), self.now, self.now + timedelta(minutes=5), out
        )
        return out


def nbirth(seq: int = 0, bd_seq: int = 3) -> Payload:
    return Payload(
        MS,
        seq,
        [
            Metric("bdSeq", DataType.Int64, bd_seq),
            Metric(REBIRTH_METRIC, DataType.Boolean, False),
            Metric("Uptime", DataType.Int64, 10, alias=1),
        ],
    )


def dbirth(seq: int) -> Payload:
    return Payload(
        MS,
        seq,
        [
            Metric("Temperature", DataType.Float, 36.5, alias=2),
            Metric("Running", DataType.Boolean, True, alias=3),
        ],
    )


def ddata(seq: int, temperature: float) -> Payload:
    return Payload(MS + 1000, seq, [Metric(None, DataType.Float, temperature, alias=2)])


def test_payload_round_trip_and_signed_integers() -> None:
    payload = Payload(
        MS,
        7,
        [
            Metric("i8", DataType.Int8, -3, alias=1),
            Metric("i32", DataType.Int32, -70000),
            Metric("i64", DataType.Int64, -(2**40), timestamp=MS),
            Metric("u64", DataType.UInt64, 2**63 + 5),
            Metric("d", DataType.Double, 2.5, properties={"Quality": 192, "Unit": "degC"}),
            Metric("s", DataType.String, "ok", is_historical=True),
            Metric("n", DataType.Double, None),
        ],
        uuid="abc",
        body=b"raw",
    )
    decoded = decode_payload(encode_payload(payload))
    assert decoded == payload


def test_a_negative_int8_reads_the_same_in_8_and_32_bits() -> None:
    for raw in (0xFD, 0xFFFFFFFD):
        msg = PayloadMessage()
        metric = msg.metrics.add(name="x", datatype=int(DataType.Int8))
        metric.int_value = raw
        assert decode_payload(msg.SerializeToString()).metrics[0].value == -3


def test_rebirth_request_and_topics() -> None:
    (metric,) = decode_payload(rebirth_request()).metrics
    assert (metric.name, metric.datatype, metric.value) == (REBIRTH_METRIC, DataType.Boolean, True)
    topic = parse_topic("spBv1.0/G1/DDATA/node/dev")
    assert topic is not None
    assert (topic.group, topic.message_type, topic.edge_node, topic.device) == (
        "G1",
        "DDATA",
        "node",
        "dev",
    )
    assert parse_topic("spBv1.0/STATE/host") is None
    assert parse_topic("spBv1.0/G1/NDATA/node/dev") is None
    assert parse_topic("spBv1.0/G1/DDATA/node") is None


def test_births_and_aliased_data_become_tagged_observations() -> None:
    host = Host()
    out = host.send("NBIRTH", "N1", nbirth())
    assert [(o.tag, o.value, o.seq) for o in out.observations] == [("G1/N1/Uptime", 10, 0)]
    out = host.send("DBIRTH", "N1", dbirth(1), "D1")
    assert [(o.tag, o.value) for o in out.observations] == [
        ("G1/N1/D1/Temperature", 36.5),
        ("G1/N1/D1/Running", True),
    ]
    out = host.send("DDATA", "N1", ddata(2, 37.25), "D1")
    (obs,) = out.observations
    assert (obs.source, obs.tag, obs.value, obs.quality, obs.seq) == (
        "plant",
        "G1/N1/D1/Temperature",
        37.25,
        Quality.good,
        2,
    )
    assert obs.source_ts == T0 + timedelta(seconds=1)
    assert out.gaps == []
    assert out.rebirths == []
    assert out.rejects == []


def test_templates_for_tags_and_source() -> None:
    host = Host(
        tag="SP/{edge_node}/{device}/{metric}", node_tag="SP/{edge_node}/{metric}", source="{group}"
    )
    assert host.send("NBIRTH", "N1", nbirth()).observations[0].tag == "SP/N1/Uptime"
    obs = host.send("DBIRTH", "N1", dbirth(1), "D1").observations[0]
    assert (obs.source, obs.tag) == ("G1", "SP/N1/D1/Temperature")


def test_seq_jump_reports_a_gap_and_requests_one_rebirth() -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth())
    host.send("DBIRTH", "N1", dbirth(1), "D1")
    out = host.send("DDATA", "N1", ddata(5, 1.0), "D1")
    (gap,) = out.gaps
    assert (gap.source, gap.first_seq, gap.last_seq, gap.tag) == ("plant", 2, 4, None)
    assert gap.start < gap.end
    assert "expected 2, got 5" in gap.reason
    assert out.rebirths == [("G1", "N1")]
    assert [o.value for o in out.observations] == [1.0]  # the message itself is good
    out = host.send("DDATA", "N1", ddata(9, 2.0), "D1")
    assert len(out.gaps) == 1
    assert out.rebirths == []  # asked a second ago: not again within rebirth_interval
    out = host.send("DDATA", "N1", ddata(10, 3.0), "D1")
    assert out.gaps == []


def test_seq_wraps_from_255_to_0_without_a_gap() -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth(seq=254))
    host.send("DBIRTH", "N1", dbirth(255), "D1")
    out = host.send("DDATA", "N1", ddata(0, 1.0), "D1")
    assert out.gaps == []
    assert out.observations[0].seq == 0


def test_data_before_birth_is_rejected_and_asks_for_a_rebirth() -> None:
    host = Host()
    out = host.send("DDATA", "N1", ddata(4, 1.0), "D1")
    assert out.observations == []
    assert [r.reason for r in out.rejects] == ["no_birth"]
    assert out.rebirths == [("G1", "N1")]
    host.send("NBIRTH", "N1", nbirth())
    out = host.send("DDATA", "N1", ddata(1, 1.0), "D2")
    assert [r.reason for r in out.rejects] == ["no_birth"]  # device D2 never born


def test_unknown_alias_is_rejected_and_asks_for_a_rebirth() -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth())
    out = host.send("NDATA", "N1", Payload(MS, 1, [Metric(None, DataType.Int64, 5, alias=99)]))
    assert [r.reason for r in out.rejects] == ["unknown_metric"]
    assert out.rebirths == [("G1", "N1")]


def test_deaths_mark_known_tags_stale() -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth(bd_seq=3))
    host.send("DBIRTH", "N1", dbirth(1), "D1")
    out = host.send("DDEATH", "N1", Payload(MS + 5, 2, []), "D1")
    assert {(o.tag, o.value, o.quality, o.flags) for o in out.observations} == {
        ("G1/N1/D1/Temperature", None, Quality.bad, frozenset({"stale"})),
        ("G1/N1/D1/Running", None, Quality.bad, frozenset({"stale"})),
    }
    host.send("DBIRTH", "N1", dbirth(3), "D1")
    stale_will = Payload(None, None, [Metric("bdSeq", DataType.Int64, 2)])
    assert host.send("NDEATH", "N1", stale_will).observations == []  # older session's will
    death = Payload(None, None, [Metric("bdSeq", DataType.Int64, 3)])
    out = host.send("NDEATH", "N1", death)
    assert sorted(o.tag for o in out.observations) == [
        "G1/N1/D1/Running",
        "G1/N1/D1/Temperature",
        "G1/N1/Uptime",
    ]
    assert all(o.flags == {"stale"} and o.value is None for o in out.observations)
    out = host.send("NDATA", "N1", Payload(MS, 4, [Metric(None, DataType.Int64, 5, alias=1)]))
    assert [r.reason for r in out.rejects] == ["no_birth"]


def test_bad_metrics_never_crash_the_host() -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth())
    msg = PayloadMessage()
    msg.seq, msg.timestamp = 1, MS
    dataset = msg.metrics.add(name="Recipe", datatype=int(DataType.DataSet))
    dataset.dataset_value.num_of_columns = 1
    dataset.dataset_value.columns.append("step")
    nan = msg.metrics.add(name="Broken", datatype=int(DataType.Double))
    nan.double_value = float("nan")
    null = msg.metrics.add(name="Missing", datatype=int(DataType.Double))
    null.is_null = True
    out = Output()
    topic = "spBv1.0/G1/DBIRTH/N1/D9"
    host.mapper.map(topic, msg.SerializeToString(), T0, T0 + timedelta(minutes=5), out)
    assert sorted(r.reason for r in out.rejects) == ["non_finite", "unsupported_datatype"]
    (obs,) = out.observations
    assert (obs.tag, obs.value, obs.quality) == ("G1/N1/D9/Missing", None, Quality.bad)
    out = Output()
    host.mapper.map("spBv1.0/G1/NDATA/N1", b"\x0a\xff\xff", T0, T0, out)
    assert [r.reason for r in out.rejects] == ["invalid_protobuf"]


@pytest.mark.parametrize("seq", [None, 300])
def test_missing_or_invalid_seq_is_reported(seq: int | None) -> None:
    host = Host()
    host.send("NBIRTH", "N1", nbirth())
    out = host.send("NDATA", "N1", Payload(MS, seq, [Metric(None, DataType.Int64, 5, alias=1)]))
    assert [r.reason for r in out.rejects] == ["invalid_seq"]
    assert [o.value for o in out.observations] == [5]
