"""Sparkplug B end to end: the edge node class publishes through a private Mosquitto, the
connector acts as host application (births, aliases, deaths, seq gaps and rebirths)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import Quality
from connectors.mqtt.sparkplug import DataType
from connectors.mqtt.sparkplug_edge import SparkplugEdgeNode
from connectors.mqtt.transport import release_wakeup_sockets
from tests.connectors.mqtt.conftest import WAIT, Sink, config, context, running
from tests.support.mosquitto import PrivateMosquitto

SPARKPLUG = [{"filter": "spBv1.0/G1/#", "codec": "sparkplug"}]
TEMPERATURE = "G1/N1/D1/Temperature"


@pytest.fixture
def edge(broker: PrivateMosquitto) -> Iterator[SparkplugEdgeNode]:
    node = SparkplugEdgeNode(
        "G1",
        "N1",
        port=broker.port,
        metrics={"Uptime": 1},
        devices={"D1": {"Temperature": 36.5, "Running": True}},
        datatypes={"Temperature": DataType.Float},
        qos=1,
    )
    yield node
    node.disconnect()


def tags(sink: Sink) -> list[str]:
    return [o.tag for o in sink.observations]


async def test_births_aliased_data_and_deaths(
    broker: PrivateMosquitto, edge: SparkplugEdgeNode, sink: Sink
) -> None:
    async with running(context("plant", config(broker, "host", subscriptions=SPARKPLUG), sink)):
        await asyncio.to_thread(edge.connect)
        await sink.wait_for(lambda: len(sink.observations) == 3)
        assert sorted(tags(sink)) == ["G1/N1/D1/Running", TEMPERATURE, "G1/N1/Uptime"]
        edge.publish_device_data("D1", {"Temperature": 37.25})
        await sink.wait_for(lambda: len(sink.observations) == 4)
        data = sink.observations[-1]
        assert (data.tag, data.value, data.quality, data.seq) == (
            TEMPERATURE,
            37.25,
            Quality.good,
            2,
        )
        edge.publish_device_death("D1")
        await sink.wait_for(lambda: len(sink.observations) == 6)
        assert {(o.tag, o.value, o.quality, o.flags) for o in sink.observations[4:]} == {
            (TEMPERATURE, None, Quality.bad, frozenset({"stale"})),
            ("G1/N1/D1/Running", None, Quality.bad, frozenset({"stale"})),
        }
        await asyncio.to_thread(edge.publish_births)
        await sink.wait_for(lambda: len(sink.observations) == 9)
        await asyncio.to_thread(edge.drop)  # no DISCONNECT: the broker publishes the NDEATH will
        await sink.wait_for(lambda: len(sink.observations) == 12)
    stale = sink.observations[9:]
    assert sorted(o.tag for o in stale) == ["G1/N1/D1/Running", TEMPERATURE, "G1/N1/Uptime"]
    assert all(o.flags == {"stale"} and o.quality is Quality.bad for o in stale)
    assert sink.gaps == []
    assert sink.rejects == []


async def test_seq_gap_reports_a_gap_and_the_edge_node_rebirths(
    broker: PrivateMosquitto, edge: SparkplugEdgeNode, sink: Sink
) -> None:
    async with running(context("plant", config(broker, "host", subscriptions=SPARKPLUG), sink)):
        await asyncio.to_thread(edge.connect)
        await sink.wait_for(lambda: len(sink.observations) == 3)
        edge.skip_seq(4)
        edge.publish_device_data("D1", {"Temperature": 40.0})
        await sink.wait_for(lambda: len(sink.gaps) == 1)
        assert await asyncio.to_thread(edge.wait_for_rebirths, 1, WAIT)
        await sink.wait_for(lambda: len(sink.observations) == 7)  # 40.0 and three births
    (gap,) = sink.gaps
    assert (gap.source, gap.first_seq, gap.last_seq) == ("plant", 2, 5)
    assert "rebirth requested" in gap.reason
    assert sink.values(TEMPERATURE) == [36.5, 40.0, 40.0]


async def test_data_before_any_birth_asks_the_edge_node_for_a_rebirth(
    broker: PrivateMosquitto, edge: SparkplugEdgeNode, sink: Sink
) -> None:
    await asyncio.to_thread(edge.connect)  # births published before the host listens
    async with running(context("plant", config(broker, "host", subscriptions=SPARKPLUG), sink)):
        edge.publish_device_data("D1", {"Temperature": 38.0})
        assert await asyncio.to_thread(edge.wait_for_rebirths, 1, WAIT)
        await sink.wait_for(lambda: len(sink.observations) == 3)
        edge.publish_device_data("D1", {"Temperature": 39.0})
        await sink.wait_for(lambda: len(sink.observations) == 4)
    assert [r.reason for r in sink.rejects] == ["no_birth"]
    assert sink.values(TEMPERATURE) == [38.0, 39.0]
    assert edge.births == 2


async def test_host_publishes_its_state_online_and_offline(
    broker: PrivateMosquitto, sink: Sink
) -> None:
    states: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_connect = lambda client, *_: client.subscribe("spBv1.0/STATE/mes", qos=1)

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        loop.call_soon_threadsafe(states.put_nowait, json.loads(message.payload))

    watcher.on_message = on_message
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    try:
        cfg = config(broker, "host", subscriptions=SPARKPLUG, sparkplug_host_id="mes")
        async with running(context("plant", cfg, sink)):
            online = await asyncio.wait_for(states.get(), WAIT)
        offline = await asyncio.wait_for(states.get(), WAIT)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        release_wakeup_sockets(watcher)
    assert online["online"] is True
    assert offline["online"] is False
    assert online["timestamp"] == offline["timestamp"]


async def test_seq_wraps_after_255_without_a_gap(
    broker: PrivateMosquitto, edge: SparkplugEdgeNode, sink: Sink
) -> None:
    async with running(context("plant", config(broker, "host", subscriptions=SPARKPLUG), sink)):
        await asyncio.to_thread(edge.connect)
        for i in range(300):
            edge.publish_device_data("D1", {"Temperature": float(i)})
        await sink.wait_for(lambda: len(sink.observations) == 303)
    seqs = [o.seq for o in sink.observations if o.tag == TEMPERATURE][1:]
    assert seqs == [(2 + i) % 256 for i in range(300)]
    assert sink.gaps == []
    assert edge.rebirths == 0
