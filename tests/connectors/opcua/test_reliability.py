"""Losing the connection, the server, a notification message or the MES's attention:
every case either delivers the values or records a gap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua

from connectors.base import ConnectorNotReady, Observation
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.mapping import FLAG_FULL_READ
from tests.connectors.opcua.conftest import (
    Plant,
    Sink,
    make_ctx,
    running,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")


def counter_config(plant: Plant, **extra: Any) -> dict[str, Any]:
    node = {"node_id": plant.node_id("Counter"), "tag": "Counter", "sampling_interval_ms": 100}
    return {"endpoint": plant.url, "publishing_interval_ms": 100, "nodes": [node], **extra}


async def reset_counter(plant: Plant) -> None:
    await plant.write("Counter", 0)


async def test_session_kept_across_a_dropped_connection(plant: Plant) -> None:
    sink = Sink()
    connector = OpcUaConnector()
    async with running(connector, make_ctx(counter_config(plant), sink)) as task:
        await wait_until(lambda: sink.values("Counter") == [0], task)
        client = connector._client
        assert client is not None
        assert client.uaclient.protocol is not None
        assert client.uaclient.protocol.transport is not None
        client.uaclient.protocol.transport.abort()
        for value in range(1, 6):
            await plant.write("Counter", value)
        await wait_until(lambda: sink.values("Counter")[-1:] == [5], task)
    await reset_counter(plant)
    assert sink.values("Counter") == [0, 1, 2, 3, 4, 5]
    assert sink.gaps == []


async def test_subscriptions_move_to_a_new_session(plant: Plant) -> None:
    """The session is gone but the server kept its subscriptions: TransferSubscriptions."""
    sink = Sink()
    connector = OpcUaConnector()
    async with running(connector, make_ctx(counter_config(plant), sink)) as task:
        await wait_until(lambda: sink.values("Counter") == [0], task)
        client = connector._client
        assert client is not None
        old_session = client.uaclient.session.authentication_token
        client.uaclient.session.reset_authentication_token()  # forget it: a new one is made
        assert client.uaclient.protocol is not None
        assert client.uaclient.protocol.transport is not None
        client.uaclient.protocol.transport.abort()
        for value in range(1, 4):
            await plant.write("Counter", value)
        await wait_until(lambda: sink.values("Counter")[-1:] == [3], task)
        assert client.uaclient.session.authentication_token != old_session
        await plant.write("Counter", 4)
        await wait_until(lambda: sink.values("Counter")[-1:] == [4], task)
    await reset_counter(plant)
    assert sink.values("Counter") == [0, 1, 2, 3, 4]
    assert sink.gaps == []


async def test_lost_notification_message_is_a_gap(plant: Plant) -> None:
    """A publish response that never arrives (and cannot be republished) is a gap."""
    sink = Sink()
    connector = OpcUaConnector()
    deliver = connector._on_publish
    dropped: list[int] = []

    async def lossy(result: ua.PublishResult) -> None:
        message = result.NotificationMessage
        if message.NotificationData and message.SequenceNumber >= 2 and not dropped:
            dropped.append(message.SequenceNumber)
            return
        await deliver(result)

    connector._on_publish = lossy  # type: ignore[method-assign]
    async with running(connector, make_ctx(counter_config(plant), sink)) as task:
        await wait_until(lambda: sink.values("Counter") == [0], task)
        await plant.write("Counter", 1)
        await wait_until(lambda: bool(dropped), task)
        await plant.write("Counter", 2)
        await wait_until(lambda: 2 in sink.values("Counter"), task)
        await asyncio.sleep(0.5)  # a few keep-alives: the same loss is reported once
        await plant.write("Counter", 3)
        await wait_until(lambda: 3 in sink.values("Counter"), task)
    await reset_counter(plant)
    [gap] = sink.gaps
    assert "1 notification message(s)" in gap.reason
    assert "not available for republishing" in gap.reason
    assert gap.start <= gap.end
    assert sink.values("Counter") == [0, 2, 3]


async def test_storage_failure_stops_the_run_and_the_next_run_reports_the_gap(
    plant: Plant,
) -> None:
    sink = Sink()
    failing = True

    async def emit(batch: Any) -> None:
        if failing:
            raise OSError("spool disk full")
        await sink.emit(batch)

    connector = OpcUaConnector()
    ctx = make_ctx(counter_config(plant), sink)
    ctx.emit = emit
    with pytest.raises(ConnectorNotReady, match="spool disk full"):
        await asyncio.wait_for(connector.run(ctx), 20)
    assert sink.observations == []

    failing = False
    async with running(connector, ctx) as task:
        await wait_until(lambda: bool(sink.gaps), task)
        await wait_until(lambda: any(FLAG_FULL_READ in o.flags for o in sink.observations), task)
    [gap] = sink.gaps
    assert gap.reason == "connector restarted; subscriptions recreated"
    assert gap.start <= gap.end


async def test_full_buffer_refuses_values_and_reports_them(plant: Plant) -> None:
    sink = Sink()
    gate = asyncio.Event()

    async def slow_emit(batch: Any) -> None:
        await gate.wait()
        await sink.emit(batch)

    ctx = make_ctx(counter_config(plant, max_buffered=3), sink)
    ctx.emit = slow_emit
    async with running(OpcUaConnector(), ctx) as task:
        await asyncio.sleep(0.3)
        for value in range(1, 21):
            await plant.write("Counter", value)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        gate.set()
        await wait_until(lambda: bool(sink.gaps), task)
    await reset_counter(plant)
    [gap] = sink.gaps
    assert gap.reason.endswith("values refused: connector buffer full")
    stored = len(sink.observations)
    refused = int(gap.reason.split()[0])
    assert stored + refused == 21


async def test_server_restart_reports_a_gap_then_resumes(plant: Plant) -> None:
    sink = Sink()
    cfg = counter_config(plant, reconnect_max_delay_s=1.0)
    async with running(OpcUaConnector(), make_ctx(cfg, sink)) as task:
        await wait_until(lambda: sink.values("Counter") == [0], task)
        await plant.write("Counter", 7)
        await wait_until(lambda: sink.values("Counter")[-1:] == [7], task)
        before_stop = datetime.now(UTC)
        await plant.restart()
        restarted = datetime.now(UTC)
        await plant.write("Counter", 8)
        await wait_until(lambda: bool(sink.gaps), task)
        await wait_until(lambda: any(FLAG_FULL_READ in o.flags for o in sink.observations), task)
        await plant.write("Counter", 9)
        await wait_until(lambda: sink.values("Counter")[-1:] == [9], task)
    await reset_counter(plant)
    [gap] = sink.gaps
    assert gap.source == "R-101"
    assert gap.tag is None
    assert gap.start <= before_stop
    assert gap.end >= restarted
    assert gap.reason == "OPC UA session lost; subscriptions recreated"
    full_read: list[Observation] = [o for o in sink.observations if FLAG_FULL_READ in o.flags]
    assert [o.value for o in full_read] == [8]
    assert full_read[0].received_ts >= gap.end
    assert sink.values("Counter")[:2] == [0, 7]
