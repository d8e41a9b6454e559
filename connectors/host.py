"""The connector host: builds the configured connectors and keeps them running.

Connector kinds are found through the ``mes.connectors`` entry points. Each connector runs in
its own task under a supervisor: a transient failure (``ConnectorNotReady``, or an unexpected
exception) is retried with capped exponential backoff, logged once when the connector goes down
and once when it is back; a configuration or authentication error stops only that connector
and shows in its health. Nothing here knows what happens to the observations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from connectors.base import (
    ClockLike,
    Connector,
    ConnectorAuthError,
    ConnectorConfigError,
    ConnectorContext,
    ConnectorNotReady,
    Emit,
    Observation,
    Reject,
    ReportGap,
)

ENTRY_POINT_GROUP = "mes.connectors"


def connector_kinds() -> dict[str, type[Connector]]:
    """Every installed connector kind, by name."""
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def yaml_path(loc: Sequence[str | int]) -> str:
    """A validation error's location as a YAML path: ``nodes[1].node_id``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


@dataclass(frozen=True)
class ConnectorSpec:
    """One configured connector: a unique name, its kind and its validated options."""

    name: str
    kind: str
    config: BaseModel


def build_specs(
    entries: Sequence[Mapping[str, Any]],
    kinds: Mapping[str, type[Connector]] | None = None,
    *,
    path: str = "connectors",
) -> list[ConnectorSpec]:
    """Validate the ``connectors`` section of a configuration file.

    Each entry is ``{name, kind, options}``; a problem raises ``ConnectorConfigError`` naming
    its YAML path (``connectors[2].options.endpoint``).
    """
    kinds = connector_kinds() if kinds is None else kinds
    specs: list[ConnectorSpec] = []
    seen: set[str] = set()
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise ConnectorConfigError(f"{path}: a list of connectors, not {type(entries).__name__}")
    for index, entry in enumerate(entries):
        where = f"{path}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConnectorConfigError(
                f"{where}: a mapping with name, kind and options, not {entry!r}"
            )
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not name:
            raise ConnectorConfigError(f"{where}.name: a connector needs a name")
        if name in seen:
            raise ConnectorConfigError(f"{where}.name: {name!r} is used twice")
        seen.add(name)
        if not isinstance(kind, str) or kind not in kinds:
            raise ConnectorConfigError(
                f"{where}.kind: {kind!r} is not one of {sorted(kinds)} (installed connectors)"
            )
        unknown = set(entry) - {"name", "kind", "options"}
        if unknown:
            raise ConnectorConfigError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            config = kinds[kind].Config.model_validate(entry.get("options") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = yaml_path(first["loc"])
            raise ConnectorConfigError(
                f"{where}.options.{loc}: {first['msg']}"
                if loc
                else f"{where}.options: {first['msg']}"
            ) from exc
        specs.append(ConnectorSpec(name=name, kind=kind, config=config))
    return specs


@dataclass
class ConnectorHealth:
    """What the host knows of one connector, for the health endpoint and the logs."""

    name: str
    kind: str
    status: str = "starting"  # starting | running | down | failed | stopped
    detail: str | None = None
    since: datetime | None = None
    restarts: int = 0


@dataclass
class ConnectorHost:
    """Runs ``specs`` and restarts each connector after transient failures."""

    specs: Sequence[ConnectorSpec]
    emit: Emit
    report_gap: ReportGap
    reject: Reject
    clock: ClockLike
    kinds: Mapping[str, type[Connector]] = field(default_factory=connector_kinds)
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    settle_s: float = 5.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("connectors.host"))
    health: dict[str, ConnectorHealth] = field(default_factory=dict)
    instances: dict[str, Connector] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start one supervised task per connector."""
        for spec in self.specs:
            self.health[spec.name] = ConnectorHealth(spec.name, spec.kind, since=self.clock.now())
            connector = self.kinds[spec.kind]()
            self.instances[spec.name] = connector
            self._tasks.append(
                asyncio.create_task(self._supervise(spec, connector), name=f"connector-{spec.name}")
            )

    async def stop(self) -> None:
        """Cancel every connector and wait for it to finish."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for name, health in self.health.items():
            if health.status != "failed":  # a failed connector keeps saying why
                self._set(name, "stopped")

    def _set(self, name: str, status: str, detail: str | None = None) -> None:
        health = self.health[name]
        if health.status != status or health.detail != detail:
            health.status, health.detail, health.since = status, detail, self.clock.now()

    async def _supervise(self, spec: ConnectorSpec, connector: Connector) -> None:
        log = self.logger.getChild(spec.name)
        health = self.health[spec.name]

        def up() -> None:
            # A connector is up once it delivers values, or has run ``settle_s`` without
            # failing (a source that is quiet but connected).
            if health.status in ("starting", "down"):
                if health.status == "down":
                    log.info("connector %s (%s) running again", spec.name, spec.kind)
                self._set(spec.name, "running")

        def emit(observations: Sequence[Observation]) -> Awaitable[None]:
            up()
            return self.emit(observations)

        ctx = ConnectorContext(
            name=spec.name,
            config=spec.config,
            emit=emit,
            report_gap=self.report_gap,
            reject=self.reject,
            logger=log,
            clock=self.clock,
        )
        backoff = self.initial_backoff_s
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            settled = loop.call_later(self.settle_s, up)
            try:
                await connector.run(ctx)
            except asyncio.CancelledError:
                raise
            except (ConnectorConfigError, ConnectorAuthError) as exc:
                log.error("connector %s stopped: %s", spec.name, exc)
                self._set(spec.name, "failed", f"{type(exc).__name__}: {exc}")
                return
            except Exception as exc:
                if health.status != "down":
                    level = logging.WARNING if isinstance(exc, ConnectorNotReady) else logging.ERROR
                    log.log(
                        level,
                        "connector %s down: %s; retrying",
                        spec.name,
                        exc,
                        exc_info=not isinstance(exc, ConnectorNotReady),
                    )
                    self._set(spec.name, "down", f"{type(exc).__name__}: {exc}")
                else:
                    health.detail = f"{type(exc).__name__}: {exc}"
                health.restarts += 1
                if loop.time() - started > self.max_backoff_s:
                    backoff = self.initial_backoff_s  # it had been running well
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            finally:
                settled.cancel()
            log.info("connector %s finished", spec.name)
            self._set(spec.name, "stopped")
            return
