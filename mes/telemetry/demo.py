"""The live plant of ``mes demo``: the simulator, an embedded MQTT broker and the ingest, in the
server's own process.

Without a broker URL the demo embeds amqtt (MQTT 3.1.1 only, which is why the demo's MQTT
connector speaks 3.1.1) so it runs on a machine with nothing installed. The simulator's OPC UA
server and the broker take the configured ports when they are free and free ones otherwise; the
connectors of ``config/telemetry.yaml`` are pointed at whatever was bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from connectors.host import ConnectorSpec
from connectors.mqtt.config import MqttConfig
from connectors.opcua.config import OpcUaConfig
from mes.context import AppContext
from mes.simulator.runner import Simulator, SimulatorOptions
from mes.telemetry.config import TelemetryConfig, load_config
from mes.telemetry.runtime import TelemetryRuntime

log = logging.getLogger(__name__)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def broker_address(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (or ``host:port``) -> (host, port)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"broker URL {url!r}: expected mqtt://host:port")
    return parts.hostname, parts.port or 1883


@dataclass
class DemoPlant:
    """Where the demo's line data comes from, once started."""

    broker: tuple[str, int]
    opcua_endpoint: str | None
    embedded_broker: bool


def pointed_at(config: TelemetryConfig, broker: tuple[str, int], opcua: str) -> TelemetryConfig:
    """The telemetry configuration with its connectors aimed at the demo's broker and server."""
    specs: list[ConnectorSpec] = []
    for spec in config.connectors:
        options: Any = spec.config
        if isinstance(options, MqttConfig):
            options = options.model_copy(update={"host": broker[0], "port": broker[1]})
        elif isinstance(options, OpcUaConfig):
            options = options.model_copy(update={"endpoint": opcua})
        specs.append(ConnectorSpec(spec.name, spec.kind, options))
    return TelemetryConfig(tags=config.tags, connectors=specs)


async def _embedded_broker(host: str, port: int) -> Any:
    from amqtt.broker import Broker  # type: ignore[import-untyped]

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    return broker


@contextlib.asynccontextmanager
async def live_plant(
    ctx: AppContext,
    *,
    broker_url: str | None = None,
    broker_port: int = 1883,
    opcua_port: int = 4840,
) -> AsyncIterator[DemoPlant]:
    """Run broker, simulator and ingest until the block exits."""
    host = "127.0.0.1"
    embedded = None
    if broker_url:
        broker = broker_address(broker_url)
    else:
        port = broker_port if broker_port and port_free(host, broker_port) else free_port(host)
        embedded = await _embedded_broker(host, port)
        broker = (host, port)
    simulator = Simulator(
        SimulatorOptions(
            opcua_port=opcua_port if opcua_port and port_free(host, opcua_port) else 0,
            mqtt_host=broker[0],
            mqtt_port=broker[1],
            mqtt_protocol="3.1.1",
        )
    )
    runtime: TelemetryRuntime | None = None
    try:
        await simulator.start()
        endpoint = simulator.opcua_endpoint or ""
        config = pointed_at(load_config(ctx.settings.telemetry_file), broker, endpoint)
        runtime = TelemetryRuntime.build(ctx, config)
        await runtime.start(ctx)
        async with _running(simulator):
            yield DemoPlant(broker, simulator.opcua_endpoint, embedded is not None)
    finally:
        if runtime is not None:
            await runtime.stop()
        await simulator.stop()
        if embedded is not None:
            await embedded.shutdown()


@contextlib.asynccontextmanager
async def _running(simulator: Simulator) -> AsyncIterator[None]:
    task = asyncio.create_task(simulator.run(), name="simulator")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
