"""Sparkplug B 3.0: the protobuf payload, topic names, and the host application's state.

No maintained Python package works with paho-mqtt 2, so the schema below is transcribed
from the specification (Eclipse Tahu's ``sparkplug_b.proto``, proto2) and built at runtime
from a ``FileDescriptorProto`` in a private descriptor pool: no generated code, no build
step, no clash with another copy of the schema in the default pool.

``SparkplugHost`` is pure state, so its rules are testable without a broker: births map
aliases to metric names, ``seq`` (0..255, wrapping) proves nothing was lost between two
messages of an edge node, a jump or data before any birth asks the node for a rebirth, and
a death marks every tag the node or device announced as stale. The connector does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped, unused-ignore]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

from connectors.base import Gap, Observation, Quality
from connectors.mqtt.codecs import DecodeError, Scalar

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
SEQ_MODULO = 256
PACKAGE = "org.eclipse.tahu.protobuf"

Value = float | int | bool | str | bytes | None

_VALUE: tuple[str, ...] = (
    "int_value:uint32",
    "long_value:uint64",
    "float_value:float",
    "double_value:double",
)
_VALUE += ("boolean_value:bool", "string_value:string")

# fmt: off
# Message path below Payload ("" is Payload itself), first extension number (0: none),
# fields "name=number:type" ("*" repeated), first number of the "value" oneof, its fields.
_SCHEMA: tuple[tuple[str, int, tuple[str, ...], int, tuple[str, ...]], ...] = (
    ("", 6, ("timestamp=1:uint64", "metrics=2:*Metric", "seq=3:uint64", "uuid=4:string",
             "body=5:bytes"), 0, ()),
    ("Template", 6, ("version=1:string", "metrics=2:*Metric", "parameters=3:*Template.Parameter",
                     "template_ref=4:string", "is_definition=5:bool"), 0, ()),
    ("Template.Parameter", 0, ("name=1:string", "type=2:uint32"), 3,
     (*_VALUE, "extension_value:Template.Parameter.ParameterValueExtension")),
    ("Template.Parameter.ParameterValueExtension", 1, (), 0, ()),
    ("DataSet", 5, ("num_of_columns=1:uint64", "columns=2:*string", "types=3:*uint32",
                    "rows=4:*DataSet.Row"), 0, ()),
    ("DataSet.DataSetValue", 0, (), 1,
     (*_VALUE, "extension_value:DataSet.DataSetValue.DataSetValueExtension")),
    ("DataSet.DataSetValue.DataSetValueExtension", 1, (), 0, ()),
    ("DataSet.Row", 2, ("elements=1:*DataSet.DataSetValue",), 0, ()),
    ("PropertyValue", 0, ("type=1:uint32", "is_null=2:bool"), 3,
     (*_VALUE, "propertyset_value:PropertySet", "propertysets_value:PropertySetList",
      "extension_value:PropertyValue.PropertyValueExtension")),
    ("PropertyValue.PropertyValueExtension", 1, (), 0, ()),
    ("PropertySet", 3, ("keys=1:*string", "values=2:*PropertyValue"), 0, ()),
    ("PropertySetList", 2, ("propertyset=1:*PropertySet",), 0, ()),
    ("MetaData", 9, ("is_multi_part=1:bool", "content_type=2:string", "size=3:uint64",
                     "seq=4:uint64", "file_name=5:string", "file_type=6:string",
                     "md5=7:string", "description=8:string"), 0, ()),
    ("Metric", 0, ("name=1:string", "alias=2:uint64", "timestamp=3:uint64", "datatype=4:uint32",
                   "is_historical=5:bool", "is_transient=6:bool", "is_null=7:bool",
                   "metadata=8:MetaData", "properties=9:PropertySet"), 10,
     (*_VALUE, "bytes_value:bytes", "dataset_value:DataSet", "template_value:Template",
      "extension_value:Metric.MetricValueExtension")),
    ("Metric.MetricValueExtension", 1, (), 0, ()),
)
# fmt: on


def _build_payload_class() -> Any:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="mes_sparkplug_b.proto", package=PACKAGE)
    fdp.syntax = "proto2"
    protos: dict[str, Any] = {}
    for path, extensions, fields, oneof_first, oneof_fields in _SCHEMA:
        parent, _, name = path.rpartition(".")
        container = fdp.message_type if not path else protos[parent].nested_type
        msg = protos[path] = container.add(name=name or "Payload")
        if extensions:
            msg.extension_range.add(start=extensions, end=536_870_912)
        specs: list[tuple[str, int | None]] = [(spec, None) for spec in fields]
        if oneof_fields:
            msg.oneof_decl.add(name="value")
            specs += [
                (f"{n}={oneof_first + i}:{t}", 0)
                for i, (n, _, t) in enumerate(f.partition(":") for f in oneof_fields)
            ]
        for spec, oneof in specs:
            name_number, _, kind = spec.partition(":")
            fname, _, number = name_number.partition("=")
            repeated = kind.startswith("*")
            kind = kind.lstrip("*")
            fld = msg.field.add(name=fname, number=int(number))
            fld.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if kind[0].islower():
                fld.type = getattr(F, f"TYPE_{kind.upper()}")
            else:
                fld.type, fld.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.Payload.{kind}"
            if oneof is not None:
                fld.oneof_index = oneof
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


PayloadMessage: Any = _build_payload_class()
"""The protobuf class ``org.eclipse.tahu.protobuf.Payload``."""


DataType = IntEnum(
    "DataType",
    "Unknown Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float Double Boolean String"
    " DateTime Text UUID DataSet Bytes File Template PropertySet PropertySetList",
    start=0,
)
"""Sparkplug metric datatypes, numbered 0..21 in this order (specification 6.4.16)."""

_SIGNED_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
_INT_FIELD = {DataType.Int8, DataType.Int16, DataType.Int32}
_INT_FIELD |= {DataType.UInt8, DataType.UInt16, DataType.UInt32}
_LONG_FIELD = {DataType.Int64, DataType.UInt64, DataType.DateTime}
_STRING_TYPES = {DataType.String, DataType.Text, DataType.UUID}
_BYTES_TYPES = {DataType.Bytes, DataType.File}
_ONEOF_TYPES = {
    "int_value": DataType.Int32,
    "long_value": DataType.Int64,
    "float_value": DataType.Float,
    "double_value": DataType.Double,
    "boolean_value": DataType.Boolean,
    "string_value": DataType.String,
    "bytes_value": DataType.Bytes,
}


def _sign(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def metric_value(msg: Any, datatype: DataType) -> Value:
    """The Python value of a protobuf metric (or property value) of a known datatype.

    Signed integers travel two's-complement in unsigned fields; masking to the type's width
    first reads both the 8-bit and the 32-bit rendering of a negative Int8 correctly.
    Datasets, templates and arrays raise ``DecodeError("unsupported_datatype")``.
    """
    if datatype in _SIGNED_BITS:
        raw = msg.int_value if datatype in _INT_FIELD else msg.long_value
        return _sign(raw, _SIGNED_BITS[datatype])
    if datatype in _INT_FIELD:
        return int(msg.int_value)
    if datatype in _LONG_FIELD:
        return int(msg.long_value)
    if datatype == DataType.Float:
        return float(msg.float_value)
    if datatype == DataType.Double:
        return float(msg.double_value)
    if datatype == DataType.Boolean:
        return bool(msg.boolean_value)
    if datatype in _STRING_TYPES:
        return str(msg.string_value)
    if datatype in _BYTES_TYPES:
        return bytes(msg.bytes_value)
    raise DecodeError("unsupported_datatype", f"datatype {datatype.name} is not decoded")


def datatype_of(msg: Any) -> DataType:
    """A metric's declared datatype, or the one implied by the value field it carries."""
    if msg.HasField("datatype"):
        try:
            return DataType(msg.datatype)
        except ValueError:
            return DataType.Unknown
    return _ONEOF_TYPES.get(msg.WhichOneof("value") or "", DataType.Unknown)


