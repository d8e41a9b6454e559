"""The connector contract: what every field-protocol connector produces and implements.

A connector reads one source (an OPC UA server, an MQTT topic tree) and emits
``Observation`` values through its ``ConnectorContext``; the MES decides what to store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


class Quality(StrEnum):
    """OPC UA-style quality of a value (status code class)."""

    good = "good"
    uncertain = "uncertain"
    bad = "bad"


@dataclass(slots=True)
class Observation:
    """One value of one tag from one source, as the source reported it.

    ``source_ts`` is the device's time, ``received_ts`` the connector's; ``seq`` is the
    source's own sequence number when it has one (used for ordering and gap detection).
    Treat it as immutable once emitted. It is not a frozen dataclass only because one is
    built per value, and a frozen one takes three times as long to build.
    """

    source: str
    tag: str
    value: float | int | bool | str | None
    quality: Quality
    source_ts: datetime
    received_ts: datetime
    seq: int | None = None
    status_code: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.source_ts.tzinfo is None or self.received_ts.tzinfo is None:
            raise ValueError("observation timestamps must be timezone-aware")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"non-finite value for {self.source}/{self.tag}")


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of time for which a source's values may be missing.

    Reported when a connector knows it lost data or cannot prove it did not: a reconnect
    whose subscriptions had to be recreated, a sequence-number jump, a broker that lost its
    session. ``tag`` is None when the gap covers every tag of the source; ``first_seq`` /
    ``last_seq`` bound the missing sequence numbers when the source numbers its messages.
    """

    source: str
    start: datetime
    end: datetime
    reason: str
    tag: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("gap times must be timezone-aware")
        if self.end < self.start:
            raise ValueError(f"gap of {self.source} ends before it starts")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload a connector could not turn into observations, with the reason.

    Counted and logged per source by the MES; it never stops the stream.
    """

    source: str
    reason: str
    detail: str = ""
    payload: bytes = b""


Emit = Callable[[Sequence[Observation]], Awaitable[None]]
"""Hand observations to the MES. The awaitable resolves once every one of them is durably
stored (in the database or the local spool) and raises if they could not be; a connector
acknowledges its source (an MQTT PUBACK) only after it resolves, in receipt order."""

ReportGap = Callable[[Gap], Awaitable[None]]
"""Record a gap durably; resolves once stored."""

Reject = Callable[[Rejected], None]
"""Count and log a bad payload (never raises, never blocks)."""


class ClockLike(Protocol):
    def now(self) -> datetime: ...


@dataclass
class ConnectorContext:
    """What the host hands a connector: its name and config, the sinks for observations,
    gaps and rejected payloads, a logger and a clock."""

    name: str
    config: BaseModel
    emit: Emit
    report_gap: ReportGap
    reject: Reject
    logger: logging.Logger
    clock: ClockLike


@runtime_checkable
class Connector(Protocol):
    """A field-protocol connector. ``run`` returns only when cancelled or on a fatal error;
    transient failures raise ``ConnectorNotReady`` and the host retries with backoff."""

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    async def run(self, ctx: ConnectorContext) -> None: ...


@runtime_checkable
class WritableConnector(Connector, Protocol):
    """A connector that can also write a value back (setpoint download)."""

    async def write(self, tag: str, value: Any) -> None: ...


class ConnectorError(Exception):
    """Base of connector errors."""


class ConnectorNotReady(ConnectorError):
    """Transient: the source is unreachable or not ready; retry with backoff."""


class ConnectorConfigError(ConnectorError):
    """Fatal for this connector: its configuration is invalid (names the YAML path)."""


class ConnectorAuthError(ConnectorError):
    """Fatal for this connector until reconfigured: credentials or certificate refused."""
