"""The runner's options, its tick loop under ``run_simulator`` and the ``simulate`` command.

Servers are switched off here (they have their own tests), so only the loop, the fault API
and the command-line plumbing are exercised; waits are bounded, durations never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from mes.simulator.cli import simulate
from mes.simulator.faults import Fault, FaultKind
from mes.simulator.runner import Simulator, SimulatorOptions, run_simulator


def test_options_accept_fault_text_and_protocol_aliases() -> None:
    options = SimulatorOptions(
        faults=["down:IM-501,start=60,duration=120"], mqtt_protocol="311", speed=60, rate_hz=2
    )
    assert options.faults == [Fault(kind=FaultKind.down, unit="IM-501", start_s=60, duration_s=120)]
    assert options.mqtt_protocol == "3.1.1"
    assert options.step_s == 30.0
    with pytest.raises(ValidationError, match="no simulated unit"):
        SimulatorOptions(faults=["down:XX-1"])
    with pytest.raises(ValidationError):
        SimulatorOptions(opcua_port=70000)
    with pytest.raises(ValidationError):
        SimulatorOptions(speed=0)


async def test_run_simulator_ticks_until_cancelled_and_takes_faults_at_run_time() -> None:
    ready: asyncio.Future[Simulator] = asyncio.get_running_loop().create_future()
    options = SimulatorOptions(opcua=False, mqtt=False, rate_hz=50, speed=60)
    task = asyncio.create_task(run_simulator(options, on_ready=ready.set_result))
    try:
        async with asyncio.timeout(15):
            sim = await ready
            assert sim.opcua_endpoint is None
            fault = sim.inject("down:IM-502,duration=600")
            assert fault.start_s == pytest.approx(sim.plant.t)
            while sim.ticks < 5:
                assert not task.done()
                await asyncio.sleep(0.01)
        assert sim.plant.t == pytest.approx(sim.ticks * 1.2)
        assert sim.plant.readings[("IM-502", "state")].value == "down"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


def command() -> typer.Typer:
    app = typer.Typer()
    app.command()(simulate)
    return app


def test_simulate_command_runs_for_a_duration_and_reports_its_setup() -> None:
    result = CliRunner().invoke(
        command(),
        ["--no-opcua", "--no-mqtt", "--rate-hz", "20", "--duration", "0.3", "--seed", "9",
         "--fault", "drift:R-101.melt_temp,start=5,rate=2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fault   drift:R-101.melt_temp,start=5,rate=2" in result.output
    assert "seed 9, 20 Hz" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "melt:R-101"], "kind"),
        (["--fault", "down:R-999"], "no simulated unit"),
        (["--mqtt-protocol", "4"], "3.1.1 or 5"),
    ],
)
def test_simulate_command_refuses_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(command(), ["--no-opcua", "--no-mqtt", *args])
    assert result.exit_code == 2
    assert message in result.output
