"""Topic routing and JSON / plain-number payload mapping, table-driven by the config.

Pure functions of (subscription, topic, payload, times): no I/O and no state besides a
bounded per-topic cache, so every mapping rule is testable without a broker and the hot
path does one dict lookup per message for routing and tag naming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.base import Gap, Observation, Quality, Rejected
from connectors.mqtt import sparkplug
from connectors.mqtt.codecs import (
    DecodeError,
    Payload,
    compile_path,
    load_json,
    lookup,
    parse_number,
    parse_quality,
    parse_timestamp,
    to_value,
)
from connectors.mqtt.config import MqttConfig, Subscription, template_fields

PAYLOAD_EXCERPT = 256
MAX_TAG_LENGTH = 512
CACHE_SIZE = 65_536


class Template:
    """A compiled tag or source template (``{0}``, ``{last}``, ``{field}``, ...)."""

    __slots__ = ("names", "text", "uses_field")

    def __init__(self, text: str) -> None:
        self.text = text
        self.names = frozenset(template_fields(text))
        self.uses_field = "field" in self.names

    def render(self, levels: Sequence[str], **named: str) -> str:
        if not self.names:
            return self.text
        try:
            return self.text.format(*levels, topic="/".join(levels), last=levels[-1], **named)
        except (IndexError, KeyError):
            raise DecodeError(
                "template_level_missing",
                f"{self.text!r} needs more levels than {'/'.join(levels)!r} has",
            ) from None


def topic_matches(filter_levels: Sequence[str], levels: Sequence[str]) -> bool:
    """MQTT matching: ``+`` one level, ``#`` the rest (and the parent); wildcards at the
    first level never match ``$`` topics (MQTT 5 section 4.7.2)."""
    if levels and levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, wanted in enumerate(filter_levels):
        if wanted == "#":
            return True
        if index >= len(levels):
            return False
        if wanted != "+" and wanted != levels[index]:
            return False
    return len(levels) == len(filter_levels)


class Route:
    """One subscription compiled for the hot path."""

    def __init__(self, index: int, subscription: Subscription) -> None:
        sub = subscription
        self.index = index
        self.subscription = sub
        self.codec = sub.codec
        self.filter_levels = tuple(sub.filter.split("/"))
        self.tag = Template(sub.tag) if sub.tag is not None else None
        self.node_tag = Template(sub.node_tag) if sub.node_tag is not None else None
        self.source = Template(sub.source) if sub.source is not None else None
        self.value_path = compile_path(sub.value_field)
        self.timestamp_path = compile_path(sub.timestamp_field) if sub.timestamp_field else None
        self.quality_path = compile_path(sub.quality_field) if sub.quality_field else None
        self.samples_path = compile_path(sub.samples_field) if sub.samples_field else None
        self.tag_path = compile_path(sub.tag_field) if sub.tag_field else None


@dataclass(slots=True)
class Match:
    """A topic resolved to its route, cached: the fixed tag and source are rendered once."""

    route: Route
    topic: str
    levels: tuple[str, ...]
    source: str
    tag: str | None
    error: DecodeError | None = None


class Router:
    """Finds the first subscription whose filter matches a topic (configuration order)."""

    def __init__(self, subscriptions: Sequence[Subscription], default_source: str) -> None:
        self.routes = [Route(i, s) for i, s in enumerate(subscriptions)]
        self.default_source = default_source
        self._cache: dict[str, Match | None] = {}
        self.sources: set[str] = set()
        """Every source a message was mapped to: what a lost connection leaves in doubt."""

    def match(self, topic: str) -> Match | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = self._match(topic)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _match(self, topic: str) -> Match | None:
        levels = tuple(topic.split("/"))
        for route in self.routes:
            if not topic_matches(route.filter_levels, levels):
                continue
            found = Match(route, topic, levels, self.default_source, None)
            try:
                if route.source is not None:
                    named: dict[str, str] = {}
                    if route.codec == "sparkplug" and len(levels) >= 4:
                        named = {"group": levels[1], "edge_node": levels[3]}
                    found.source = route.source.render(levels, **named)
                if (
                    route.codec != "sparkplug"
                    and route.tag is not None
                    and not route.tag.uses_field
                ):
                    found.tag = route.tag.render(levels)
            except DecodeError as exc:
                found.error = exc
            self.sources.add(found.source)
            return found
        return None


@dataclass(slots=True)
class Output:
    """What one batch of messages produced, in receipt order, plus the Sparkplug gaps and
    the edge nodes to ask for a rebirth as (group, edge_node)."""

    observations: list[Observation] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    rebirths: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, source: str, error: DecodeError, topic: str, payload: Payload) -> None:
        detail = f"{topic}: {error.detail}" if error.detail else topic
        excerpt = bytes(payload[:PAYLOAD_EXCERPT])
        self.rejects.append(Rejected(source, error.reason, detail, excerpt))


def map_number(match: Match, payload: Payload, received: datetime, out: list[Observation]) -> None:
    """A payload that is just a number, e.g. ``21.5``; timestamped on receipt."""
    value = parse_number(payload)
    tag = match.tag
    if tag is None:
        raise DecodeError("invalid_tag", "no tag template")
    out.append(Observation(match.source, tag, value, Quality.good, received, received))


def map_json(
    match: Match,
    payload: Payload,
    received: datetime,
    latest: datetime,
    out: Output,
) -> None:
    """A JSON object, a JSON array of objects, or an object with a list of samples.

    A bad sample in a list is rejected alone; the others are still stored.
    """
    route = match.route
    document = load_json(payload)
    if isinstance(document, list):
        samples: list[Any] = document
    elif route.samples_path is not None:
        samples = lookup(document, route.samples_path)
        if not isinstance(samples, list):
            raise DecodeError("wrong_type", f"{route.subscription.samples_field} is not a list")
    else:
        samples = [document]
    many = len(samples) > 1
    for index, sample in enumerate(samples):
        try:
            out.observations.append(_sample(match, sample, received, latest))
        except DecodeError as exc:
            if many:
                exc = DecodeError(exc.reason, f"sample {index}: {exc.detail}")
            out.reject(match.source, exc, match.topic, payload)


def _sample(match: Match, sample: Any, received: datetime, latest: datetime) -> Observation:
    route = match.route
    sub = route.subscription
    if not isinstance(sample, dict):
        raise DecodeError("wrong_type", f"sample is {type(sample).__name__}, expected an object")
    if route.tag_path is not None:
        name = lookup(sample, route.tag_path)
        if not isinstance(name, str) or not name:
            raise DecodeError("invalid_tag", f"{sub.tag_field} is not a non-empty string")
        tag = route.tag.render(match.levels, field=name) if route.tag is not None else name
    elif match.tag is not None:
        tag = match.tag
    else:
        raise match.error or DecodeError("invalid_tag", "no tag")
    if len(tag) > MAX_TAG_LENGTH:
        raise DecodeError("invalid_tag", f"tag of {len(tag)} characters")
    value = to_value(lookup(sample, route.value_path), sub.value_type, sub.value_field)
    source_ts = received
    if route.timestamp_path is not None:
        raw_ts = lookup(sample, route.timestamp_path, None)
        if raw_ts is not None:
            source_ts = parse_timestamp(raw_ts, sub.timestamp_format, str(sub.timestamp_field))
            if source_ts > latest:
                raise DecodeError(
                    "future_timestamp",
                    f"{source_ts.isoformat()} is later than {latest.isoformat()}",
                )
    quality, status = Quality.good, None
    if route.quality_path is not None:
        raw_quality = lookup(sample, route.quality_path, None)
        if raw_quality is not None:
            quality, status = parse_quality(raw_quality, str(sub.quality_field))
    return Observation(match.source, tag, value, quality, source_ts, received, status_code=status)


def map_message(
    match: Match,
    payload: Payload,
    received: datetime,
    latest: datetime,
    max_payload: int,
    out: Output,
) -> None:
    """Map one JSON or number message into ``out``; failures become rejects, never raise."""
    try:
        if match.error is not None:
            raise match.error
        if len(payload) > max_payload:
            raise DecodeError("oversize", f"{len(payload)} bytes > {max_payload}")
        if match.route.codec == "number":
            map_number(match, payload, received, out.observations)
        else:
            map_json(match, payload, received, latest, out)
    except DecodeError as exc:
        out.reject(match.source, exc, match.topic, payload)


DEFAULT_TAG = Template("{group}/{edge_node}/{device}/{metric}")
DEFAULT_NODE_TAG = Template("{group}/{edge_node}/{metric}")


class Mapper:
    """Routes each message to its codec: JSON and numbers are pure functions, Sparkplug
    goes through the host state (births, aliases, seq)."""

    def __init__(self, config: MqttConfig, name: str) -> None:
        self.name = name
        self.router = Router(config.subscriptions, name)
        self.host = sparkplug.SparkplugHost(config.rebirth_interval)
        self.namers = {route.index: self._namer(route) for route in self.router.routes}
        self.max_payload = config.max_payload_bytes

    def map(
        self, topic: str | None, payload: Payload, received: datetime, latest: datetime, out: Output
    ) -> None:
        """Map one message into ``out``; whatever is wrong with it becomes a reject."""
        if topic is None:
            out.reject(self.name, DecodeError("invalid_topic", "not UTF-8"), "?", payload)
            return
        match = self.router.match(topic)
        if match is None:
            out.reject(self.name, DecodeError("unmapped_topic"), topic, payload)
            return
        try:
            if match.route.codec == "sparkplug":
                self._sparkplug(match, payload, received, latest, out)
            else:
                map_message(match, payload, received, latest, self.max_payload, out)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream
            out.reject(match.source, DecodeError("internal_error", repr(exc)[:200]), topic, payload)

    def _sparkplug(
        self, match: Match, payload: Payload, received: datetime, latest: datetime, out: Output
    ) -> None:
        topic = sparkplug.parse_topic(match.topic)
        if topic is None:
            if match.levels[1:2] != ("STATE",):
                out.reject(match.source, DecodeError("invalid_topic"), match.topic, payload)
            return
        rejects: list[tuple[str, str]] = []
        result = sparkplug.HostOutput(out.observations, rejects, out.gaps, out.rebirths)
        try:
            if len(payload) > self.max_payload:
                raise DecodeError("oversize", f"{len(payload)} bytes > {self.max_payload}")
            namer = self.namers[match.route.index]
            self.host.handle(match.levels, topic, payload, received, latest, namer, result)
        except DecodeError as exc:
            rejects.append((exc.reason, exc.detail))
        for reason, detail in rejects:
            out.reject(match.source, DecodeError(reason, detail), match.topic, payload)

    def _namer(self, route: Route) -> sparkplug.Namer:
        tag = route.tag or DEFAULT_TAG
        node_tag = route.node_tag or DEFAULT_NODE_TAG
        source, default_source = route.source, self.name

        def name(levels: Sequence[str], topic: sparkplug.Topic, metric: str) -> tuple[str, str]:
            named = {"group": topic.group, "edge_node": topic.edge_node}
            src = source.render(levels, **named) if source is not None else default_source
            if topic.device is None:
                return src, node_tag.render(levels, metric=metric, **named)
            return src, tag.render(levels, device=topic.device, metric=metric, **named)

        return name
