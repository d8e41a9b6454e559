"""Batch units: the ring-opening polymerization reactor and the EtO sterilizer.

Both run an endless sequence of batches through fixed phases so that the MES sees complete
batch trajectories (and batch context can window them by phase). Default recipes sit inside
the demo plant's action limits (DOMAIN 5 and ``config/work_masters.yaml``): a reactor holds
160 degC (``melt_temp`` 140-180), an EtO cycle exposes at 48 degC, 55 % RH and 550 mg/L
(``chamber_temp`` 37-50, ``precond_rh`` 30-60, ``eo_concentration`` 400-650). Recipes are
dataclasses so a conventional 54 degC / 800 mg/L cycle or a 190 degC PLLA batch is a
parameter change, and a drift fault is what takes a value out of its limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mes.simulator.dynamics import SignalKind, SignalSpec, UnitModel, Value, clamp, lag, ramp

ATMOSPHERE_MBAR = 1013.0
N2_BLANKET_MBAR = 1030.0
GAS_CONSTANT = 8.314


@dataclass(frozen=True, slots=True)
class ReactorRecipe:
    """One ROP batch: durations in simulated seconds, temperatures in degC."""

    temp_sp: float = 160.0
    charge_s: float = 1800.0
    ramp_c_per_min: float = 1.5
    hold_s: float = 4 * 3600.0
    devol_s: float = 1.5 * 3600.0
    discharge_s: float = 1800.0
    idle_s: float = 1200.0
    torque_max_nm: float = 450.0
    devol_floor_mbar: float = 1.5


class RopReactor(UnitModel):
    """Bulk ROP of lactide/glycolide: charge molten monomer, ramp to temperature, hold while
    conversion follows Arrhenius kinetics (agitator torque rises with melt viscosity), strip
    residual monomer under vacuum (pressure falls to a few mbar), break vacuum with N2 and
    discharge. ``temp_sp`` is a writable setpoint taking effect in the next heat/hold."""

    kind = "rop_reactor"
    PHASES: ClassVar[tuple[str, ...]] = ("idle", "charge", "heat", "hold", "devol", "discharge")
    signals = (
        SignalSpec("melt_temp", "degC", "Polymer melt temperature", low=140, high=180,
                   minimum=-20, maximum=300),
        SignalSpec("jacket_temp", "degC", "Heating jacket oil temperature", minimum=-20,
                   maximum=320),
        SignalSpec("temp_sp", "degC", "Melt temperature setpoint (writable)", low=140,
                   high=180, minimum=20, maximum=230, writable=True),
        SignalSpec("pressure", "mbar", "Headspace absolute pressure (devolatilization <= 5)",
                   low=0, high=1100, minimum=0, maximum=1200),
        SignalSpec("agitator_speed", "rpm", "Helical-ribbon agitator speed", minimum=0,
                   maximum=80),
        SignalSpec("agitator_torque", "N*m", "Agitator shaft torque (rises with conversion)",
                   minimum=0, maximum=1000),
        SignalSpec("conversion", "percent", "Monomer conversion (inline model)", minimum=0,
                   maximum=100),
        SignalSpec("time_at_temp", "h", "Time within 5 degC of setpoint in this batch",
                   low=2, high=10, minimum=0, maximum=48),
        SignalSpec("batch_no", None, "Batches started since simulator start", minimum=0,
                   integer=True),
        SignalSpec("phase", None, "Batch phase: " + ", ".join(PHASES), SignalKind.text),
    )  # fmt: skip

    def __init__(
        self,
        code: str,
        site: str,
        parent: str,
        seed: int,
        recipe: ReactorRecipe | None = None,
        name: str = "",
    ) -> None:
        super().__init__(code, site, parent, seed, name)
        self.recipe = recipe or ReactorRecipe()
        self.setpoints["temp_sp"] = self.recipe.temp_sp
        self.phase = "idle"
        self.phase_t = self.rng.uniform(0.0, self.recipe.idle_s)
        self.temp, self.jacket, self.ref = 60.0, 60.0, 60.0
        self.pressure = N2_BLANKET_MBAR
        self.conversion = self.level = self.rpm = self.time_at_temp_s = 0.0
        self.batch_no = 0

    def _next(self, phase: str) -> None:
        self.phase, self.phase_t = phase, 0.0
        if phase == "charge":
            self.batch_no += 1
            self.conversion = self.time_at_temp_s = 0.0

    def advance(self, dt: float) -> None:
        r, sp = self.recipe, self.setpoints["temp_sp"]
        if self.down:  # agitator tripped, heating interlocked off: the melt cools slowly
            self.rpm = lag(self.rpm, 0.0, 5.0, dt)
            self.jacket = lag(self.jacket, self.temp - 5.0, 600.0, dt)
            self.temp = lag(self.temp, self.jacket, 1800.0, dt)
            return
        self.phase_t += dt
        phase = self.phase
        if phase == "idle":
            self.jacket, self.rpm, self.level = lag(self.jacket, 60.0, 900.0, dt), 0.0, 0.0
            self.temp = lag(self.temp, self.jacket, 1200.0, dt)
            self.pressure = lag(self.pressure, N2_BLANKET_MBAR, 60.0, dt)
            if self.phase_t >= r.idle_s:
                self._next("charge")
        elif phase == "charge":  # molten monomer fed at ~110 degC
            self.level = min(1.0, self.phase_t / r.charge_s)
            self.rpm = ramp(self.rpm, 20.0, 1.0, dt)
            self.jacket = lag(self.jacket, 120.0, 300.0, dt)
            self.temp = lag(self.temp, 110.0, 400.0, dt)
            if self.phase_t >= r.charge_s:
                self.ref = self.temp
                self._next("heat")
        elif phase == "heat":
            self.rpm = ramp(self.rpm, 30.0, 1.0, dt)
            self.ref = ramp(self.ref, sp, r.ramp_c_per_min / 60.0, dt)
            self.temp = lag(self.temp, self.ref, 90.0, dt)
            self.jacket = lag(self.jacket, self.temp + 12.0, 120.0, dt)
            if self.temp >= sp - 1.0:
                self._next("hold")
        elif phase in ("hold", "devol"):
            self.ref = ramp(self.ref, sp, r.ramp_c_per_min / 60.0, dt)
            self.temp = lag(self.temp, self.ref, 300.0, dt)
            self.jacket = lag(self.jacket, self.temp + 3.0, 120.0, dt)
            if phase == "devol":  # pressure falls exponentially in log space
                log_p = lag(math.log(self.pressure), math.log(r.devol_floor_mbar), 600.0, dt)
                self.pressure = math.exp(log_p)
            if self.phase_t >= (r.hold_s if phase == "hold" else r.devol_s):
                self._next("devol" if phase == "hold" else "discharge")
        else:  # discharge: N2 breaks the vacuum, the melt leaves through the bottom valve
            self.pressure = lag(self.pressure, N2_BLANKET_MBAR, 60.0, dt)
            self.rpm = ramp(self.rpm, 10.0, 2.0, dt)
            self.level = max(0.0, 1.0 - self.phase_t / r.discharge_s)
            self.jacket = lag(self.jacket, self.temp, 300.0, dt)
            if self.phase_t >= r.discharge_s:
                self._next("idle")
        if self.phase in ("heat", "hold", "devol") and self.level > 0:
            # Arrhenius kinetics, Ea 70 kJ/mol, k = 1.2 /h at 160 degC, equilibrium 96 %.
            k = (
                1.2
                / 3600
                * math.exp(-70e3 / GAS_CONSTANT * (1 / (self.temp + 273.15) - 1 / 433.15))
            )
            self.conversion += k * (0.96 - self.conversion) * dt
            if abs(self.temp - sp) <= 5.0:
                self.time_at_temp_s += dt

    def torque(self) -> float:
        """Torque grows steeply with conversion (molar mass) and falls with temperature."""
        if self.rpm <= 0.5 or self.level <= 0:
            return 0.0
        tmax = self.recipe.torque_max_nm
        viscous = 0.02 + 0.98 * self.conversion**3 / 0.96**3
        thermal = math.exp(-0.015 * (self.temp - 160.0))
        return self.level * tmax * viscous * thermal * math.sqrt(self.rpm / 30.0)

    def measure(self) -> dict[str, Value]:
        torque = self.torque()
        pressure = self.pressure * (1 + self.noise(0.005)) + self.noise(0.02)
        return {
            "melt_temp": round(self.temp + self.noise(0.15), 2),
            "jacket_temp": round(self.jacket + self.noise(0.3), 2),
            "temp_sp": self.setpoints["temp_sp"],
            "pressure": round(clamp(pressure, 0.05, 1200.0), 3),
            "agitator_speed": round(max(0.0, self.rpm + self.noise(0.1)) if self.rpm else 0.0, 2),
            "agitator_torque": round(clamp(torque * (1 + self.noise(0.01)), 0.0, 1000.0), 1),
            "conversion": round(100.0 * self.conversion, 2),
            "time_at_temp": round(self.time_at_temp_s / 3600.0, 3),
            "batch_no": self.batch_no,
            "phase": "down" if self.down else self.phase,
        }


@dataclass(frozen=True, slots=True)
class EtoCycle:
    """An ISO 11135 EtO cycle: phase durations (simulated s) and targets."""

    idle_s: float = 1800.0
    precond_s: float = 3600.0
    vacuum_s: float = 1200.0
    humidify_s: float = 1800.0
    injection_s: float = 900.0
    exposure_s: float = 3 * 3600.0
    evacuation_s: float = 1800.0
    aeration_s: float = 2 * 3600.0
    precond_temp: float = 45.0
    precond_rh: float = 45.0
    exposure_temp: float = 48.0
    humidify_rh: float = 55.0
    vacuum_mbar: float = 60.0
    eo_mg_per_l: float = 550.0


class EtoSterilizer(UnitModel):
    """A 100 % EtO vacuum sterilizer cycling through idle (load change), preconditioning,
    vacuum, humidification, gas injection, exposure, evacuation (gas washes) and in-chamber
    aeration. EtO partial pressure follows the ideal gas law, so chamber pressure and
    concentration stay consistent (550 mg/L at 48 degC is about 333 mbar)."""

    kind = "eto_sterilizer"
    PHASES: ClassVar[tuple[str, ...]] = (
        "idle", "preconditioning", "vacuum", "humidification", "gas_injection", "exposure",
        "evacuation", "aeration",
    )  # fmt: skip
    signals = (
        SignalSpec("chamber_temp", "degC", "Chamber temperature", low=37, high=50, minimum=0,
                   maximum=80),
        SignalSpec("chamber_pressure", "mbar", "Chamber absolute pressure", minimum=0,
                   maximum=1200),
        SignalSpec("chamber_rh", "percent", "Chamber relative humidity", low=30, high=60,
                   minimum=0, maximum=100),
        SignalSpec("eo_concentration", "mg/L", "EtO gas concentration", low=400, high=650,
                   minimum=0, maximum=1500),
        SignalSpec("exposure_time", "h", "Elapsed EtO exposure of the current cycle", low=2,
                   high=6, minimum=0, maximum=24),
        SignalSpec("phase_no", None, "Cycle phase number (0 idle ... 7 aeration, -1 fault)",
                   minimum=-1, maximum=7, integer=True),
        SignalSpec("cycle_no", None, "Cycles started since simulator start", minimum=0,
                   integer=True),
        SignalSpec("phase", None, "Cycle phase: " + ", ".join(PHASES) + ", fault",
                   SignalKind.text),
    )  # fmt: skip

    def __init__(
        self,
        code: str,
        site: str,
        parent: str,
        seed: int,
        cycle: EtoCycle | None = None,
        name: str = "",
    ) -> None:
        super().__init__(code, site, parent, seed, name)
        self.cycle = cycle or EtoCycle()
        self.phase_index = 0
        self.phase_t = self.rng.uniform(0.0, self.cycle.idle_s)
        self.temp, self.rh, self.base_p, self.eo = 25.0, 40.0, ATMOSPHERE_MBAR, 0.0
        self.exposure_s = 0.0
        self.cycle_no = 0

    @property
    def phase(self) -> str:
        return self.PHASES[self.phase_index]

    def _durations(self) -> tuple[float, ...]:
        c = self.cycle
        return (c.idle_s, c.precond_s, c.vacuum_s, c.humidify_s, c.injection_s, c.exposure_s,
                c.evacuation_s, c.aeration_s)  # fmt: skip

    def eo_pressure(self) -> float:
        """EtO partial pressure (mbar) of the current concentration (ideal gas)."""
        return self.eo * GAS_CONSTANT * (self.temp + 273.15) / 44.05 / 100.0

    def advance(self, dt: float) -> None:
        c = self.cycle
        if self.down:  # cycle halted: timers freeze, the chamber slowly leaks towards ambient
            self.base_p = lag(self.base_p, ATMOSPHERE_MBAR, 7200.0, dt)
            self.temp = lag(self.temp, 25.0, 7200.0, dt)
            return
        self.phase_t += dt
        phase = self.phase
        if phase == "idle":  # door open for load change
            self.temp, self.rh = lag(self.temp, 25.0, 600.0, dt), lag(self.rh, 40.0, 300.0, dt)
            self.base_p, self.eo = lag(self.base_p, ATMOSPHERE_MBAR, 30.0, dt), 0.0
        elif phase == "preconditioning":
            self.temp = lag(self.temp, c.precond_temp, 600.0, dt)
            self.rh = lag(self.rh, c.precond_rh, 400.0, dt)
        elif phase == "vacuum":
            log_p = lag(math.log(self.base_p), math.log(c.vacuum_mbar), 200.0, dt)
            self.base_p = math.exp(log_p)
            self.temp = lag(self.temp, c.exposure_temp, 900.0, dt)
            self.rh = lag(self.rh, 30.0, 600.0, dt)  # moisture leaves with the air
        elif phase == "humidification":  # steam injection
            self.rh = lag(self.rh, c.humidify_rh, 300.0, dt)
            self.base_p = lag(self.base_p, c.vacuum_mbar + 15.0, 300.0, dt)
            self.temp = lag(self.temp, c.exposure_temp, 600.0, dt)
        elif phase == "gas_injection":
            self.eo = ramp(self.eo, c.eo_mg_per_l, c.eo_mg_per_l / (0.8 * c.injection_s), dt)
            self.temp = lag(self.temp, c.exposure_temp, 600.0, dt)
        elif phase == "exposure":  # absorption into the load, topped up at -4 %
            self.exposure_s += dt
            self.eo -= self.eo * dt / (6 * 3600.0)
            if self.eo < 0.96 * c.eo_mg_per_l:
                self.eo = c.eo_mg_per_l
            self.temp = lag(self.temp, c.exposure_temp, 300.0, dt)
            self.rh = lag(self.rh, c.humidify_rh - 5.0, 3600.0, dt)
        elif phase == "evacuation":  # gas washes: evacuate, admit filtered air, repeat
            self.eo = lag(self.eo, 1.0, 300.0, dt)
            wash = math.sin(2 * math.pi * self.phase_t / 600.0) > 0
            self.base_p = lag(self.base_p, c.vacuum_mbar if wash else 700.0, 60.0, dt)
            self.rh = lag(self.rh, 20.0, 600.0, dt)
        else:  # aeration: heated air flow at atmospheric pressure
            self.eo = lag(self.eo, 0.0, 1200.0, dt)
            self.base_p = lag(self.base_p, ATMOSPHERE_MBAR, 60.0, dt)
            self.temp = lag(self.temp, 45.0, 900.0, dt)
            self.rh = lag(self.rh, 15.0, 900.0, dt)
        if self.phase_t >= self._durations()[self.phase_index]:
            self.phase_index = (self.phase_index + 1) % len(self.PHASES)
            self.phase_t = 0.0
            if self.phase_index == 1:
                self.cycle_no += 1
                self.exposure_s = 0.0

    def measure(self) -> dict[str, Value]:
        pressure = self.base_p + self.eo_pressure()
        eo = self.eo * (1 + self.noise(0.004)) if self.eo > 0.5 else abs(self.noise(0.1))
        return {
            "chamber_temp": round(self.temp + self.noise(0.1), 2),
            "chamber_pressure": round(clamp(pressure * (1 + self.noise(0.002)), 0.0, 1200.0), 2),
            "chamber_rh": round(clamp(self.rh + self.noise(0.4), 0.0, 100.0), 1),
            "eo_concentration": round(clamp(eo, 0.0, 1500.0), 1),
            "exposure_time": round(self.exposure_s / 3600.0, 3),
            "phase_no": -1 if self.down else self.phase_index,
            "cycle_no": self.cycle_no,
            "phase": "fault" if self.down else self.phase,
        }