def set_metric_value(
    msg: Any, datatype: DataType, value: Value, type_field: str = "datatype"
) -> None:
    """Store ``value`` in the field its datatype uses (None sets ``is_null``); property
    values name their datatype field ``type``."""
    setattr(msg, type_field, int(datatype))
    if value is None:
        msg.is_null = True
    elif datatype in _INT_FIELD:
        msg.int_value = int(value) & ((1 << _SIGNED_BITS.get(datatype, 32)) - 1)
    elif datatype in _LONG_FIELD:
        msg.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype in (DataType.Float, DataType.Double):
        setattr(msg, "float_value" if datatype == DataType.Float else "double_value", value)
    elif datatype == DataType.Boolean:
        msg.boolean_value = bool(value)
    elif datatype in _STRING_TYPES:
        msg.string_value = str(value)
    elif datatype in _BYTES_TYPES and isinstance(value, bytes):
        msg.bytes_value = value
    else:
        raise ValueError(f"cannot encode {type(value).__name__} as {datatype.name}")


@dataclass(slots=True)
class Metric:
    """One metric in plain Python (``value`` None means ``is_null``)."""

    name: str | None
    datatype: DataType
    value: Value
    alias: int | None = None
    timestamp: int | None = None
    is_historical: bool = False
    is_transient: bool = False
    properties: dict[str, Value] = field(default_factory=dict)


