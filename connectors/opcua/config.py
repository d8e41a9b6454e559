"""The YAML section of one OPC UA connector, validated before anything touches the network.

Every default here is chosen so that a value the server sampled survives a short outage:
monitored-item queues hold 60 s of samples, the subscription lifetime outlasts the session
timeout, and keep-alives are frequent enough to notice a dead subscription within seconds.
Mistakes are reported as ``ConnectorConfigError`` naming the YAML path of the bad field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlparse

from asyncua import ua
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.base import ConnectorConfigError

QUEUE_WINDOW_MS = 60_000.0
"""How much sampling history each monitored-item queue should bridge."""

WRITABLE_VARIANT_TYPES = frozenset(
    {
        "Boolean",
        "SByte",
        "Byte",
        "Int16",
        "UInt16",
        "Int32",
        "UInt32",
        "Int64",
        "UInt64",
        "Float",
        "Double",
        "String",
    }
)


def default_queue_size(sampling_interval_ms: float) -> int:
    """Queue size that holds ``QUEUE_WINDOW_MS`` of samples (at least 1)."""
    return max(1, math.ceil(QUEUE_WINDOW_MS / sampling_interval_ms))


def check_endpoint(value: str) -> str:
    """An ``opc.tcp://host:port`` URL without credentials; ``ValueError`` otherwise."""
    url = urlparse(value)
    if url.scheme != "opc.tcp" or not url.hostname:
        raise ValueError("must be an opc.tcp://host:port URL")
    try:
        port = url.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if port is None:
        raise ValueError("must name the port (opc.tcp://host:4840)")
    if url.username or url.password:
        raise ValueError("must not carry credentials; use username/password")
    return value


def _check_node_id(value: str) -> str:
    try:
        ua.NodeId.from_string(value)
    except Exception as exc:  # asyncua raises several types for malformed strings
        raise ValueError(
            f"invalid NodeId {value!r} (expected e.g. 'ns=2;s=R-101.MeltTemp')"
        ) from exc
    return value


NodeIdStr = Annotated[str, AfterValidator(_check_node_id)]
"""A NodeId in its string form, checked by asyncua's parser."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deadband(_Strict):
    """Server-side filter: only changes larger than ``value`` are reported.

    ``percent`` is a percentage of the variable's EURange and needs the server to know it.
    """

    type: Literal["absolute", "percent"]
    value: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _percent_range(self) -> Self:
        if self.type == "percent" and self.value > 100:
            raise ValueError("a percent deadband must be at most 100")
        return self


class NodeConfig(_Strict):
    """One monitored variable and the tag its values are stored under."""

    node_id: NodeIdStr
    tag: str = Field(min_length=1, max_length=200)
    sampling_interval_ms: float = Field(default=1000.0, gt=0, allow_inf_nan=False)
    queue_size: int | None = Field(default=None, ge=1)
    deadband: Deadband | None = None

    @field_validator("deadband", mode="before")
    @classmethod
    def _none_string(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() == "none":
            return None
        return value

    @property
    def effective_queue_size(self) -> int:
        """The queue size requested from the server."""
        if self.queue_size is not None:
            return self.queue_size
        return default_queue_size(self.sampling_interval_ms)


class SetpointConfig(_Strict):
    """A variable the MES may write (recipe download), addressed by tag."""

    tag: str = Field(min_length=1, max_length=200)
    node_id: NodeIdStr
    variant_type: str | None = None
    """Overrides the data type read from the server (e.g. ``Float``)."""

    @field_validator("variant_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in WRITABLE_VARIANT_TYPES:
            allowed = ", ".join(sorted(WRITABLE_VARIANT_TYPES))
            raise ValueError(f"unsupported variant_type {value!r}; use one of {allowed}")
        return value


class SecurityConfig(_Strict):
    """Message security and the certificates that prove who is who.

    ``trusted`` is a certificate file or a directory of them (PEM/DER): the server's own
    self-signed certificate or the CA that issued it. Without it, any server could answer.
    """

    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: SecretStr | None = None
    trusted: Path | None = None
    crl: Path | None = None
    application_uri: str = "urn:mes:opcua-client"
    """Must equal the URI in the client certificate's subjectAltName."""

    @model_validator(mode="after")
    def _secure_needs_files(self) -> Self:
        if self.policy != "None":
            missing = [
                name
                for name in ("certificate", "private_key", "trusted")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"policy {self.policy} needs {', '.join(missing)}")
        return self


class OpcUaConfig(_Strict):
    """Configuration of one OPC UA source."""

    endpoint: str
    publishing_interval_ms: float = Field(default=500.0, gt=0, allow_inf_nan=False)
    keepalive_count: int = Field(default=10, ge=1)
    lifetime_count: int = Field(default=10_000, ge=3)
    nodes: list[NodeConfig] = Field(default_factory=list)
    setpoints: list[SetpointConfig] = Field(default_factory=list)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    username: str | None = None
    password: SecretStr | None = None
    request_timeout_s: float = Field(default=10.0, gt=0)
    session_timeout_ms: float = Field(default=3_600_000.0, gt=0)
    reconnect_max_delay_s: float = Field(default=30.0, gt=0)
    watchdog_interval_s: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=250, ge=1, le=5000)
    """Monitored items per CreateMonitoredItems call and nodes per Read call."""
    items_per_subscription: int = Field(default=1000, ge=1)
    emit_batch_size: int = Field(default=5000, ge=1)
    max_buffered: int = Field(default=500_000, ge=1)
    """Observations held in memory while the MES is slow; past it values are refused and a
    gap is reported."""

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, value: str) -> str:
        return check_endpoint(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.lifetime_count < 3 * self.keepalive_count:
            raise ValueError("lifetime_count must be at least 3 x keepalive_count")
        _unique([n.tag for n in self.nodes], "nodes")
        _unique([s.tag for s in self.setpoints], "setpoints")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.password is not None and self.security.policy == "None":
            raise ValueError("password login needs security.policy Basic256Sha256")
        return self


def _unique(tags: list[str], field: str) -> None:
    seen: set[str] = set()
    for index, tag in enumerate(tags):
        if tag in seen:
            raise ValueError(f"{field}[{index}].tag {tag!r} is used twice")
        seen.add(tag)


def config_error(exc: ValidationError, prefix: str = "") -> ConnectorConfigError:
    """Turn a pydantic error into a ``ConnectorConfigError`` naming the YAML path."""
    parts = []
    for error in exc.errors():
        path = prefix
        for loc in error["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        parts.append(f"{path or '<root>'}: {error['msg']}")
    return ConnectorConfigError("; ".join(parts))


def parse_config(data: object, prefix: str = "") -> OpcUaConfig:
    """Validate a mapping or a model (re-validated: ``model_construct`` skips checks)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(warnings=False)
    try:
        return OpcUaConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, prefix) from exc
