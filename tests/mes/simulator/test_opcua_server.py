"""The simulator's OPC UA server, read and written by a plain asyncua client over TCP (real
server on a free port, no mocks), and by the MES's own OPC UA connector configured from
``config/telemetry.yaml``.

Ticks are driven by the test (``Simulator.tick``) with a fixed clock, so what the client must
see is known exactly; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from connectors.base import ConnectorContext, Gap, Observation, Quality, Rejected
from connectors.opcua.connector import OpcUaConnector
from mes.simulator.registry import opcua_options
from mes.simulator.runner import Simulator, SimulatorOptions

pytestmark = pytest.mark.asyncio(loop_scope="module")

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WAIT_S = 15.0


class FixedClock:
    """Wall-clock stand-in: each call returns the next second."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[Simulator]:
    """One server for the module (asyncua needs seconds to build its standard address
    space); each test works on its own units and injects its faults at run time."""
    simulator = Simulator(
        SimulatorOptions(opcua_port=0, mqtt=False, speed=10.0), clock=FixedClock()
    )
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def now(sim: Simulator) -> datetime:
    assert isinstance(sim.clock, FixedClock)
    return sim.clock.now


async def test_values_have_node_ids_types_and_source_timestamps(sim: Simulator) -> None:
    assert sim.opcua is not None
    assert sim.opcua.port > 0
    assert sim.opcua_endpoint == f"opc.tcp://127.0.0.1:{sim.opcua.port}/bmb/simulator"
    for _ in range(3):
        await sim.tick()
    async with Client(sim.opcua_endpoint, timeout=WAIT_S) as client:
        assert (await client.get_namespace_array())[2] == "urn:bmb:simulator"
        melt = client.get_node("ns=2;s=R-101.melt_temp")
        browsed = await client.nodes.objects.get_child(
            ["2:CORE", "2:ROP-TRAIN-1", "2:R-101", "2:melt_temp"]
        )
        assert browsed.nodeid == melt.nodeid
        dv = await melt.read_data_value()
        assert dv.StatusCode is not None
        assert dv.StatusCode.is_good()
        assert dv.Value is not None
        assert dv.Value.VariantType == ua.VariantType.Double
        assert dv.Value.Value == sim.plant.readings[("R-101", "melt_temp")].value
        assert dv.SourceTimestamp == now(sim)
        eu_range = await (await melt.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == (-20.0, 300.0)
        phase = await client.get_node("ns=2;s=R-101.phase").read_data_value()
        assert phase.Value is not None
        assert phase.Value.VariantType == ua.VariantType.String
        assert phase.Value.Value == "idle"
        cycles = await client.get_node("ns=2;s=S-1.cycle_no").read_data_value()
        assert cycles.Value is not None
        assert cycles.Value.VariantType == ua.VariantType.Int64
        pilot = await client.get_node("ns=2;s=PR-05L.melt_temp").read_value()
        assert pilot == sim.plant.readings[("PR-05L", "melt_temp")].value
        before = await client.get_node("ns=2;s=EX-201.zone1_temp").read_value()
        await sim.tick()
        after = await client.get_node("ns=2;s=EX-201.zone1_temp").read_value()
        assert after == sim.plant.readings[("EX-201", "zone1_temp")].value
        assert after != before  # measurement noise: every tick is a new value


async def test_a_dropout_is_served_as_bad_sensor_failure_until_it_ends(sim: Simulator) -> None:
    sim.inject("dropout:R-102.pressure,duration=15")  # simulated seconds from now
    await sim.tick()  # 10 s later: in the dropout
    async with Client(sim.opcua_endpoint, timeout=WAIT_S) as client:
        node = client.get_node("ns=2;s=R-102.pressure")
        dv = await node.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None
        assert dv.StatusCode.value == StatusCodes.BadSensorFailure
        assert dv.SourceTimestamp == now(sim)
        melt = await client.get_node("ns=2;s=R-102.melt_temp").read_data_value()
        assert melt.StatusCode is not None
        assert melt.StatusCode.is_good()
        await sim.tick()  # 20 s: the fault is over
        dv = await node.read_data_value()
        assert dv.StatusCode is not None
        assert dv.StatusCode.is_good()
        assert dv.Value is not None
        assert dv.Value.Value == sim.plant.readings[("R-102", "pressure")].value


async def test_setpoint_write_reads_back_and_drives_the_model(sim: Simulator) -> None:
    async with Client(sim.opcua_endpoint, timeout=WAIT_S) as client:
        sp = client.get_node("ns=2;s=R-101.temp_sp")
        assert await sp.read_value() == 160.0
        await sp.write_value(ua.DataValue(ua.Variant(172.5, ua.VariantType.Double)))
        assert await sp.read_value() == 172.5
        assert sim.plant.unit("R-101").setpoints["temp_sp"] == 172.5
        written = await sp.read_data_value()
        assert written.SourceTimestamp is not None
        await sim.tick()
        assert sim.plant.readings[("R-101", "temp_sp")].value == 172.5
        assert await sp.read_value() == 172.5  # ticks never overwrite a download

        with pytest.raises(UaStatusCodeError) as refused:
            await sp.write_value(ua.DataValue(ua.Variant(999.0, ua.VariantType.Double)))
        assert refused.value.code == StatusCodes.BadOutOfRange
        with pytest.raises(UaStatusCodeError) as mistyped:
            await sp.write_value(ua.DataValue(ua.Variant("180", ua.VariantType.String)))
        assert mistyped.value.code == StatusCodes.BadTypeMismatch
        assert await sp.read_value() == 172.5
        assert sim.plant.unit("R-101").setpoints["temp_sp"] == 172.5

        with pytest.raises(UaStatusCodeError):  # measured values are read-only
            await client.get_node("ns=2;s=R-101.melt_temp").write_value(
                ua.DataValue(ua.Variant(100.0, ua.VariantType.Double))
            )
        zone = client.get_node("ns=2;s=EX-202.zone4_sp")
        await zone.write_value(ua.DataValue(ua.Variant(240.0, ua.VariantType.Double)))
        assert sim.plant.unit("EX-202").setpoints["zone4_sp"] == 240.0


class Sink:
    """Collects what the connector emits."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.gaps: list[Gap] = []
        self.rejected: list[Rejected] = []

    async def emit(self, batch: Sequence[Observation]) -> None:
        self.observations.extend(batch)

    async def report_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)

    def latest(self, tag: str) -> Observation | None:
        found = [o for o in self.observations if o.tag == tag]
        return found[-1] if found else None


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


async def test_the_mes_connector_reads_and_writes_through_the_registry_config(
    sim: Simulator,
) -> None:
    """``config/telemetry.yaml``'s OPC UA options, pointed at this port, work end to end."""
    sim.inject("dropout:EX-201.melt_pressure,duration=100")
    sink = Sink()
    options = opcua_options(sim.plant, port=sim.opcua.port if sim.opcua else 0)
    config = OpcUaConnector.Config.model_validate({**options, "publishing_interval_ms": 100})
    ctx = ConnectorContext(
        name="sim-opcua",
        config=config,
        emit=sink.emit,
        report_gap=sink.report_gap,
        reject=sink.reject,
        logger=logging.getLogger("test.sim-opcua"),
        clock=SystemClock(),
    )
    connector = OpcUaConnector()
    task = asyncio.create_task(connector.run(ctx))
    melt, pressure = "CORE/ROP-TRAIN-1/R-101/melt_temp", "CORE/FIB-LINE-1/EX-201/melt_pressure"
    try:
        await sim.tick()
        async with asyncio.timeout(WAIT_S):
            while sink.latest(melt) is None or sink.latest(pressure) is None:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        first = sink.latest(melt)
        assert first is not None
        assert first.quality is Quality.good
        assert first.value == sim.plant.readings[("R-101", "melt_temp")].value
        bad = sink.latest(pressure)
        assert bad is not None
        assert bad.quality is Quality.bad
        assert bad.status_code == StatusCodes.BadSensorFailure

        await connector.write("RDC/RDC-ROP-PILOT/PR-05L/temp_sp", 165.0)
        assert sim.plant.unit("PR-05L").setpoints["temp_sp"] == 165.0
        assert sink.rejected == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