@dataclass(slots=True)
class Payload:
    """A Sparkplug payload in plain Python; ``timestamp`` in ms since the epoch (UTC)."""

    timestamp: int | None
    seq: int | None
    metrics: list[Metric]
    uuid: str | None = None
    body: bytes | None = None


def encode_payload(payload: Payload) -> bytes:
    """Serialise a payload (edge node, rebirth requests, tests)."""
    msg = PayloadMessage()
    for name in ("timestamp", "seq", "uuid", "body"):
        if getattr(payload, name) is not None:
            setattr(msg, name, getattr(payload, name))
    for metric in payload.metrics:
        m = msg.metrics.add()
        for name in ("name", "alias", "timestamp"):
            if getattr(metric, name) is not None:
                setattr(m, name, getattr(metric, name))
        if metric.is_historical:
            m.is_historical = True
        if metric.is_transient:
            m.is_transient = True
        set_metric_value(m, metric.datatype, metric.value)
        for key, value in metric.properties.items():
            m.properties.keys.append(key)
            kind = DataType.Int32 if isinstance(value, int) else DataType.String
            set_metric_value(m.properties.values.add(), kind, value, "type")
    data: bytes = msg.SerializeToString()
    return data


def parse_payload(data: bytes | bytearray) -> Any:
    """The raw protobuf message; malformed bytes are ``invalid_protobuf``."""
    msg = PayloadMessage()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its DecodeError or RuntimeError
        raise DecodeError("invalid_protobuf", str(exc)[:200]) from None
    return msg


