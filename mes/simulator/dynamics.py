"""Process models of the simulated plant: pure, deterministic, stepping in simulated time.

Nothing here does I/O or reads a clock. A ``Plant`` holds one model per simulated unit or
room; ``Plant.step(dt)`` advances them by ``dt`` simulated seconds (in sub-steps short enough
for the first-order lags and PI loops to stay stable at any speed factor) and then takes one
measurement of every signal, noise included. Each model draws its noise from its own
``random.Random`` seeded with ``"<seed>/<unit code>"``, so a seed and the same sequence of
``step`` calls give bit-identical readings, and adding a unit never changes another's data.

The concrete models live in ``batch_units`` (ROP reactor, EtO sterilizer) and
``line_units`` (melt-spinning extruder, injection moulding machine, cleanroom); faults
(``faults.Fault``) are applied here, on top of any model, to the measured values.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from mes.simulator.faults import Fault, FaultKind

Value = float | int | bool | str
"""A measured or written value."""

Transport = Literal["opcua", "json", "sparkplug"]
"""How a unit's signals leave the simulator: OPC UA variables, MQTT JSON, Sparkplug B."""

MAX_SUBSTEP_S = 5.0
"""Longest internal integration step: the PI loops (loop gain 0.01/s) and explicit updates
stay accurate far beyond it; lags are integrated exactly whatever the step."""


class SignalKind(StrEnum):
    """The tag kinds of the MES telemetry registry."""

    number = "number"
    boolean = "boolean"
    text = "text"


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One signal of a unit.

    ``low``/``high`` bound normal operation (the demo plant's action limits where DOMAIN 5
    gives them) and size the default drift; ``minimum``/``maximum`` are physical bounds no
    reading ever leaves (and the range a setpoint write must respect). ``integer`` signals
    are counters, published as 64-bit integers.
    """

    name: str
    uom: str | None
    description: str
    kind: SignalKind = SignalKind.number
    low: float | None = None
    high: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    writable: bool = False
    integer: bool = False

    @property
    def band(self) -> float:
        """Width of the operating band (drift speed scale); 10 units when open-ended."""
        if self.low is not None and self.high is not None and self.high > self.low:
            return self.high - self.low
        return 10.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement: ``value`` None with ``good`` False during a dropout."""

    value: Value | None
    good: bool = True


class SetpointError(ValueError):
    """A write the unit refuses (unknown or read-only signal, wrong type, out of range)."""


def lag(value: float, target: float, tau_s: float, dt: float) -> float:
    """First-order approach of ``value`` to ``target`` with time constant ``tau_s``."""
    return target + (value - target) * math.exp(-dt / tau_s)


def ramp(value: float, target: float, rate_per_s: float, dt: float) -> float:
    """Move ``value`` towards ``target`` by at most ``rate_per_s * dt``."""
    step = rate_per_s * dt
    return min(target, value + step) if target >= value else max(target, value - step)


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class PiController:
    """A PI loop with output clamping and conditional integration (anti-windup)."""

    def __init__(self, kp: float, ti_s: float, out_min: float = 0.0, out_max: float = 1.0):
        self.kp, self.ti_s, self.out_min, self.out_max = kp, ti_s, out_min, out_max
        self.integral = 0.0

    def update(self, error: float, dt: float) -> float:
        unclamped = self.kp * (error + self.integral / self.ti_s)
        out = clamp(unclamped, self.out_min, self.out_max)
        if out == unclamped or (out == self.out_max) != (error > 0):
            self.integral += error * dt
        return out


class UnitModel(ABC):
    """A simulated unit (or room): its signals, its state, its noise source.

    Subclasses implement ``advance`` (physics over one sub-step; read ``self.down``) and
    ``measure`` (one noisy reading of every signal, called once per plant step). ``path``
    is the tag prefix ``site/work-center/unit`` (``site/room`` for a room).
    """

    signals: tuple[SignalSpec, ...]
    transport: ClassVar[Transport] = "opcua"
    kind: ClassVar[str]

    def __init__(self, code: str, site: str, parent: str | None, seed: int, name: str = ""):
        self.code, self.site, self.parent = code, site, parent
        self.name = name or code
        self.rng = random.Random(f"{seed}/{code}")
        self.down = False
        self.setpoints: dict[str, float] = {}

    @property
    def path(self) -> str:
        return "/".join(p for p in (self.site, self.parent, self.code) if p)

    @property
    def is_room(self) -> bool:
        return self.parent is None

    def spec(self, signal: str) -> SignalSpec:
        for spec in self.signals:
            if spec.name == signal:
                return spec
        raise KeyError(f"{self.code} has no signal {signal!r}")

    def tag(self, signal: str) -> str:
        return f"{self.path}/{signal}"

    def noise(self, sigma: float) -> float:
        return self.rng.gauss(0.0, sigma)

    def write(self, signal: str, value: object) -> float:
        """Accept a setpoint download; returns the value now in force."""
        number = self.check_setpoint(signal, value)
        self.setpoints[signal] = number
        return number

    def check_setpoint(self, signal: str, value: object) -> float:
        """The value a setpoint write would put in force; ``SetpointError`` if refused."""
        try:
            spec = self.spec(signal)
        except KeyError as exc:
            raise SetpointError(str(exc)) from None
        if not spec.writable:
            raise SetpointError(f"{self.code}.{signal} is read-only")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SetpointError(f"{self.code}.{signal} needs a number, not {value!r}")
        number = float(value)
        low = spec.minimum if spec.minimum is not None else -math.inf
        high = spec.maximum if spec.maximum is not None else math.inf
        if not math.isfinite(number) or not low <= number <= high:
            raise SetpointError(f"{self.code}.{signal}={value!r} outside [{low:g}, {high:g}]")
        return number

    @abstractmethod
    def advance(self, dt: float) -> None:
        """Advance the physics by ``dt`` (at most ``MAX_SUBSTEP_S``) simulated seconds."""

    @abstractmethod
    def measure(self) -> dict[str, Value]:
        """One reading of every signal, noise included."""


