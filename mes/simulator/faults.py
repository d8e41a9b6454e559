"""Fault injection: what can go wrong on the simulated shop floor, and when.

The MES must prove it notices bad data, so the simulator can misbehave on purpose:

* ``drift`` - a measured value walks away from the truth at a steady rate (a fouled
  thermocouple, a pressure transmitter losing calibration) until it leaves its limits;
* ``dropout`` - a sensor (or a whole unit) stops delivering values: OPC UA reports the
  variable with a Bad status code, MQTT publishes nothing, Sparkplug sends null metrics;
* ``down`` - the machine stops: its state goes ``down``, counters and timers freeze, for a
  room the HVAC fails (pressure cascade collapses, particles rise).

Fault times are *simulated* seconds since the simulator started, so a fault schedule gives
the same data for the same seed whatever the speed factor; the runner converts a fault
injected at run time (``Simulator.inject``) to that clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class FaultKind(StrEnum):
    """The kinds of fault the simulator can inject."""

    drift = "drift"
    dropout = "dropout"
    down = "down"


class Fault(BaseModel):
    """One scheduled fault.

    ``signal`` None means the whole unit (every signal for a dropout); a drift always names
    one numeric signal. ``rate`` is the drift speed in the signal's unit per simulated
    minute (negative drifts downwards); None takes 5 % of the signal's operating band per
    minute. ``duration_s`` None lasts until the simulator stops.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    unit: str = Field(min_length=1, max_length=40)
    signal: str | None = Field(default=None, min_length=1, max_length=60)
    start_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rate: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == FaultKind.drift and self.signal is None:
            raise ValueError("a drift fault names its signal (unit.signal)")
        if self.kind == FaultKind.down and self.signal is not None:
            raise ValueError("a down fault applies to a whole unit, not to one signal")
        if self.rate is not None and self.kind != FaultKind.drift:
            raise ValueError("rate applies only to drift faults")
        if self.rate == 0:
            raise ValueError("a drift rate of 0 does nothing")
        return self

    @property
    def end_s(self) -> float | None:
        """Simulated time at which the fault clears (None: never)."""
        return None if self.duration_s is None else self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        """Whether the fault is in effect at simulated time ``t``."""
        end = self.end_s
        return self.start_s <= t and (end is None or t < end)

    def applies_to(self, unit: str, signal: str | None = None) -> bool:
        """Whether the fault concerns ``unit`` (and ``signal``, when the fault names one)."""
        return self.unit == unit and (
            self.signal is None or signal is None or signal == self.signal
        )

    def shifted(self, offset_s: float) -> Fault:
        """The same fault starting ``offset_s`` later (run-time injection)."""
        return self.model_copy(update={"start_s": self.start_s + offset_s})

    def describe(self) -> str:
        """The fault in the command-line syntax (round-trips through ``parse_fault``)."""
        target = self.unit if self.signal is None else f"{self.unit}.{self.signal}"
        parts = [f"{self.kind.value}:{target}", f"start={self.start_s:g}"]
        if self.duration_s is not None:
            parts.append(f"duration={self.duration_s:g}")
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}")
        return ",".join(parts)


FAULT_SYNTAX = "KIND:UNIT[.SIGNAL][,start=S][,duration=S][,rate=R]"
"""The command-line form of a fault, e.g. ``drift:R-101.melt_temp,start=600,rate=2``."""

_KEYS = {"start": "start_s", "duration": "duration_s", "rate": "rate"}


def parse_fault(text: str) -> Fault:
    """Parse ``KIND:UNIT[.SIGNAL][,key=value...]``; raises ``ValueError`` with the reason.

    Examples: ``down:IM-501,start=120,duration=300``, ``dropout:RM-PKG-01.rh,start=60``,
    ``drift:R-101.melt_temp,start=0,rate=1.5`` (degC per simulated minute).
    """
    head, *options = (part.strip() for part in text.strip().split(","))
    kind, sep, target = head.partition(":")
    if not sep or not target:
        raise ValueError(f"fault {text!r}: expected {FAULT_SYNTAX}")
    unit, _, signal = target.partition(".")
    data: dict[str, object] = {"kind": kind.strip(), "unit": unit, "signal": signal or None}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key.strip() not in _KEYS:
            raise ValueError(f"fault {text!r}: unknown option {option!r} (start, duration, rate)")
        try:
            data[_KEYS[key.strip()]] = float(value)
        except ValueError:
            raise ValueError(f"fault {text!r}: {key.strip()} must be a number") from None
    try:
        return Fault.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise ValueError(f"fault {text!r}: {reason}") from None