def _optional(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def decode_payload(data: bytes | bytearray) -> Payload:
    """Decode into plain Python; values that are not decoded (datasets...) become None."""
    msg = parse_payload(data)
    metrics = []
    for m in msg.metrics:
        datatype = datatype_of(m)
        value: Value = None
        if not m.is_null:
            try:
                value = metric_value(m, datatype)
            except DecodeError:
                value = None
        props: dict[str, Value] = {}
        for key, pv in zip(m.properties.keys, m.properties.values, strict=False):
            try:
                props[key] = None if pv.is_null else metric_value(pv, DataType(pv.type))
            except (DecodeError, ValueError):
                props[key] = None
        base = [_optional(m, name) for name in ("name", "alias", "timestamp")]
        metric = Metric(base[0], datatype, value, base[1], base[2], properties=props)
        metric.is_historical, metric.is_transient = m.is_historical, m.is_transient
        metrics.append(metric)
    head = [_optional(msg, name) for name in ("timestamp", "seq", "uuid", "body")]
    return Payload(head[0], head[1], metrics, head[2], head[3])


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def rebirth_request(timestamp_ms: int | None = None) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    metric = Metric(REBIRTH_METRIC, DataType.Boolean, True)
    return encode_payload(Payload(timestamp_ms or now_ms(), None, [metric]))


@dataclass(frozen=True, slots=True)
class Topic:
    """``spBv1.0/<group>/<type>/<edge_node>[/<device>]`` split into its parts."""

    group: str
    message_type: str
    edge_node: str
    device: str | None = None


MESSAGE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"})
MESSAGE_TYPES |= {"NCMD", "DCMD"}


def parse_topic(topic: str) -> Topic | None:
    """The parts of a Sparkplug edge topic; None for anything else (``STATE`` included)."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in MESSAGE_TYPES:
        return None
    if parts[2].startswith("D") != (len(parts) == 5):
        return None
    return Topic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None)


def topic_name(group: str, message_type: str, edge_node: str, device: str | None = None) -> str:
    suffix = "" if device is None else f"/{device}"
    return f"{NAMESPACE}/{group}/{message_type}/{edge_node}{suffix}"


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


Namer = Callable[[Sequence[str], Topic, str], tuple[str, str]]
"""(topic levels, topic, metric name) -> (source, tag); supplied by the connector's mapping."""

STALE = frozenset({"stale"})


@dataclass(slots=True)
class _Known:
    """A metric announced in a birth; ``tag`` None for control metrics never emitted."""

    source: str
    tag: str | None
    datatype: DataType


@dataclass(slots=True)
class _Scope:
    """The metrics of an edge node itself or of one of its devices."""

    by_alias: dict[int, _Known] = field(default_factory=dict)
    by_name: dict[str, _Known] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    source: str
    born: bool = False
    bd_seq: int | None = None
    next_seq: int | None = None
    metrics: _Scope = field(default_factory=_Scope)
    devices: dict[str, _Scope] = field(default_factory=dict)
    last_seen: datetime | None = None
    rebirth_at: datetime | None = None


@dataclass(slots=True)
class HostOutput:
    """What messages produced: observations, (reason, detail) rejects, gaps, and the edge
    nodes to ask for a rebirth as (group, edge_node)."""

    observations: list[Observation] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    rebirths: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Message:
    levels: Sequence[str]
    topic: Topic
    msg: Any
    received: datetime
    latest: datetime
    namer: Namer
    out: HostOutput


def _is_control(name: str) -> bool:
    return name == BDSEQ_METRIC or name.startswith(("Node Control/", "Device Control/"))


class SparkplugHost:
    """Host-application state for every edge node seen on the subscribed topics."""

    def __init__(self, rebirth_interval: float = 5.0) -> None:
        self.rebirth_interval = rebirth_interval
        self._nodes: dict[tuple[str, str], _Node] = {}

    def handle(
        self,
        levels: Sequence[str],
        topic: Topic,
        data: bytes | bytearray,
        received: datetime,
        latest: datetime,
        namer: Namer,
        out: HostOutput,
    ) -> None:
        """Apply one message; a payload that cannot be used raises ``DecodeError`` after
        any rebirth request it caused was added to ``out``."""
        kind = topic.message_type
        if kind in ("NCMD", "DCMD"):
            return
        m = _Message(levels, topic, parse_payload(data), received, latest, namer, out)
        node = self._nodes.get((topic.group, topic.edge_node))
        if node is None:
            node = _Node(namer(levels, Topic(topic.group, "", topic.edge_node), "")[0])
            self._nodes[(topic.group, topic.edge_node)] = node
        try:
            if kind == "NDEATH":
                self._node_death(node, m)
            elif kind == "NBIRTH":
                node.born, node.bd_seq, node.rebirth_at = True, _bd_seq(m.msg), None
                node.metrics, node.devices, node.next_seq = _Scope(), {}, None
                self._check_seq(node, m)
                self._metrics(node, node.metrics, m)
            elif not node.born:
                self._rebirth(node, m)
                raise DecodeError("no_birth", f"{kind} before NBIRTH; rebirth requested")
            else:
                self._node_message(node, m)
        finally:
            node.last_seen = received

    def _node_message(self, node: _Node, m: _Message) -> None:
        kind, device = m.topic.message_type, m.topic.device or ""
        self._check_seq(node, m)
        if kind == "NDATA":
            scope = node.metrics
        elif kind == "DBIRTH":
            scope = node.devices[device] = _Scope()
        elif device not in node.devices:
            self._rebirth(node, m)
            raise DecodeError("no_birth", f"{kind} before DBIRTH of {device}; rebirth requested")
        elif kind == "DDEATH":
            when = _time(m.msg.timestamp) if m.msg.HasField("timestamp") else m.received
            _stale(node.devices.pop(device), min(when, m.latest), m.received, m.out)
            return
        else:
            scope = node.devices[device]
        self._metrics(node, scope, m)

    def _check_seq(self, node: _Node, m: _Message) -> None:
        seq = m.msg.seq if m.msg.HasField("seq") else None
        if seq is None or seq >= SEQ_MODULO:
            m.out.rejects.append(("invalid_seq", f"{m.topic.message_type} seq {seq} not 0..255"))
            node.next_seq = None
            return
        expected, received = node.next_seq, m.received
        if expected is not None and seq != expected:
            start = node.last_seen if node.last_seen and node.last_seen < received else received
            reason = (
                f"sparkplug seq jump at {m.topic.group}/{m.topic.edge_node}: expected "
                f"{expected}, got {seq} (0..255, wrapping); rebirth requested"
            )
            last = (seq - 1) % SEQ_MODULO
            m.out.gaps.append(Gap(node.source, start, received, reason, None, expected, last))
            self._rebirth(node, m)
        node.next_seq = (seq + 1) % SEQ_MODULO

    def _rebirth(self, node: _Node, m: _Message) -> None:
        last = node.rebirth_at
        if last is None or (m.received - last).total_seconds() >= self.rebirth_interval:
            node.rebirth_at = m.received
            m.out.rebirths.append((m.topic.group, m.topic.edge_node))

    def _node_death(self, node: _Node, m: _Message) -> None:
        bd_seq = _bd_seq(m.msg)
        if bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq:
            return  # the will of an earlier session, delivered late: the node is alive
        if node.born:
            for scope in (node.metrics, *node.devices.values()):
                _stale(scope, m.received, m.received, m.out)
        node.born, node.next_seq, node.devices = False, None, {}

    def _metrics(self, node: _Node, scope: _Scope, m: _Message) -> None:
        birth = m.topic.message_type.endswith("BIRTH")
        seq = m.msg.seq if m.msg.HasField("seq") else None
        base = _time(m.msg.timestamp) if m.msg.HasField("timestamp") else m.received
        unknown: list[str] = []
        problems: dict[str, list[str]] = {}
        for metric in m.msg.metrics:
            name = metric.name if metric.HasField("name") else None
            label = name or f"alias {metric.alias}"
            if birth:
                if name is None:
                    problems.setdefault("invalid_birth", []).append(label)
                    continue
                source, tag = m.namer(m.levels, m.topic, name)
                known = _Known(source, None if _is_control(name) else tag, datatype_of(metric))
                scope.by_name[name] = known
                if metric.HasField("alias"):
                    scope.by_alias[metric.alias] = known
            else:
                found = scope.by_alias.get(metric.alias) if metric.HasField("alias") else None
                found = found or (scope.by_name.get(name) if name is not None else None)
                if found is None:
                    unknown.append(label)
                    continue
                known = found
            if known.tag is None:
                continue
            try:
                m.out.observations.append(_observation(known, metric, seq, base, m))
            except DecodeError as exc:
                problems.setdefault(exc.reason, []).append(label)
        if unknown:
            self._rebirth(node, m)
            m.out.rejects.append(("unknown_metric", f"not in the birth: {', '.join(unknown[:20])}"))
        for reason, labels in problems.items():
            m.out.rejects.append((reason, f"metrics {', '.join(labels[:20])}"))


def _time(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise DecodeError("invalid_timestamp", f"timestamp {ms} is out of range") from None


def _observation(
    known: _Known, metric: Any, seq: int | None, base: datetime, m: _Message
) -> Observation:
    source_ts = _time(metric.timestamp) if metric.HasField("timestamp") else base
    if source_ts > m.latest:
        raise DecodeError("future_timestamp", source_ts.isoformat())
    datatype = known.datatype if known.datatype != DataType.Unknown else datatype_of(metric)
    value: Scalar | None = None
    quality, status = Quality.bad, None
    if not metric.is_null:
        raw = metric_value(metric, datatype)
        if isinstance(raw, bytes):
            raise DecodeError("unsupported_datatype", datatype.name)
        if isinstance(raw, float) and not math.isfinite(raw):
            raise DecodeError("non_finite", str(raw))
        value, quality = raw, Quality.good
    props = metric.properties
    if metric.HasField("properties") and "Quality" in props.keys:
        prop = props.values[list(props.keys).index("Quality")]
        status = int(prop.int_value if prop.WhichOneof("value") == "int_value" else 0)
        quality = (
            Quality.good if status >= 192 else Quality.uncertain if status >= 64 else Quality.bad
        )
    flags = _flags(metric.is_historical, metric.is_transient)
    tag = known.tag or ""
    return Observation(known.source, tag, value, quality, source_ts, m.received, seq, status, flags)


_NO_FLAGS: frozenset[str] = frozenset()


def _flags(historical: bool, transient: bool) -> frozenset[str]:
    # Most metrics carry neither flag: no set is built for them (a per-metric hot path).
    if not historical and not transient:
        return _NO_FLAGS
    return frozenset(
        name for name, on in (("historical", historical), ("transient", transient)) if on
    )


def _stale(scope: _Scope, when: datetime, received: datetime, out: HostOutput) -> None:
    for known in scope.by_name.values():
        if known.tag is not None:
            out.observations.append(
                Observation(known.source, known.tag, None, Quality.bad, when, received, flags=STALE)
            )


def _bd_seq(msg: Any) -> int | None:
    for metric in msg.metrics:
        if metric.HasField("name") and metric.name == BDSEQ_METRIC and not metric.is_null:
            value = metric_value(metric, datatype_of(metric))
            return int(value) if isinstance(value, int) else None
    return None
