"""The OPC UA connector against a real in-process asyncua server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua

from connectors.base import ConnectorNotReady, Quality, WritableConnector
from connectors.opcua.connector import (
    OpcUaConnector,
    SetpointNotConfirmed,
    SetpointRejected,
    UnknownSetpoint,
)
from tests.connectors.opcua.conftest import (
    LIMIT,
    Plant,
    Sink,
    free_port,
    make_ctx,
    running,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")


def config(plant: Plant, *names: str, **extra: Any) -> dict[str, Any]:
    nodes = [
        {"node_id": plant.node_id(name), "tag": f"R-101.{name}", "sampling_interval_ms": 100}
        for name in names
    ]
    return {"endpoint": plant.url, "publishing_interval_ms": 100, "nodes": nodes, **extra}


async def test_values_arrive_with_source_timestamp_status_and_quality(plant: Plant) -> None:
    sink = Sink()
    ctx = make_ctx(config(plant, "MeltTemp", "Running", "Batch", "Counter"), sink)
    async with running(OpcUaConnector(), ctx) as task:
        await wait_until(lambda: len({o.tag for o in sink.observations}) == 4, task)
        initial = {o.tag: o for o in sink.observations}
        assert initial["R-101.Running"].value is True
        assert initial["R-101.Batch"].value == "B-0001"
        assert initial["R-101.Counter"].value == 0
        assert all(o.quality is Quality.good and o.status_code == 0 for o in initial.values())

        stamped = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=90)
        await plant.write("MeltTemp", 181.5, SourceTimestamp=stamped)
        await wait_until(lambda: 181.5 in sink.values("R-101.MeltTemp"), task)
        reading = sink.last("R-101.MeltTemp")
        assert reading is not None
        assert reading.source_ts == stamped
        assert reading.received_ts > stamped
        assert reading.source == "R-101"

        failure = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
        await plant.write("MeltTemp", 999.0, StatusCode=failure, SourceTimestamp=datetime.now(UTC))
        await wait_until(lambda: sink.observations[-1].quality is Quality.bad, task)
        bad = sink.observations[-1]
        assert bad.tag == "R-101.MeltTemp"
        assert bad.value is None
        assert bad.status_code == ua.StatusCodes.BadSensorFailure

        uncertain = ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)
        await plant.write(
            "MeltTemp", 182.0, StatusCode=uncertain, SourceTimestamp=datetime.now(UTC)
        )
        await wait_until(lambda: sink.observations[-1].quality is Quality.uncertain, task)
        assert sink.observations[-1].value == 182.0
        await plant.write("MeltTemp", 180.0, SourceTimestamp=datetime.now(UTC))
    assert sink.gaps == []
    assert sink.rejected == []


async def test_values_between_publishes_are_queued_and_batched(plant: Plant) -> None:
    sink = Sink()
    ctx = make_ctx(config(plant, "Counter"), sink)
    async with running(OpcUaConnector(), ctx) as task:
        await wait_until(lambda: sink.values("R-101.Counter") == [0], task)
        calls = sink.emit_calls
        for value in range(1, 51):
            await plant.write("Counter", value)
        await wait_until(lambda: sink.values("R-101.Counter")[-1:] == [50], task)
        await plant.write("Counter", 0)
    assert sink.values("R-101.Counter")[:51] == list(range(51))
    assert sink.emit_calls - calls < 50


async def test_deadband_filters_small_changes(plant: Plant) -> None:
    sink = Sink()
    cfg = config(plant, "Pressure")
    cfg["nodes"][0]["deadband"] = {"type": "absolute", "value": 0.5}
    async with running(OpcUaConnector(), make_ctx(cfg, sink)) as task:
        await wait_until(lambda: sink.values("R-101.Pressure") == [1.0], task)
        for value in (1.1, 1.2, 1.3, 5.0):
            await plant.write("Pressure", value)
        await wait_until(lambda: 5.0 in sink.values("R-101.Pressure"), task)
        await plant.write("Pressure", 1.0)
        await wait_until(lambda: sink.values("R-101.Pressure")[-1] == 1.0, task)
    assert sink.values("R-101.Pressure") == [1.0, 5.0, 1.0]


async def test_revised_queue_size_is_logged(plant: Plant, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    cap = plant.server.iserver.max_monitored_item_queue_size
    plant.server.iserver.max_monitored_item_queue_size = 5
    caplog.set_level(logging.WARNING, logger="test.opcua")
    try:
        async with running(OpcUaConnector(), make_ctx(config(plant, "MeltTemp"), sink)) as task:
            await wait_until(lambda: bool(sink.observations), task)
    finally:
        plant.server.iserver.max_monitored_item_queue_size = cap
    revised = [r.getMessage() for r in caplog.records if "revised the queue size" in r.getMessage()]
    assert revised == [
        "opcua R-101: server revised the queue size of 1 monitored item(s) "
        "(R-101.MeltTemp: 600->5); values sampled faster than they are published may be lost"
    ]


async def test_unknown_node_is_reported_as_bad_value(plant: Plant) -> None:
    sink = Sink()
    cfg = config(plant, "MeltTemp")
    cfg["nodes"].append({"node_id": "ns=2;s=R-101.NoSuchNode", "tag": "R-101.Ghost"})
    async with running(OpcUaConnector(), make_ctx(cfg, sink)) as task:
        await wait_until(
            lambda: {"R-101.Ghost", "R-101.MeltTemp"} <= {o.tag for o in sink.observations}, task
        )
    ghost = sink.last("R-101.Ghost")
    assert ghost is not None
    assert ghost.quality is Quality.bad
    assert ghost.status_code == ua.StatusCodes.BadNodeIdUnknown
    assert "subscribe_failed" in ghost.flags


async def test_setpoints_are_written_with_the_node_type_and_confirmed(plant: Plant) -> None:
    sink = Sink()
    setpoints = [
        {"tag": "R-101.SetTemp.SP", "node_id": plant.node_id("SetTemp")},
        {"tag": "R-101.Speed.SP", "node_id": plant.node_id("Speed")},
        {"tag": "R-101.Limited.SP", "node_id": plant.node_id("Limited")},
        {"tag": "R-101.ReadOnly.SP", "node_id": plant.node_id("ReadOnly")},
        {"tag": "R-101.Missing.SP", "node_id": "ns=2;s=R-101.Missing"},
    ]
    connector = OpcUaConnector()
    assert isinstance(connector, WritableConnector)
    with pytest.raises(ConnectorNotReady):
        await connector.write("R-101.SetTemp.SP", 185.5)
    ctx = make_ctx(config(plant, "SetTemp", setpoints=setpoints), sink)
    async with running(connector, ctx) as task:
        await wait_until(lambda: bool(sink.observations), task)

        assert await connector.write("R-101.SetTemp.SP", 185.5) is None
        assert await plant.nodes["SetTemp"].read_value() == 185.5
        await wait_until(lambda: 185.5 in sink.values("R-101.SetTemp"), task)

        assert await connector.write_setpoint("R-101.Speed.SP", 1200) == 1200
        written = await plant.nodes["Speed"].read_data_value()
        assert written.Value is not None
        assert written.Value.VariantType is ua.VariantType.Int16

        with pytest.raises(SetpointRejected, match="Int16"):
            await connector.write("R-101.Speed.SP", 40000)
        with pytest.raises(SetpointNotConfirmed, match=r"read back 100\.0"):
            await connector.write("R-101.Limited.SP", LIMIT + 50)
        with pytest.raises(SetpointRejected, match=r"BadUserAccessDenied|BadNotWritable"):
            await connector.write("R-101.ReadOnly.SP", 2.0)
        with pytest.raises(SetpointRejected, match="BadNodeIdUnknown"):
            await connector.write("R-101.Missing.SP", 2.0)
        with pytest.raises(UnknownSetpoint, match=r"R-101\.Nope"):
            await connector.write("R-101.Nope", 1.0)
        await connector.write("R-101.SetTemp.SP", 170.0)
    assert await plant.nodes["Speed"].read_value() == 1200


async def test_unreachable_endpoint_is_not_ready() -> None:
    ctx = make_ctx({"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/", "nodes": []}, Sink())
    with pytest.raises(ConnectorNotReady, match="unreachable"):
        await OpcUaConnector().run(ctx)
