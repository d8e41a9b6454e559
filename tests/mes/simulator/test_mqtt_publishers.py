"""The simulator's MQTT publishers against real brokers: a private Mosquitto (MQTT 3.1.1 and
5) and amqtt in-process (the demo's broker, 3.1.1 only). A plain paho subscriber receives the
messages; they must be well-formed JSON and Sparkplug B, and the MES's own MQTT mapping,
configured from ``config/telemetry.yaml``, must turn them into observations of registered
tags without a single reject, gap or rebirth request.

Ticks are driven by the test; every wait is bounded and nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import Quality
from connectors.mqtt.config import MqttConfig
from connectors.mqtt.mapping import Mapper, Output
from connectors.mqtt.sparkplug import BDSEQ_METRIC, REBIRTH_METRIC, decode_payload
from mes.simulator.layout import build_plant
from mes.simulator.registry import mqtt_options, tag_entries
from mes.simulator.runner import Simulator, SimulatorOptions
from tests.support.mosquitto import PrivateMosquitto

WAIT_S = 15.0
ROOMS = [u for u in build_plant().units.values() if u.transport == "json"]
TICKS = 3

Message = tuple[str, bytes]


class Subscriber:
    """A paho client collecting every message of ``bmb/#`` and ``spBv1.0/#`` in order."""

    def __init__(self, port: int, protocol: int = mqtt.MQTTv311) -> None:
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", protocol=protocol
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe(
            [("bmb/#", 1), ("spBv1.0/#", 1)]
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(WAIT_S):
            raise TimeoutError("subscriber not subscribed")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[Message]], bool]) -> list[Message]:
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.messages), WAIT_S):
                topics = sorted({t for t, _ in self.messages})
                raise AssertionError(f"{len(self.messages)} messages on {topics}")
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path_factory.mktemp("mosquitto"), persistence=False) as broker:
        yield broker


def enough(messages: list[Message]) -> bool:
    env = sum(1 for t, _ in messages if t.endswith("/env"))
    ddata = {t for t, _ in messages if "/DDATA/" in t}
    return env >= TICKS * len(ROOMS) and len(ddata) == 2


async def publish_ticks(sim: Simulator) -> None:
    assert sim.mqtt is not None
    async with asyncio.timeout(WAIT_S):
        await sim.mqtt.wait_connected()
    for _ in range(TICKS):
        await sim.tick()


def mapped(messages: list[Message], protocol: str = "3.1.1") -> Output:
    """The messages through the MES's MQTT mapping, configured as in the registry."""
    mapper = Mapper(MqttConfig.model_validate(mqtt_options(protocol=protocol)), "sim-mqtt")
    out = Output()
    received = datetime.now(UTC)
    for topic, payload in messages:
        mapper.map(topic, payload, received, received + timedelta(minutes=5), out)
    return out


def check_messages(messages: list[Message], protocol: str) -> None:
    env = [(t, json.loads(p)) for t, p in messages if t.startswith("bmb/")]
    assert {t for t, _ in env} == {f"bmb/{u.site}/{u.code}/env" for u in ROOMS}
    for topic, doc in env:
        _, site, room, _ = topic.split("/")
        unit = next(u for u in ROOMS if u.code == room)
        assert doc["site"] == site
        assert doc["room"] == room
        stamp = datetime.fromisoformat(doc["ts"])
        assert doc["ts"].endswith("Z")
        assert stamp.tzinfo is not None
        assert [s["signal"] for s in doc["samples"]] == [s.name for s in unit.signals]
        for sample in doc["samples"]:
            assert isinstance(sample["value"], int | float)
            assert sample["uom"] == unit.spec(sample["signal"]).uom
            assert sample["ts"] == doc["ts"]

    sparkplug = [(t, decode_payload(p)) for t, p in messages if t.startswith("spBv1.0/")]
    kinds = [t.split("/")[2] for t, _ in sparkplug]
    assert kinds[:3] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert "DDATA" in kinds
    births = {t: p for t, p in sparkplug if "BIRTH" in t}
    node_birth = births["spBv1.0/CORE/NBIRTH/IM-CELL-1"]
    assert {m.name for m in node_birth.metrics} >= {BDSEQ_METRIC, REBIRTH_METRIC}
    for device in ("IM-501", "IM-502"):
        birth = births[f"spBv1.0/CORE/DBIRTH/IM-CELL-1/{device}"]
        assert {m.name for m in birth.metrics} == {
            "state", "good_count", "reject_count", "cycle_time", "melt_temp",
            "injection_pressure",
        }  # fmt: skip
        assert all(m.alias is not None for m in birth.metrics)
    seqs = [p.seq for _, p in sparkplug if p.seq is not None]
    assert seqs == list(range(len(seqs)))  # one edge node, no loss, births at 0

    out = mapped(messages, protocol)
    assert out.rejects == []
    assert out.gaps == []
    assert out.rebirths == []
    registered = {entry["tag"] for entry in tag_entries(build_plant())}
    tags = {o.tag for o in out.observations}
    assert tags <= registered
    assert "CORE/RM-PKG-01/dew_point" in tags
    assert "RDC/RM-RDC-PX01/particles_0_5um" in tags
    assert "CORE/IM-CELL-1/IM-501/good_count" in tags
    assert "CORE/IM-CELL-1/IM-502/state" in tags


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_rooms_publish_json_and_moulding_sparkplug(
    mosquitto: PrivateMosquitto, protocol: str
) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto.port)
    options = SimulatorOptions(
        opcua=False,
        mqtt_port=mosquitto.port,
        mqtt_protocol=protocol,
        mqtt_client_id=f"sim-{protocol.replace('.', '')}",
        speed=60.0,
    )
    try:
        async with Simulator(options) as sim:
            await publish_ticks(sim)
            messages = await asyncio.to_thread(sub.wait_for, enough)
        final = await asyncio.to_thread(
            sub.wait_for, lambda m: any("/NDEATH/" in t for t, _ in m)
        )  # a clean stop announces the node's death
    finally:
        await asyncio.to_thread(sub.close)
    check_messages(messages, protocol)
    assert final[-1][0] == "spBv1.0/CORE/NDEATH/IM-CELL-1"


