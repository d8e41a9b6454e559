"""A small Sparkplug B edge node publisher for the plant simulator, benchmarks and tests.

It follows the edge-node rules the MES host relies on, so that the host's gap and rebirth
logic can be exercised against real traffic: NBIRTH then DBIRTHs with aliases, one ``seq``
per edge node over all its messages (0..255, wrapping, reset by NBIRTH), ``bdSeq`` in the
NBIRTH and in the NDEATH registered as the MQTT will (incremented per MQTT session), and a
rebirth on an NCMD ``Node Control/Rebirth`` from any host.

paho's network thread answers rebirth commands while the caller publishes data from its
own thread, so every ``seq`` is assigned and queued under one lock: messages reach the
broker in ``seq`` order.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt.codecs import DecodeError
from connectors.mqtt.sparkplug import (
    BDSEQ_METRIC,
    REBIRTH_METRIC,
    SEQ_MODULO,
    DataType,
    PayloadMessage,
    Value,
    datatype_of,
    metric_value,
    now_ms,
    parse_payload,
    set_metric_value,
    topic_name,
)
from connectors.mqtt.transport import release_wakeup_sockets


@dataclass(slots=True)
class _EdgeMetric:
    alias: int
    datatype: DataType
    value: Value


def infer_datatype(value: Value) -> DataType:
    """The Sparkplug datatype a Python value is published as unless told otherwise."""
    if isinstance(value, bool):
        return DataType.Boolean
    if isinstance(value, int):
        return DataType.Int64
    if isinstance(value, float):
        return DataType.Double
    if isinstance(value, bytes):
        return DataType.Bytes
    return DataType.String


class SparkplugEdgeNode:
    """One edge node with optional devices, publishing through its own paho client.

    ``metrics`` are the node's own metrics and ``devices`` maps device ids to theirs, each
    as ``{name: initial value}``; ``datatypes`` overrides the inferred datatype by metric
    name. ``qos`` applies to births and data (the specification uses 0; 1 makes tests
    independent of broker queue limits).
    """

    def __init__(
        self,
        group: str,
        edge_node: str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        metrics: Mapping[str, Value] | None = None,
        devices: Mapping[str, Mapping[str, Value]] | None = None,
        datatypes: Mapping[str, DataType] | None = None,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        qos: Literal[0, 1] = 0,
        bd_seq: int = 0,
        keepalive: int = 30,
    ) -> None:
        self.group, self.edge_node = group, edge_node
        self.host, self.port, self.qos, self.keepalive = host, port, qos, keepalive
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._bd_seq = bd_seq % SEQ_MODULO
        self._sessions = 0
        self._rebirths = 0
        self._births = 0
        self._born = threading.Event()
        self._closing = False
        types = dict(datatypes or {})
        next_alias = iter(range(1, 1 << 32))

        def scope(values: Mapping[str, Value]) -> dict[str, _EdgeMetric]:
            return {
                name: _EdgeMetric(next(next_alias), types.get(name, infer_datatype(v)), v)
                for name, v in values.items()
            }

        self._node_metrics = scope(metrics or {})
        self._devices = {device: scope(values) for device, values in (devices or {}).items()}
        v5 = protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edge-{group}-{edge_node}",
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def seq(self) -> int:
        """The ``seq`` the next message will carry."""
        return self._seq

    @property
    def bd_seq(self) -> int:
        return self._bd_seq

    @property
    def rebirths(self) -> int:
        """How many rebirth commands this node has answered."""
        return self._rebirths

    @property
    def births(self) -> int:
        """How many NBIRTHs this node has published (connections plus rebirths)."""
        return self._births

    def aliases(self, device: str | None = None) -> dict[str, int]:
        """Metric name -> alias of the node (or of one device), as announced in births."""
        metrics = self._node_metrics if device is None else self._devices[device]
        return {name: metric.alias for name, metric in metrics.items()}

    def _death_payload(self) -> bytes:
        msg = PayloadMessage()
        msg.timestamp = now_ms()
        set_metric_value(msg.metrics.add(name=BDSEQ_METRIC), DataType.Int64, self._bd_seq)
        data: bytes = msg.SerializeToString()
        return data

    def connect(self, timeout: float = 10.0) -> None:
        """Connect with the NDEATH as will, then publish NBIRTH and the DBIRTHs."""
        if self._sessions:
            self._bd_seq = (self._bd_seq + 1) % SEQ_MODULO
        death = topic_name(self.group, "NDEATH", self.edge_node)
        self._client.will_set(death, self._death_payload(), qos=1)
        self._born.clear()
        self._closing = False
        self._client.connect(self.host, self.port, self.keepalive)
        self._client.loop_start()
        if not self._born.wait(timeout):
            self._client.loop_stop()
            release_wakeup_sockets(self._client)
            raise TimeoutError(f"edge node {self.edge_node} not connected in {timeout} s")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            return
        self._sessions += 1
        client.subscribe(topic_name(self.group, "NCMD", self.edge_node), qos=1)
        client.subscribe(topic_name(self.group, "DCMD", self.edge_node, "+"), qos=1)
        self.publish_births()
        self._born.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if self._closing:
            return
        # paho reconnects by itself: the next session needs the next bdSeq in its will.
        self._bd_seq = (self._bd_seq + 1) % SEQ_MODULO
        death = topic_name(self.group, "NDEATH", self.edge_node)
        client.will_set(death, self._death_payload(), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            msg = parse_payload(message.payload)
        except DecodeError:
            return
        for metric in msg.metrics:
            if metric.name == REBIRTH_METRIC and metric_value(metric, datatype_of(metric)) is True:
                self.publish_births()
                with self._changed:
                    self._rebirths += 1
                    self._changed.notify_all()
                return

    def _publish(
        self, kind: str, device: str | None, msg: Any, qos: int | None = None
    ) -> mqtt.MQTTMessageInfo:
        with self._lock:
            msg.seq = self._seq
            self._seq = (self._seq + 1) % SEQ_MODULO
            topic = topic_name(self.group, kind, self.edge_node, device)
            info = self._client.publish(
                topic, msg.SerializeToString(), self.qos if qos is None else qos
            )
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError("paho's outgoing queue is full: publish more slowly")
        return info

    def _payload(self, metrics: Mapping[str, _EdgeMetric], birth: bool, ts: int) -> Any:
        msg = PayloadMessage()
        msg.timestamp = ts
        for name, metric in metrics.items():
            m = msg.metrics.add(alias=metric.alias, timestamp=ts)
            if birth:
                m.name = name
            set_metric_value(m, metric.datatype, metric.value)
        return msg

    def publish_births(self) -> None:
        """NBIRTH (``seq`` 0, current bdSeq) and one DBIRTH per device, atomically."""
        with self._lock:
            self._seq = 0
            ts = now_ms()
            msg = self._payload(self._node_metrics, True, ts)
            set_metric_value(msg.metrics.add(name=BDSEQ_METRIC), DataType.Int64, self._bd_seq)
            set_metric_value(msg.metrics.add(name=REBIRTH_METRIC), DataType.Boolean, False)
            self._publish("NBIRTH", None, msg)
            for device, metrics in self._devices.items():
                self._publish("DBIRTH", device, self._payload(metrics, True, ts))
            self._births += 1

    def _data(
        self, kind: str, device: str | None, values: Mapping[str, Value], ts: int | None
    ) -> mqtt.MQTTMessageInfo:
        metrics = self._node_metrics if device is None else self._devices.get(device)
        if metrics is None:
            raise ValueError(f"unknown device {device!r}: not in the births")
        unknown = set(values) - set(metrics)
        if unknown:
            raise ValueError(f"metrics not in the birth: {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in values.items():
                metrics[name].value = value
            payload = self._payload({name: metrics[name] for name in values}, False, ts or now_ms())
            return self._publish(kind, device, payload)

    def publish_node_data(
        self, values: Mapping[str, Value], timestamp_ms: int | None = None
    ) -> mqtt.MQTTMessageInfo:
        """NDATA with the given metrics (by alias); updates the values a rebirth sends."""
        return self._data("NDATA", None, values, timestamp_ms)

    def publish_device_data(
        self, device: str, values: Mapping[str, Value], timestamp_ms: int | None = None
    ) -> mqtt.MQTTMessageInfo:
        """DDATA of one device with the given metrics (by alias)."""
        return self._data("DDATA", device, values, timestamp_ms)

    def publish_device_death(self, device: str) -> mqtt.MQTTMessageInfo:
        """DDEATH: the device went offline (it stays known to this node)."""
        msg = PayloadMessage()
        msg.timestamp = now_ms()
        return self._publish("DDEATH", device, msg)

    def skip_seq(self, count: int = 1) -> None:
        """Pretend ``count`` messages were lost (for gap and rebirth tests)."""
        with self._lock:
            self._seq = (self._seq + count) % SEQ_MODULO

    def wait_for_rebirths(self, count: int, timeout: float = 10.0) -> bool:
        """Block until this node has answered ``count`` rebirth commands in total."""
        with self._changed:
            return self._changed.wait_for(lambda: self._rebirths >= count, timeout)

    def disconnect(self, timeout: float = 5.0) -> None:
        """Publish NDEATH (a clean DISCONNECT suppresses the will), then disconnect.
        Does nothing if not connected (never, or dropped)."""
        if self._closing or not self._born.is_set():
            return
        self._closing = True
        death = topic_name(self.group, "NDEATH", self.edge_node)
        info = self._client.publish(death, self._death_payload(), qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            info.wait_for_publish(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        release_wakeup_sockets(self._client)

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, like a power cut: the broker then
        publishes the NDEATH will."""
        self._closing = True
        self._client.loop_stop()
        release_wakeup_sockets(self._client)
        sock = self._client.socket()
        if sock is not None:
            sock.close()
