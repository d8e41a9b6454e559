"""Fixtures for the MQTT connector tests: a private broker per test, an in-memory sink that
stands in for the MES, and helpers to run a connector and publish from another client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from connectors.base import ConnectorContext, Gap, Observation, Rejected
from connectors.mqtt import MqttConfig, MqttConnector
from connectors.mqtt.transport import release_wakeup_sockets
from tests.support.mosquitto import PrivateMosquitto

WAIT = 20.0
"""Generous bound for anything asynchronous; tests never assert on timing."""


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class Sink:
    """The MES stand-in: ``emit`` appends (after an optional delay), or fails, or hangs."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.batches: list[list[Observation]] = []
        self.gaps: list[Gap] = []
        self.rejects: list[Rejected] = []
        self.delay: Callable[[int], float] | None = None
        self.fail: BaseException | None = None
        self.hang = False
        self._changed = asyncio.Event()

    async def emit(self, observations: Sequence[Observation]) -> None:
        batch = list(observations)
        index = len(self.batches)
        self.batches.append(batch)
        if self.delay is not None:
            await asyncio.sleep(self.delay(index))
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        self.observations.extend(batch)
        self._changed.set()

    async def report_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self._changed.set()

    def reject(self, rejected: Rejected) -> None:
        self.rejects.append(rejected)
        self._changed.set()

    def values(self, tag: str | None = None) -> list[Any]:
        return [o.value for o in self.observations if tag is None or o.tag == tag]

    async def wait_for(self, predicate: Callable[[], bool], within: float = WAIT) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)

        await asyncio.wait_for(loop(), within)


def context(name: str, config: MqttConfig, sink: Sink) -> ConnectorContext:
    return ConnectorContext(
        name=name,
        config=config,
        emit=sink.emit,
        report_gap=sink.report_gap,
        reject=sink.reject,
        logger=logging.getLogger(f"test.mqtt.{name}"),
        clock=Clock(),
    )


def config(broker: PrivateMosquitto, client_id: str, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": client_id,
        "subscriptions": [{"filter": "plant/+/+/temperature", "tag": "CORE/{1}/{2}/temperature"}],
    }
    values.update(overrides)
    return MqttConfig.model_validate(values)


class Running:
    """A connector running as a task; ``stop()`` cancels it like the host does."""

    def __init__(self, connector: MqttConnector, task: asyncio.Task[None]) -> None:
        self.connector = connector
        self.task = task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start(ctx: ConnectorContext, connector: MqttConnector | None = None) -> Running:
    """Run a connector until its subscriptions are confirmed."""
    connector = connector or MqttConnector()
    task = asyncio.create_task(connector.run(ctx))
    ready = asyncio.create_task(connector.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
        raise AssertionError("connector returned before it was ready")
    if ready not in done:
        ready.cancel()
        task.cancel()
        raise AssertionError("connector not ready in time")
    return Running(connector, task)


@contextlib.asynccontextmanager
async def running(
    ctx: ConnectorContext, connector: MqttConnector | None = None
) -> AsyncIterator[Running]:
    run = await start(ctx, connector)
    try:
        yield run
    finally:
        await run.stop()


class Publisher:
    """A plain paho client in its own thread, publishing like a device would."""

    def __init__(
        self,
        broker: PrivateMosquitto,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        *,
        tls_ca: Path | None = None,
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.max_inflight_messages_set(100)
        host = broker.host
        if tls_ca is not None:  # the test broker's certificate names localhost only
            self.client.tls_set(ca_certs=str(tls_ca))
            host = "localhost"
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(host, broker.port)
        self.client.loop_start()
        if not connected.wait(WAIT):
            raise AssertionError("publisher did not connect")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def publish_all(self, messages: Sequence[tuple[str, bytes | str]], qos: int = 1) -> None:
        """Publish and wait until the broker has acknowledged every message."""
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()

    async def send(self, messages: Sequence[tuple[str, bytes | str]], qos: int = 1) -> None:
        await asyncio.to_thread(self.publish_all, messages, qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release_wakeup_sockets(self.client)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    server = PrivateMosquitto(tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def publisher(broker: PrivateMosquitto) -> Iterator[Publisher]:
    client = Publisher(broker)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sink() -> Sink:
    return Sink()