async def test_faults_reach_the_broker(mosquitto: PrivateMosquitto) -> None:
    """A room sensor in dropout is left out of the JSON; a down machine says so, and a
    Sparkplug metric in dropout is sent as null."""
    sub = await asyncio.to_thread(Subscriber, mosquitto.port)
    options = SimulatorOptions(
        opcua=False,
        mqtt_port=mosquitto.port,
        mqtt_client_id="sim-faults",
        faults=["dropout:RM-NDL-01.rh", "down:IM-501", "dropout:IM-502.melt_temp"],
    )
    try:
        async with Simulator(options) as sim:
            await publish_ticks(sim)
            messages = await asyncio.to_thread(sub.wait_for, enough)
    finally:
        await asyncio.to_thread(sub.close)
    ndl = [json.loads(p) for t, p in messages if t == "bmb/CORE/RM-NDL-01/env"]
    assert ndl
    assert all("rh" not in {s["signal"] for s in doc["samples"]} for doc in ndl)
    assert all("temperature" in {s["signal"] for s in doc["samples"]} for doc in ndl)
    observations = mapped(messages).observations
    last = {o.tag: o for o in observations}
    assert "CORE/RM-NDL-01/rh" not in last
    assert last["CORE/IM-CELL-1/IM-501/state"].value == "down"
    good = [o.value for o in observations if o.tag == "CORE/IM-CELL-1/IM-501/good_count"]
    assert len(set(good)) == 1  # a machine that is down counts nothing
    melt = last["CORE/IM-CELL-1/IM-502/melt_temp"]  # a null metric: value lost, quality bad
    assert melt.value is None
    assert melt.quality is Quality.bad
    assert last["CORE/IM-CELL-1/IM-502/state"].quality is Quality.good


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def amqtt_port(tmp_path: Path) -> Iterator[int]:
    """amqtt in a process of its own: it leaves the sockets of closed connections to the
    garbage collector, which would leak ResourceWarnings into this process."""
    binary = Path(sys.executable).parent / "amqtt"
    if not binary.is_file():
        pytest.skip("the amqtt broker script is not installed")
    port = free_port()
    config = tmp_path / "amqtt.yaml"
    settings = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    log = (tmp_path / "amqtt.log").open("wb")
    proc = subprocess.Popen([str(binary), "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"amqtt did not start: {(tmp_path / 'amqtt.log').read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)
        log.close()


async def test_the_demo_broker_amqtt_gets_everything_over_mqtt_311(amqtt_port: int) -> None:
    sub = await asyncio.to_thread(Subscriber, amqtt_port)
    options = SimulatorOptions(opcua=False, mqtt_port=amqtt_port, mqtt_protocol="3.1.1")
    try:
        async with Simulator(options) as sim:
            await publish_ticks(sim)
            messages = await asyncio.to_thread(sub.wait_for, enough)
    finally:
        await asyncio.to_thread(sub.close)
    check_messages(messages, "3.1.1")


async def test_a_broker_that_starts_after_the_simulator_is_found(tmp_path: Path) -> None:
    """The demo may start the simulator first: both clients keep trying until it is up."""
    broker = PrivateMosquitto(tmp_path / "late", persistence=False)
    options = SimulatorOptions(opcua=False, mqtt_port=broker.port, mqtt_client_id="sim-late")
    try:
        async with Simulator(options) as sim:
            await sim.tick()  # published into paho's queue, or dropped: never an error
            await asyncio.to_thread(broker.start)
            sub = await asyncio.to_thread(Subscriber, broker.port)
            try:
                await publish_ticks(sim)
                messages = await asyncio.to_thread(sub.wait_for, enough)
            finally:
                await asyncio.to_thread(sub.close)
        rooms = {t for t, _ in messages if t.endswith("/env")}
        assert rooms == {f"bmb/{u.site}/{u.code}/env" for u in ROOMS}
        assert {t for t, _ in messages if "/DDATA/" in t} == {
            "spBv1.0/CORE/DDATA/IM-CELL-1/IM-501",
            "spBv1.0/CORE/DDATA/IM-CELL-1/IM-502",
        }
    finally:
        await asyncio.to_thread(broker.stop)
