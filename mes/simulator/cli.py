"""``mes simulate``: run the plant simulator standalone.

The function is registered on the main ``mes`` Typer app by ``mes/cli.py``
(``app.command()(simulate)``); it only builds ``SimulatorOptions`` and runs
``run_simulator`` until Ctrl-C (or ``--duration``), so the demo and the command behave
the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Literal, cast

import typer
from pydantic import ValidationError

from mes.simulator.faults import FAULT_SYNTAX, Fault, parse_fault
from mes.simulator.runner import Simulator, SimulatorOptions, run_simulator


def _announce(sim: Simulator) -> None:
    opts = sim.options
    if sim.opcua_endpoint is not None:
        typer.echo(f"OPC UA  {sim.opcua_endpoint}  (namespace urn:bmb:simulator, ns=2)")
    if opts.mqtt:
        typer.echo(
            f"MQTT    {opts.mqtt_host}:{opts.mqtt_port} (MQTT {opts.mqtt_protocol}): "
            f"{opts.mqtt_topic_prefix}/<site>/<room>/env, spBv1.0/<site>/.../<work center>"
        )
    for fault in sim.plant.faults:
        typer.echo(f"fault   {fault.describe()}")
    typer.echo(
        f"seed {opts.seed}, {opts.rate_hz:g} Hz, speed x{opts.speed:g} "
        f"({opts.step_s:g} simulated s per tick); Ctrl-C stops"
    )


def simulate(
    opcua: Annotated[
        bool, typer.Option("--opcua/--no-opcua", help="Serve the OPC UA units.")
    ] = True,
    opcua_host: Annotated[str, typer.Option(help="OPC UA bind address.")] = "127.0.0.1",
    opcua_port: Annotated[
        int, typer.Option(min=0, max=65535, help="OPC UA port; 0 picks a free one.")
    ] = 4840,
    mqtt: Annotated[bool, typer.Option("--mqtt/--no-mqtt", help="Publish to MQTT.")] = True,
    mqtt_host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(min=1, max=65535, help="MQTT broker port.")] = 1883,
    mqtt_protocol: Annotated[
        str, typer.Option(help="MQTT protocol version: 3.1.1 (amqtt) or 5.")
    ] = "3.1.1",
    rate_hz: Annotated[
        float, typer.Option("--rate-hz", min=0.01, max=50, help="Updates per second.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data.")] = 42,
    speed: Annotated[
        float,
        typer.Option(min=0.001, max=3600, help="Simulated seconds per real second (60: 1 h/min)."),
    ] = 1.0,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help=f"Schedule a fault, repeatable: {FAULT_SYNTAX} (times in simulated seconds), "
            "e.g. drift:R-101.melt_temp,start=600,rate=2  dropout:RM-PKG-01.rh,start=60,"
            "duration=300  down:IM-501,start=120,duration=600",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many real seconds.")
    ] = None,
) -> None:
    """Run the plant simulator: ROP reactors, extruders and the EtO sterilizer over OPC UA,
    cleanrooms (JSON) and moulding machines (Sparkplug B) over MQTT."""
    if mqtt_protocol not in ("3.1.1", "5"):
        raise typer.BadParameter("use 3.1.1 or 5", param_hint="--mqtt-protocol")
    faults: list[Fault] = []
    for text in fault or []:
        try:
            faults.append(parse_fault(text))
        except ValueError as exc:
            raise typer.BadParameter(str(exc).splitlines()[0], param_hint="--fault") from exc
    try:
        options = SimulatorOptions(
            opcua=opcua,
            opcua_host=opcua_host,
            opcua_port=opcua_port,
            mqtt=mqtt,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_protocol=cast(Literal["3.1.1", "5"], mqtt_protocol),
            rate_hz=rate_hz,
            seed=seed,
            speed=speed,
            faults=faults,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise typer.BadParameter(f"{where}: {message}" if where else message) from exc

    async def main() -> None:
        run = run_simulator(options, on_ready=_announce)
        if duration is None:
            await run
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run, duration)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        typer.echo("simulator stopped")
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