class Plant:
    """Every simulated unit, the simulated clock and the fault schedule."""

    def __init__(self, units: Iterable[UnitModel], faults: Iterable[Fault] = ()) -> None:
        self.units: dict[str, UnitModel] = {}
        for unit in units:
            if unit.code in self.units:
                raise ValueError(f"unit {unit.code} is simulated twice")
            self.units[unit.code] = unit
        self.t = 0.0
        self.faults: list[Fault] = []
        self.readings: dict[tuple[str, str], Reading] = {}
        for fault in faults:
            self.schedule(fault)
        self._measure()

    def unit(self, code: str) -> UnitModel:
        try:
            return self.units[code]
        except KeyError:
            raise KeyError(f"no simulated unit {code!r}") from None

    def schedule(self, fault: Fault, *, relative: bool = False) -> Fault:
        """Add a fault (``relative``: its start counts from now); returns it as scheduled."""
        try:
            unit = self.unit(fault.unit)
            spec = unit.spec(fault.signal) if fault.signal is not None else None
        except KeyError as exc:
            raise ValueError(f"fault {fault.describe()}: {exc.args[0]}") from None
        if spec is not None:
            if fault.kind == FaultKind.drift and spec.kind != SignalKind.number:
                raise ValueError(f"cannot drift {fault.unit}.{fault.signal}: not a number")
        if relative:
            fault = fault.shifted(self.t)
        self.faults.append(fault)
        return fault

    def active_faults(self) -> list[Fault]:
        return [f for f in self.faults if f.active(self.t)]

    def step(self, dt: float) -> Mapping[tuple[str, str], Reading]:
        """Advance ``dt`` simulated seconds and measure; returns the new readings."""
        if not dt > 0 or not math.isfinite(dt):
            raise ValueError(f"step must be a positive number of seconds, not {dt!r}")
        substeps = max(1, math.ceil(dt / MAX_SUBSTEP_S - 1e-9))
        sub = dt / substeps
        for index in range(substeps):
            now = self.t + index * sub
            for unit in self.units.values():
                unit.down = any(
                    f.kind == FaultKind.down and f.unit == unit.code and f.active(now)
                    for f in self.faults
                )
                unit.advance(sub)
        self.t += dt
        return self._measure()

    def write(self, unit: str, signal: str, value: object) -> float:
        """Download a setpoint to a unit (raises ``SetpointError`` when refused)."""
        try:
            target = self.unit(unit)
        except KeyError as exc:
            raise SetpointError(exc.args[0]) from None
        return target.write(signal, value)

    def _measure(self) -> dict[tuple[str, str], Reading]:
        active = self.active_faults()
        readings: dict[tuple[str, str], Reading] = {}
        for unit in self.units.values():
            unit.down = any(f.kind == FaultKind.down and f.unit == unit.code for f in active)
            values = unit.measure()
            for spec in unit.signals:
                readings[(unit.code, spec.name)] = self._apply(
                    unit, spec, values[spec.name], active
                )
        self.readings = readings
        return readings

    def _apply(
        self, unit: UnitModel, spec: SignalSpec, value: Value, active: list[Fault]
    ) -> Reading:
        for fault in active:
            if not fault.applies_to(unit.code, spec.name):
                continue
            if fault.kind == FaultKind.dropout:
                return Reading(None, good=False)
            if fault.kind == FaultKind.drift and isinstance(value, int | float):
                rate = fault.rate if fault.rate is not None else 0.05 * spec.band
                value = round(float(value) + rate * (self.t - fault.start_s) / 60.0, 4)
        return Reading(value)
