"""The YAML section of one MQTT connector, validated before anything connects.

Every default here is the safe one (persistent session, QoS 1, bounded buffers, verified
TLS) because the library defaults lose data silently; errors name the offending field so a
plant engineer can fix the YAML without reading code.
"""

from __future__ import annotations

import socket
import ssl
import string
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

SPARKPLUG_NAMESPACE = "spBv1.0"

TOPIC_NAMES = frozenset({"topic", "last"})
"""Template placeholders every codec offers: the whole topic and its last level."""
JSON_NAMES = TOPIC_NAMES | {"field"}
"""``{field}`` is the value of ``tag_field`` in the sample (JSON only)."""
SPARKPLUG_NAMES = TOPIC_NAMES | {"group", "edge_node", "device", "metric"}

_JSON_OPTIONS = (
    "value_field",
    "value_type",
    "timestamp_field",
    "timestamp_format",
    "quality_field",
    "samples_field",
    "tag_field",
)


def template_fields(template: str) -> list[str]:
    """The placeholder names of a ``str.format`` style template, validated.

    Conversions (``!r``) and format specs are refused: a tag is an identifier, not a report.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from exc
    names = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "":
            raise ValueError(f"template {template!r}: empty placeholder {{}}; use {{0}}, {{1}}")
        if spec or conversion:
            raise ValueError(f"template {template!r}: format specs and conversions not allowed")
        names.append(name)
    return names


def check_template(template: str, allowed: frozenset[str], levels: int | None, what: str) -> None:
    """Refuse placeholders the codec cannot fill and topic levels the filter cannot have.

    ``levels`` is the number of topic levels every matching topic has (None when the
    filter ends in ``#`` and topics may be longer).
    """
    for name in template_fields(template):
        if name.isdigit():
            if levels is not None and int(name) >= levels:
                raise ValueError(
                    f"{what} {template!r} uses topic level {{{name}}} but the filter has only "
                    f"{levels} levels (0 to {levels - 1})"
                )
        elif name not in allowed:
            raise ValueError(
                f"{what} {template!r} uses unknown placeholder {{{name}}}; allowed: topic level "
                f"numbers {{0}}, {{1}}, ... and {', '.join('{' + n + '}' for n in sorted(allowed))}"
            )


def check_filter(topic_filter: str) -> None:
    """An MQTT topic filter per MQTT 5 section 4.7 (wildcards occupy whole levels)."""
    if not topic_filter:
        raise ValueError("topic filter must not be empty")
    if "\x00" in topic_filter:
        raise ValueError("topic filter must not contain NUL")
    if topic_filter.startswith("$share/"):
        raise ValueError("write the filter without '$share/<group>/' and set shared_group")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"'#' must be a whole level and the last one in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")


class _TlsContext(ssl.SSLContext):
    """Completes the handshake inside ``wrap_socket`` and closes the socket if it fails:
    paho drops a socket whose handshake failed without closing it."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        tls = super().wrap_socket(
            sock, server_side, False, suppress_ragged_eofs, server_hostname, session
        )
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls


class TlsConfig(BaseModel):
    """TLS towards the broker; the server certificate and host name are always verified
    unless ``insecure`` is set explicitly (for a lab broker with a self-signed name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = Field(None, description="CA bundle; None uses the system store")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="private key of cert_file")
    key_password: SecretStr | None = None
    insecure: bool = Field(False, description="skip host name verification (never in production)")

    @model_validator(mode="after")
    def _files(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set but tls.cert_file is not")
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name}: no such file: {path}")
        try:
            self.context()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls: cannot load the CA, certificate or key: {exc}") from exc
        return self

    def context(self) -> ssl.SSLContext:
        """Chain and host name verified (``PROTOCOL_TLS_CLIENT`` defaults); ``insecure``
        is applied by the client (paho's ``tls_insecure_set``)."""
        context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.cert_file is not None:
            password = self.key_password.get_secret_value() if self.key_password else None
            key = str(self.key_file) if self.key_file else None
            context.load_cert_chain(str(self.cert_file), key, password)
        return context


class Subscription(BaseModel):
    """One topic filter and how its payloads become observations.

    Tag and source templates use ``{0}``, ``{1}``, ... for the topic levels (0-based) of
    the received topic, ``{topic}`` and ``{last}``; JSON adds ``{field}`` (the sample's
    ``tag_field``), Sparkplug adds ``{group}``, ``{edge_node}``, ``{device}``, ``{metric}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter: str
    qos: Literal[0, 1] = Field(1, description="QoS 2 is not offered: paho keeps it in memory")
    shared_group: str | None = Field(None, description="MQTT 5 shared subscription group")
    codec: Literal["json", "number", "sparkplug"] = "json"
    tag: str | None = None
    node_tag: str | None = Field(None, description="Sparkplug: template for node metrics")
    source: str | None = Field(None, description="template; default: the connector name")
    value_field: str = Field("value", min_length=1, description="dotted path")
    value_type: Literal["number", "bool", "string", "any"] = "number"
    timestamp_field: str | None = Field("ts", min_length=1, description="missing: received time")
    timestamp_format: Literal["iso8601", "epoch_ms", "epoch_s"] = "iso8601"
    quality_field: str | None = Field(None, min_length=1)
    samples_field: str | None = Field(None, min_length=1, description="list of samples")
    tag_field: str | None = Field(None, min_length=1, description="per-sample tag name")

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        check_filter(value)
        return value

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError("shared_group must be non-empty without '/', '+' or '#'")
        return value

    @property
    def subscribe_filter(self) -> str:
        """What is sent to the broker (the ``$share`` form for a shared subscription)."""
        if self.shared_group is None:
            return self.filter
        return f"$share/{self.shared_group}/{self.filter}"

    @property
    def fixed_levels(self) -> int | None:
        """How many levels a matching topic has, or None if ``#`` allows more."""
        levels = self.filter.split("/")
        return None if levels[-1] == "#" else len(levels)

    @model_validator(mode="after")
    def _codec_options(self) -> Self:
        levels = self.fixed_levels
        if self.codec == "sparkplug":
            if self.filter.split("/")[0] != SPARKPLUG_NAMESPACE:
                raise ValueError(f"a sparkplug filter starts with '{SPARKPLUG_NAMESPACE}/'")
            misplaced = [o for o in _JSON_OPTIONS if o in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: JSON options, codec is sparkplug")
            allowed = {
                "tag": SPARKPLUG_NAMES,
                "node_tag": SPARKPLUG_NAMES - {"device"},
                "source": TOPIC_NAMES | {"group", "edge_node"},
            }
            for what, names in allowed.items():
                template = getattr(self, what)
                if template is not None:
                    check_template(template, frozenset(names), levels, what)
            return self
        if self.node_tag is not None:
            raise ValueError("node_tag applies only to codec sparkplug")
        if self.codec == "number":
            misplaced = [o for o in _JSON_OPTIONS if o in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: JSON options, codec is number")
            if self.tag is None:
                raise ValueError("codec number needs a tag template")
            check_template(self.tag, TOPIC_NAMES, levels, "tag")
        else:
            if self.tag is None and self.tag_field is None:
                raise ValueError("codec json needs a tag template or a tag_field")
            names = JSON_NAMES if self.tag_field is not None else TOPIC_NAMES
            if self.tag is not None:
                check_template(self.tag, names, levels, "tag")
        if self.source is not None:
            check_template(self.source, TOPIC_NAMES, levels, "source")
        return self


class MqttConfig(BaseModel):
    """Connection, session, flow-control and mapping settings of one MQTT connector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field("5", description="3.1.1 for brokers such as amqtt")
    client_id: str = Field(min_length=1, max_length=65535, description="fixed: the session key")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(30, ge=5, le=65535)
    session_expiry: int = Field(86400, ge=1, le=4294967295, description="seconds (MQTT 5)")
    connect_timeout: float = Field(10.0, gt=0, le=300)
    reconnect_min_delay: int = Field(1, ge=1, le=60, description="seconds, doubled per failure")
    reconnect_max_delay: int = Field(30, ge=1, le=3600, description="cap of the backoff")
    receive_maximum: int = Field(
        1000, ge=1, le=65535, description="unacknowledged messages the broker may send (MQTT 5)"
    )
    max_batch: int = Field(1000, ge=1, le=100_000, description="messages per emit call")
    max_batches_in_flight: int = Field(16, ge=1, le=64, description="emits awaited at once")
    max_buffered_bytes: int = Field(64 * 2**20, ge=2**16, description="undecoded payload bytes")
    max_payload_bytes: int = Field(262_144, ge=1)
    max_future_skew: float = Field(300.0, ge=0, description="seconds a timestamp may lead")
    stop_timeout: float = Field(2.0, ge=0, le=60, description="wait for emits on a clean stop")
    sparkplug_host_id: str | None = Field(None, description="publish STATE as this host")
    rebirth_interval: float = Field(5.0, ge=0.05, description="min seconds between requests")
    subscriptions: list[Subscription] = Field(min_length=1)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        if value in (5, "5", "5.0", "v5", "mqttv5"):
            return "5"
        if value in ("3.1.1", "311", 311, "v311", "mqttv311"):
            return "3.1.1"
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if value.strip() != value or "\x00" in value:
            raise ValueError("client_id must not have surrounding blanks or NUL")
        return value

    @field_validator("sparkplug_host_id")
    @classmethod
    def _host_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError("sparkplug_host_id must be non-empty without '/', '+' or '#'")
        return value

    @model_validator(mode="after")
    def _consistency(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay is larger than reconnect_max_delay")
        filters = [s.subscribe_filter for s in self.subscriptions]
        duplicates = sorted({f for f in filters if filters.count(f) > 1})
        if duplicates:
            raise ValueError(f"subscribed twice: {', '.join(duplicates)}")
        return self
