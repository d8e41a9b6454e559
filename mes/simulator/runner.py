"""Run the plant simulator: the dynamics on a fixed tick, served over OPC UA and MQTT.

``mes demo`` runs it in-process (``run_simulator`` or ``async with Simulator(...)``),
``mes simulate`` standalone (``mes.simulator.cli.simulate``). Each tick advances the plant
by exactly ``speed / rate_hz`` simulated seconds, so a seed gives the same data however
late a tick runs; the values carry the tick's wall-clock time as their source timestamp.
A late tick is not caught up in a burst (that would flood the MES with back-dated data):
the schedule restarts from now and the simulated clock simply falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mes.simulator.dynamics import Plant
from mes.simulator.faults import Fault, parse_fault
from mes.simulator.layout import MQTT_TOPIC_PREFIX, OPCUA_PORT, build_plant
from mes.simulator.mqtt_publishers import MqttPublishers
from mes.simulator.opcua_server import OpcUaSimServer

log = logging.getLogger(__name__)


class SimulatorOptions(BaseModel):
    """What to simulate and where to serve it. ``opcua_port`` 0 picks a free port (see
    ``Simulator.opcua_endpoint``); ``speed`` is simulated seconds per wall-clock second;
    ``faults`` accepts ``Fault`` objects or their command-line text
    (``drift:R-101.melt_temp,start=600,rate=2``), timed in simulated seconds."""

    model_config = ConfigDict(extra="forbid")

    opcua: bool = True
    opcua_host: str = "127.0.0.1"
    opcua_port: int = Field(default=OPCUA_PORT, ge=0, le=65535)
    mqtt: bool = True
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    mqtt_client_id: str = Field(default="bmb-simulator", min_length=1, max_length=40)
    mqtt_topic_prefix: str = Field(default=MQTT_TOPIC_PREFIX, pattern=r"^[^/+#]+$")
    mqtt_qos: Literal[0, 1] = 1
    rate_hz: float = Field(default=1.0, gt=0, le=50, allow_inf_nan=False)
    seed: int = 42
    speed: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    faults: list[Fault] = Field(default_factory=list)

    @field_validator("mqtt_protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        return {"5": "5", 5: "5", "311": "3.1.1", 311: "3.1.1"}.get(value, value)

    @field_validator("faults", mode="before")
    @classmethod
    def _faults(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [parse_fault(item) if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _faults_fit_plant(self) -> Self:
        build_plant(self.seed, self.faults)  # unknown unit or signal: ValueError
        return self

    @property
    def step_s(self) -> float:
        """Simulated seconds per tick."""
        return self.speed / self.rate_hz


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Simulator:
    """The plant, its OPC UA server and MQTT publishers, and the tick loop."""

    def __init__(
        self, options: SimulatorOptions | None = None, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.options = options or SimulatorOptions()
        self.clock = clock
        self.plant: Plant = build_plant(self.options.seed, self.options.faults)
        self.ticks = 0
        self.opcua: OpcUaSimServer | None = None
        self.mqtt: MqttPublishers | None = None
        self._started = False

    @property
    def opcua_endpoint(self) -> str | None:
        """The OPC UA endpoint actually listening (port resolved), None when disabled."""
        return None if self.opcua is None else self.opcua.endpoint

    async def start(self) -> None:
        """Start the servers (OPC UA listens before this returns; MQTT connects in the
        background and keeps retrying, so a broker that starts later is fine)."""
        if self._started:
            return
        opts = self.options
        try:
            if opts.opcua:
                self.opcua = OpcUaSimServer(self.plant, opts.opcua_host, opts.opcua_port)
                await self.opcua.start()
            if opts.mqtt:
                self.mqtt = MqttPublishers(
                    self.plant,
                    opts.mqtt_host,
                    opts.mqtt_port,
                    opts.mqtt_protocol,
                    opts.mqtt_client_id,
                    opts.mqtt_topic_prefix,
                    opts.mqtt_qos,
                )
                await self.mqtt.start()
        except BaseException:
            await self.stop()
            raise
        self._started = True
        log.info(
            "plant simulator started: %d units, seed %s, %.3g Hz, speed x%g, %d faults",
            len(self.plant.units), opts.seed, opts.rate_hz, opts.speed, len(self.plant.faults),
        )  # fmt: skip

    def inject(self, fault: Fault | str) -> Fault:
        """Schedule a fault whose ``start_s`` counts from now (simulated seconds)."""
        parsed = parse_fault(fault) if isinstance(fault, str) else fault
        scheduled = self.plant.schedule(parsed, relative=True)
        log.warning("fault scheduled: %s", scheduled.describe())
        return scheduled

    async def tick(self) -> None:
        """Advance one step and publish it."""
        readings = self.plant.step(self.options.step_s)
        ts = self.clock()
        self.ticks += 1
        if self.opcua is not None:
            await self.opcua.update(readings, ts)
        if self.mqtt is not None:
            self.mqtt.publish(readings, ts)

    async def run(self) -> None:
        """Tick at ``rate_hz`` until cancelled; a failing tick is logged, not fatal."""
        await self.start()
        loop = asyncio.get_running_loop()
        period = 1.0 / self.options.rate_hz
        due = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("simulator tick %d failed", self.ticks)
            due += period
            delay = due - loop.time()
            if delay < -period:
                log.debug("simulator is %.1f s behind; skipping ahead", -delay)
                due, delay = loop.time(), 0.0
            await asyncio.sleep(max(0.0, delay))

    async def stop(self) -> None:
        """Stop publishing (Sparkplug NDEATH, DISCONNECT) and close the OPC UA server."""
        mqtt_side, self.mqtt = self.mqtt, None
        opcua_side, self.opcua = self.opcua, None
        if mqtt_side is not None:
            with contextlib.suppress(Exception):
                await mqtt_side.stop()
        if opcua_side is not None:
            await opcua_side.stop()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_simulator(
    options: SimulatorOptions | None = None,
    *,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Run the simulator until cancelled; ``on_ready`` gets the started simulator (its
    resolved ``opcua_endpoint``, ``inject`` for faults) before the first tick."""
    async with Simulator(options) as sim:
        if on_ready is not None:
            on_ready(sim)
        await sim.run()
