"""The simulator's MQTT side: cleanroom JSON and a Sparkplug B edge node for moulding.

*Cleanrooms* publish one JSON message per room and tick on ``bmb/<site>/<room>/env``::

    {"ts": "2026-03-01T08:00:00.000Z", "room": "RM-PKG-01", "samples": [
        {"signal": "temperature", "value": 21.02, "uom": "degC", "ts": "...Z"}, ...]}

which is what the MQTT connector's JSON mapping reads with ``samples_field: samples``,
``tag_field: signal`` and ``tag: "{1}/{2}/{field}"`` (tag ``CORE/RM-PKG-01/temperature``).
A signal in dropout is left out of the samples (the sensor delivers nothing), which the MES
sees as a hole in the data rather than as a made-up value.

*Moulding machines* are devices of a Sparkplug B edge node per work center (group = site,
edge node = work center, device = unit code), published with the shared
``connectors.mqtt.sparkplug_edge.SparkplugEdgeNode``: NBIRTH/DBIRTH with aliases, DDATA by
exception (only metrics whose value changed), null metrics during a dropout.

Both use paho-mqtt 2 over MQTT 3.1.1 (amqtt, the demo's embedded broker, speaks nothing
else) or 5, QoS 1. paho's outgoing queue is bounded; a full queue (broker unreachable for
long) drops new messages and counts them instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt.sparkplug import DataType
from connectors.mqtt.sparkplug import Value as MetricValue
from connectors.mqtt.sparkplug_edge import SparkplugEdgeNode
from mes.simulator.dynamics import Plant, Reading, SignalKind, SignalSpec, UnitModel, Value
from mes.simulator.layout import MQTT_TOPIC_PREFIX, env_topic, sparkplug_ids

log = logging.getLogger(__name__)

Protocol = Literal["3.1.1", "5"]
MAX_QUEUED = 10_000
"""Messages paho may hold while the broker is away (about 15 min of room data at 1 Hz)."""


def iso_utc(ts: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def env_payload(
    unit: UnitModel, readings: Mapping[tuple[str, str], Reading], ts: datetime
) -> bytes:
    """The JSON document of one room at one tick (signals in dropout left out)."""
    stamp = iso_utc(ts)
    samples: list[dict[str, Any]] = []
    for spec in unit.signals:
        reading = readings.get((unit.code, spec.name))
        if reading is None or not reading.good or reading.value is None:
            continue
        samples.append({"signal": spec.name, "value": reading.value, "uom": spec.uom, "ts": stamp})
    doc = {"ts": stamp, "site": unit.site, "room": unit.code, "samples": samples}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def sparkplug_datatype(spec: SignalSpec) -> DataType:
    if spec.kind == SignalKind.text:
        return DataType.String
    if spec.kind == SignalKind.boolean:
        return DataType.Boolean
    return DataType.Int64 if spec.integer else DataType.Double


def sparkplug_value(spec: SignalSpec, reading: Reading) -> MetricValue:
    """The metric value of a reading: None (null metric) during a dropout."""
    value = reading.value
    if not reading.good or value is None:
        return None
    if spec.kind == SignalKind.number and not isinstance(value, bool | str):
        return int(value) if spec.integer else float(value)
    return value


class MqttPublishers:
    """Publishes the plant's JSON rooms and Sparkplug devices; ``publish`` after each step."""

    def __init__(
        self,
        plant: Plant,
        host: str = "127.0.0.1",
        port: int = 1883,
        protocol: Protocol = "3.1.1",
        client_id: str = "bmb-simulator",
        topic_prefix: str = MQTT_TOPIC_PREFIX,
        qos: Literal[0, 1] = 1,
    ) -> None:
        self.plant, self.host, self.port, self.protocol = plant, host, port, protocol
        self.client_id, self.topic_prefix, self.qos = client_id, topic_prefix, qos
        self.rooms = [u for u in plant.units.values() if u.transport == "json"]
        self.devices = [u for u in plant.units.values() if u.transport == "sparkplug"]
        self.published = 0
        self.dropped = 0
        self._connected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{client_id}-env",
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.max_queued_messages_set(MAX_QUEUED)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.edges: dict[tuple[str, str], SparkplugEdgeNode] = {}
        self._ready: set[tuple[str, str]] = set()
        self._last: dict[tuple[str, str], MetricValue] = {}
        self._connector: asyncio.Task[None] | None = None
        groups: dict[tuple[str, str], dict[str, dict[str, MetricValue]]] = {}
        types: dict[str, DataType] = {}
        for unit in self.devices:
            group, edge_node, device = sparkplug_ids(unit)
            metrics = groups.setdefault((group, edge_node), {})[device] = {}
            for spec in unit.signals:
                types[spec.name] = sparkplug_datatype(spec)
                reading = plant.readings.get((unit.code, spec.name), Reading(None, False))
                value = sparkplug_value(spec, reading)
                metrics[spec.name] = value if value is not None else _zero(spec)
        for (group, edge_node), devices in groups.items():
            self.edges[(group, edge_node)] = SparkplugEdgeNode(
                group,
                edge_node,
                host=host,
                port=port,
                devices=devices,
                datatypes=types,
                client_id=f"{client_id}-{group}-{edge_node}",
                protocol=protocol,
                qos=qos,
            )

    # -- connection -------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%s refused the simulator: %s", self.host, self.port, reason)
            return
        log.info("simulator connected to MQTT %s:%s (MQTT %s)", self.host, self.port, self.protocol)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)

    async def start(self) -> None:
        """Connect in the background: paho retries the JSON client by itself, the edge
        nodes are retried here until their first session (paho then keeps them up)."""
        self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._connector = asyncio.create_task(self._connect_edges(), name="sim-sparkplug-connect")

    async def _connect_edges(self) -> None:
        delay = 0.5
        while len(self._ready) < len(self.edges):
            for key, edge in self.edges.items():
                if key in self._ready:
                    continue
                try:
                    await asyncio.to_thread(edge.connect, 5.0)
                except (OSError, TimeoutError) as exc:
                    log.info("Sparkplug edge node %s/%s not connected yet: %s", *key, exc)
                    continue
                self._ready.add(key)
                log.info("Sparkplug edge node %s/%s born (bdSeq %s)", *key, edge.bd_seq)
            if len(self._ready) < len(self.edges):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def wait_connected(self) -> None:
        """Until the JSON client and every edge node are connected (bound it with
        ``asyncio.timeout``)."""
        await self._connected.wait()
        if self._connector is not None:
            await asyncio.shield(self._connector)

    # -- publishing -------------------------------------------------------------------

    def publish(self, readings: Mapping[tuple[str, str], Reading], ts: datetime) -> None:
        """One JSON message per room; DDATA with the changed metrics of each device."""
        for room in self.rooms:
            payload = env_payload(room, readings, ts)
            info = self.client.publish(env_topic(room, self.topic_prefix), payload, self.qos)
            self._count(info.rc)
        ts_ms = int(ts.timestamp() * 1000)
        for unit in self.devices:
            group, edge_node, device = sparkplug_ids(unit)
            if (group, edge_node) not in self._ready:
                continue
            changed: dict[str, MetricValue] = {}
            for spec in unit.signals:
                key = (unit.code, spec.name)
                reading = readings.get(key)
                if reading is None:
                    continue
                value = sparkplug_value(spec, reading)
                if key not in self._last or self._last[key] != value:
                    changed[spec.name] = value
                    self._last[key] = value
            if changed:
                try:
                    info = self.edges[(group, edge_node)].publish_device_data(
                        device, changed, ts_ms
                    )
                except RuntimeError:
                    self._count(MQTTErrorCode.MQTT_ERR_QUEUE_SIZE)
                else:
                    self._count(info.rc)

    def _count(self, rc: MQTTErrorCode) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("MQTT queue full: %s simulator messages dropped", self.dropped)
        else:
            self.published += 1  # queued (sent now, or after a reconnect)

    async def stop(self) -> None:
        """NDEATH and DISCONNECT for every edge node, then the JSON client."""
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        for key, edge in self.edges.items():
            if key in self._ready:
                await asyncio.to_thread(edge.disconnect, 2.0)
        self._ready.clear()
        await asyncio.to_thread(self._close_json)

    def _close_json(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _zero(spec: SignalSpec) -> Value:
    if spec.kind == SignalKind.text:
        return ""
    if spec.kind == SignalKind.boolean:
        return False
    return 0 if spec.integer else 0.0
