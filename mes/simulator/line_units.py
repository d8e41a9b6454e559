"""Continuous and discrete units: melt-spinning extruder, injection moulding machine,
cleanroom environment.

The extruder shows PI-controlled barrel zones settling after a cold start or a setpoint
download; the moulding machine is a shot counter with a machine state (the Sparkplug B
side of the demo); a cleanroom is the ISO 14644 environment of one room (the MQTT JSON
side). Normal values stay inside DOMAIN 5 limits (zones 190-250 degC, moulding melt
200-240 degC and 600-1400 bar, particles below the ISO class limit, pressure >= 10 Pa).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mes.simulator.dynamics import (
    PiController,
    SignalKind,
    SignalSpec,
    Transport,
    UnitModel,
    Value,
    clamp,
    lag,
    ramp,
)

AMBIENT_C = 22.0
ZONES = 4


def _zone_specs() -> tuple[SignalSpec, ...]:
    temps = [
        SignalSpec(f"zone{z}_temp", "degC", f"Barrel zone {z} temperature", low=190, high=250,
                   minimum=0, maximum=400)
        for z in range(1, ZONES + 1)
    ]  # fmt: skip
    setpoints = [
        SignalSpec(f"zone{z}_sp", "degC", f"Zone {z} setpoint (writable)", low=190, high=250,
                   minimum=20, maximum=280, writable=True)
        for z in range(1, ZONES + 1)
    ]  # fmt: skip
    return (*temps, *setpoints)


class Extruder(UnitModel):
    """Single-screw melt-spinning line: four barrel zones under PI control (heater duty
    0-1, 50 min heat-loss time constant, about 7 degC/min at full power), a start-up
    interlock (every zone within 3 degC for 10 min), then screw and take-up ramp up. Melt
    pressure rises with throughput and falls with melt temperature; filament diameter
    follows the mass balance (throughput over take-up speed) with gauge noise."""

    kind = "fibre_extruder"
    STATES: ClassVar[tuple[str, ...]] = ("heating", "running", "down")
    signals = (
        *_zone_specs(),
        SignalSpec("melt_temp", "degC", "Melt temperature at the spin pack", low=190,
                   high=250, minimum=0, maximum=400),
        SignalSpec("melt_pressure", "bar", "Melt pressure before the melt pump", minimum=0,
                   maximum=400),
        SignalSpec("screw_speed", "rpm", "Screw speed", minimum=0, maximum=150),
        SignalSpec("line_speed", "m/min", "Take-up speed", minimum=0, maximum=2000),
        SignalSpec("fibre_diameter", "um", "Filament diameter (laser gauge; 0: no fibre)",
                   minimum=0, maximum=100),
        SignalSpec("state", None, "Line state: heating, running, down", SignalKind.text),
    )  # fmt: skip

    def __init__(
        self,
        code: str,
        site: str,
        parent: str,
        seed: int,
        zone_sp: tuple[float, float, float, float] = (195.0, 210.0, 220.0, 225.0),
        cold_start: bool = False,
        screw_rpm: float = 40.0,
        take_up_m_min: float = 600.0,
        diameter_um: float = 25.0,
        name: str = "",
    ) -> None:
        super().__init__(code, site, parent, seed, name)
        self.nominal_rpm, self.nominal_take_up, self.nominal_d = (
            screw_rpm,
            take_up_m_min,
            diameter_um,
        )
        for zone, sp in enumerate(zone_sp, start=1):
            self.setpoints[f"zone{zone}_sp"] = sp
        self.loops = [PiController(kp=0.08, ti_s=300.0) for _ in range(ZONES)]
        if cold_start:
            self.zones = [AMBIENT_C] * ZONES
            self.state, self.rpm, self.take_up, self.pressure = "heating", 0.0, 0.0, 0.0
        else:  # a line in steady production: loops pre-loaded with their steady duty
            self.zones = list(zone_sp)
            for loop, sp in zip(self.loops, zone_sp, strict=True):
                loop.integral = self._duty(sp) / loop.kp * loop.ti_s
            self.state, self.rpm, self.take_up = "running", screw_rpm, take_up_m_min
            self.pressure = self._pressure()
        self.settled_s = 0.0

    @staticmethod
    def _duty(temp: float) -> float:
        return (temp - AMBIENT_C) / 3000.0 / 0.12

    def _melt_temp(self) -> float:
        return self.zones[-1] + 4.0 * self.rpm / self.nominal_rpm

    def _pressure(self) -> float:
        viscosity = math.exp(-0.012 * (self._melt_temp() - 229.0))
        return 110.0 * self.rpm / self.nominal_rpm * viscosity

    def advance(self, dt: float) -> None:
        for zone in range(ZONES):  # heaters keep control even while the line is down
            sp = self.setpoints[f"zone{zone + 1}_sp"]
            duty = self.loops[zone].update(sp - self.zones[zone], dt)
            temp = self.zones[zone]
            self.zones[zone] = temp + (duty * 0.12 - (temp - AMBIENT_C) / 3000.0) * dt
        in_band = all(
            abs(self.zones[z] - self.setpoints[f"zone{z + 1}_sp"]) <= 3.0 for z in range(ZONES)
        )
        self.settled_s = self.settled_s + dt if in_band else 0.0
        if self.down:
            self.state = "down"
        elif self.state == "down" or (self.state == "heating" and self.settled_s >= 600.0):
            self.state = "running" if self.settled_s >= 600.0 else "heating"
        running = self.state == "running"
        self.rpm = ramp(self.rpm, self.nominal_rpm if running else 0.0, 10.0 / 60.0, dt)
        self.take_up = ramp(self.take_up, self.nominal_take_up if running else 0.0, 2.5, dt)
        self.pressure = lag(self.pressure, self._pressure(), 20.0, dt)

    def measure(self) -> dict[str, Value]:
        values: dict[str, Value] = {}
        for zone in range(ZONES):
            values[f"zone{zone + 1}_temp"] = round(self.zones[zone] + self.noise(0.2), 2)
        for zone in range(1, ZONES + 1):
            values[f"zone{zone}_sp"] = self.setpoints[f"zone{zone}_sp"]
        diameter = 0.0
        if self.take_up > 1.0 and self.rpm > 0.5:
            ratio = (self.rpm / self.nominal_rpm) / (self.take_up / self.nominal_take_up)
            diameter = clamp(self.nominal_d * math.sqrt(ratio) * (1 + self.noise(0.012)), 0, 100)
        values.update(
            melt_temp=round(self._melt_temp() + self.noise(0.3), 2),
            melt_pressure=round(max(0.0, self.pressure * (1 + self.noise(0.01))), 2),
            screw_speed=round(self.rpm, 2),
            line_speed=round(self.take_up, 1),
            fibre_diameter=round(diameter, 3),
            state="down" if self.down else self.state,
        )
        return values


class MouldingMachine(UnitModel):
    """All-electric injection moulding of PLLA/PLGA bone screws: shots every
    ``cycle_s`` (+-1 %) while running, rejects at ``reject_rate`` (30 % for the first five
    purge shots after any stop), random short idles (material or QC checks, about one per
    400 shots). A ``down`` fault stops the counters; the barrel cools while down."""

    kind = "injection_moulding_machine"
    transport: ClassVar[Transport] = "sparkplug"
    STATES: ClassVar[tuple[str, ...]] = ("running", "idle", "down")
    signals = (
        SignalSpec("state", None, "Machine state: running, idle, down", SignalKind.text),
        SignalSpec("good_count", None, "Good shots since simulator start", minimum=0,
                   integer=True),
        SignalSpec("reject_count", None, "Rejected shots since simulator start", minimum=0,
                   integer=True),
        SignalSpec("cycle_time", "s", "Duration of the last completed shot", minimum=0,
                   maximum=600),
        SignalSpec("melt_temp", "degC", "Melt temperature at the nozzle", low=200, high=240,
                   minimum=0, maximum=400),
        SignalSpec("injection_pressure", "bar", "Peak injection pressure of the last shot",
                   low=600, high=1400, minimum=0, maximum=2500),
    )  # fmt: skip

    def __init__(
        self,
        code: str,
        site: str,
        parent: str,
        seed: int,
        cycle_s: float = 30.0,
        reject_rate: float = 0.02,
        melt_sp: float = 215.0,
        pressure_bar: float = 950.0,
        name: str = "",
    ) -> None:
        super().__init__(code, site, parent, seed, name)
        self.cycle_s, self.reject_rate = cycle_s, reject_rate
        self.melt_sp, self.nominal_pressure = melt_sp, pressure_bar
        self.state = "running"
        self.good = self.rejects = 0
        self.in_cycle = self.rng.uniform(0.0, cycle_s)
        self.next_cycle = cycle_s
        self.last_cycle = cycle_s
        self.last_pressure = pressure_bar
        self.idle_left = 0.0
        self.purge_shots = 0
        self.melt = melt_sp

    def advance(self, dt: float) -> None:
        if self.down:
            self.state, self.purge_shots = "down", 5
            self.melt = lag(self.melt, 150.0, 1200.0, dt)
            return
        self.melt = lag(self.melt, self.melt_sp, 300.0, dt)
        if self.state == "down":
            self.state, self.in_cycle = "running", 0.0
        if self.state == "idle":
            self.idle_left -= dt
            if self.idle_left <= 0:
                self.state, self.in_cycle, self.purge_shots = "running", 0.0, 5
            return
        self.in_cycle += dt
        while self.in_cycle >= self.next_cycle and self.state == "running":
            self.in_cycle -= self.next_cycle
            self._shot()

    def _shot(self) -> None:
        rate = 0.3 if self.purge_shots > 0 else self.reject_rate
        self.purge_shots = max(0, self.purge_shots - 1)
        if self.rng.random() < rate:
            self.rejects += 1
        else:
            self.good += 1
        self.last_cycle = self.next_cycle
        self.last_pressure = self.nominal_pressure * (1 + self.rng.gauss(0.0, 0.015))
        self.next_cycle = self.cycle_s * (1 + clamp(self.rng.gauss(0.0, 0.01), -0.04, 0.04))
        if self.rng.random() < 1 / 400:
            self.state, self.idle_left = "idle", self.rng.uniform(300.0, 900.0)

    def measure(self) -> dict[str, Value]:
        return {
            "state": "down" if self.down else self.state,
            "good_count": self.good,
            "reject_count": self.rejects,
            "cycle_time": round(self.last_cycle, 2),
            "melt_temp": round(self.melt + self.noise(0.3), 2),
            "injection_pressure": round(self.last_pressure, 1) if self.state == "running" else 0.0,
        }


ISO_PARTICLE_LIMITS: dict[int, tuple[float, float]] = {
    5: (3_520.0, 29.0),
    6: (35_200.0, 293.0),
    7: (352_000.0, 2_930.0),
    8: (3_520_000.0, 29_300.0),
}
"""ISO 14644-1 class limits per m3 for particles >= 0.5 um and >= 5 um."""


@dataclass(frozen=True, slots=True)
class RoomConditions:
    """Design conditions of one room; ``iso_class`` None: no particle monitoring."""

    iso_class: int | None = 8
    dry: bool = False
    temp_sp: float = 21.0
    rh_sp: float = 40.0
    dp_sp: float = 12.5


def dew_point(temp_c: float, rh_pct: float) -> float:
    """Dew point (degC) by the Magnus formula (Sonntag constants)."""
    gamma = math.log(max(rh_pct, 0.01) / 100.0) + 17.62 * temp_c / (243.12 + temp_c)
    return 243.12 * gamma / (17.62 - gamma)


class Cleanroom(UnitModel):
    """Room environment: temperature and humidity with a daily swing and slow random
    walks, a differential pressure cascade, particle counts around 8 % of the ISO class
    limit with occasional bursts (people, material moves) that the air changes clear in
    minutes, and the dew point for dry rooms (about -26 degC at 3 % RH). A ``down`` fault
    is an HVAC failure: pressure collapses, particles climb past the limit, a dry room
    takes on moisture."""

    kind = "cleanroom"
    transport: ClassVar[Transport] = "json"

    def __init__(
        self, code: str, site: str, seed: int, conditions: RoomConditions, name: str = ""
    ) -> None:
        super().__init__(code, site, None, seed, name)
        self.conditions = conditions
        self.signals = self._specs(conditions)
        self.temp, self.rh, self.dp = conditions.temp_sp, conditions.rh_sp, conditions.dp_sp
        self.walk_t = self.walk_rh = 0.0
        self.burst = 0.0
        self.hvac = 1.0
        self.clock = self.rng.uniform(0.0, 86_400.0)

    @staticmethod
    def _specs(c: RoomConditions) -> tuple[SignalSpec, ...]:
        rh_low, rh_high = (None, 10.0) if c.dry else (30.0, 60.0)
        specs = [
            SignalSpec("temperature", "degC", "Room air temperature", low=18, high=24,
                       minimum=-10, maximum=50),
            SignalSpec("rh", "percent", "Room relative humidity", low=rh_low, high=rh_high,
                       minimum=0, maximum=100),
            SignalSpec("diff_pressure", "Pa", "Differential pressure to the adjacent zone",
                       low=10, high=30, minimum=-5, maximum=60),
        ]  # fmt: skip
        if c.iso_class is not None:
            lim_05, lim_5 = ISO_PARTICLE_LIMITS[c.iso_class]
            specs += [
                SignalSpec("particles_0_5um", "1/m**3", f"Particles >= 0.5 um (ISO {c.iso_class}"
                           f" limit {lim_05:.0f})", low=0, high=lim_05, minimum=0, integer=True),
                SignalSpec("particles_5um", "1/m**3", f"Particles >= 5 um (ISO {c.iso_class}"
                           f" limit {lim_5:.0f})", low=0, high=lim_5, minimum=0, integer=True),
            ]  # fmt: skip
        if c.dry:
            specs.append(SignalSpec("dew_point", "degC", "Dew point of the dry-room air",
                                    low=-40, high=-20, minimum=-80, maximum=30))  # fmt: skip
        return tuple(specs)

    def advance(self, dt: float) -> None:
        c = self.conditions
        self.clock += dt
        self.hvac = lag(self.hvac, 0.0 if self.down else 1.0, 120.0, dt)
        swing = math.sin(2 * math.pi * self.clock / 86_400.0)
        # Ornstein-Uhlenbeck walks: bounded, slowly varying deviations from the design point.
        self.walk_t += -self.walk_t * dt / 1800.0 + self.rng.gauss(0.0, 0.004) * math.sqrt(dt)
        self.walk_rh += -self.walk_rh * dt / 1800.0 + self.rng.gauss(0.0, 0.02) * math.sqrt(dt)
        rh_swing = (0.3 if c.dry else 2.0) * swing + (0.05 if c.dry else 1.0) * self.walk_rh
        temp_target = c.temp_sp + 0.3 * swing + self.walk_t
        rh_target = c.rh_sp + rh_swing
        self.temp = lag(self.temp, self.hvac * temp_target + (1 - self.hvac) * 25.0, 600.0, dt)
        self.rh = lag(self.rh, self.hvac * rh_target + (1 - self.hvac) * 50.0, 900.0, dt)
        self.dp = lag(self.dp, self.hvac * c.dp_sp + (1 - self.hvac) * 0.3, 20.0, dt)
        if self.rng.random() < 2.0 * dt / 3600.0:  # about two bursts an hour
            self.burst += self.rng.uniform(0.5, 2.0)
        self.burst = lag(self.burst, 0.0, 300.0, dt)

    def measure(self) -> dict[str, Value]:
        c = self.conditions
        temp = self.temp + self.noise(0.05)
        rh = clamp(self.rh + self.noise(0.3 if not c.dry else 0.05), 0.2, 100.0)
        values: dict[str, Value] = {
            "temperature": round(temp, 2),
            "rh": round(rh, 2),
            "diff_pressure": round(self.dp + self.noise(0.2), 2),
        }
        if c.iso_class is not None:
            lim_05, lim_5 = ISO_PARTICLE_LIMITS[c.iso_class]
            level = (0.08 + 0.08 * self.burst) * self.hvac + 4.0 * (1 - self.hvac)
            spread = math.exp(self.noise(0.15))
            values["particles_0_5um"] = int(lim_05 * level * spread)
            values["particles_5um"] = int(lim_5 * level * spread * math.exp(self.noise(0.1)))
        if c.dry:
            values["dew_point"] = round(dew_point(temp, rh), 2)
        return values
