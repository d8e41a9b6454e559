"""The process models: deterministic for a seed, physically plausible, inside the demo plant's
limits in normal operation, and every fault does what it says.

Everything runs in simulated time (no clock, no I/O): a day of plant operation takes a few
seconds, and the assertions are about values, never about how long something took.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator

import pytest

from mes.simulator.dynamics import Plant, Reading, SetpointError, SignalKind
from mes.simulator.faults import Fault, FaultKind, parse_fault
from mes.simulator.layout import build_plant
from mes.simulator.line_units import ISO_PARTICLE_LIMITS, Cleanroom
from mes.simulator.registry import room_limits

Trace = dict[tuple[str, str], list[Reading]]

HOURS = 24
STEP_S = 60.0


def run(plant: Plant, seconds: float, step: float = STEP_S) -> Trace:
    trace: Trace = defaultdict(list)
    for _ in range(round(seconds / step)):
        for key, reading in plant.step(step).items():
            trace[key].append(reading)
    return trace


def values(trace: Trace, unit: str, signal: str) -> list[float]:
    return [float(r.value) for r in trace[(unit, signal)] if isinstance(r.value, int | float)]


def phases(trace: Trace, unit: str, signal: str, phase: str) -> Iterator[float]:
    """Values of ``signal`` while ``unit``'s ``phase`` signal is ``phase``."""
    for state, reading in zip(trace[(unit, "phase")], trace[(unit, signal)], strict=True):
        if state.value == phase and isinstance(reading.value, int | float):
            yield float(reading.value)


@pytest.fixture(scope="module")
def day() -> tuple[Plant, Trace]:
    """24 simulated hours of the fault-free plant (seed 7)."""
    plant = build_plant(7)
    return plant, run(plant, HOURS * 3600)


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, second, other = build_plant(3), build_plant(3), build_plant(4)
    for _ in range(300):
        a, b, c = first.step(30.0), second.step(30.0), other.step(30.0)
        assert a == b
    assert a != c


def test_every_reading_stays_within_physical_bounds(day: tuple[Plant, Trace]) -> None:
    plant, trace = day
    for unit in plant.units.values():
        for spec in unit.signals:
            readings = trace[(unit.code, spec.name)]
            assert len(readings) == HOURS * 3600 / STEP_S
            assert all(r.good and r.value is not None for r in readings), spec.name
            if spec.kind != SignalKind.number:
                assert all(isinstance(r.value, str) for r in readings)
                continue
            numbers = values(trace, unit.code, spec.name)
            assert all(math.isfinite(v) for v in numbers)
            low = spec.minimum if spec.minimum is not None else -math.inf
            high = spec.maximum if spec.maximum is not None else math.inf
            assert low <= min(numbers), (unit.code, spec.name)
            assert max(numbers) <= high, (unit.code, spec.name)
            if spec.integer:
                assert all(isinstance(r.value, int) for r in readings)


def test_rop_batches_follow_the_recipe_within_limits(day: tuple[Plant, Trace]) -> None:
    _, trace = day
    for reactor in ("R-101", "R-102", "PR-05L"):
        seen = {r.value for r in trace[(reactor, "phase")]}
        assert seen == {"idle", "charge", "heat", "hold", "devol", "discharge"}
        hold = list(phases(trace, reactor, "melt_temp", "hold"))
        assert 140 <= min(hold)
        assert max(hold) <= 180
        assert max(hold) > 155  # the ramp really reached the 160 degC setpoint
        devol = list(phases(trace, reactor, "pressure", "devol"))
        assert min(devol) < 5.0  # devolatilization reaches a few mbar
        assert max(values(trace, reactor, "pressure")) < 1100
        time_at_temp = list(phases(trace, reactor, "time_at_temp", "discharge"))
        assert 2 <= max(time_at_temp) <= 10
        assert max(values(trace, reactor, "conversion")) > 90
        assert max(values(trace, reactor, "batch_no")) >= 2


def test_agitator_torque_rises_with_conversion(day: tuple[Plant, Trace]) -> None:
    _, trace = day
    pairs = [
        (float(c.value), float(t.value))  # type: ignore[arg-type]
        for p, c, t in zip(
            trace[("R-101", "phase")],
            trace[("R-101", "conversion")],
            trace[("R-101", "agitator_torque")],
            strict=True,
        )
        if p.value == "hold"
    ]
    low = [t for c, t in pairs if c < 40]
    high = [t for c, t in pairs if c > 90]
    assert low
    assert high
    assert max(low) < min(high)


def test_eto_cycle_phases_and_exposure_conditions(day: tuple[Plant, Trace]) -> None:
    _, trace = day
    seen = [r.value for r in trace[("S-1", "phase")]]
    order = ["preconditioning", "vacuum", "humidification", "gas_injection", "exposure"]
    order += ["evacuation", "aeration", "idle"]
    first = seen.index("preconditioning")
    compressed = [p for i, p in enumerate(seen[first:]) if i == 0 or p != seen[first + i - 1]]
    assert compressed[: len(order)] == order
    exposure = {s: list(phases(trace, "S-1", s, "exposure")) for s in ("eo_concentration",)}
    exposure["chamber_temp"] = list(phases(trace, "S-1", "chamber_temp", "exposure"))
    exposure["chamber_rh"] = list(phases(trace, "S-1", "chamber_rh", "exposure"))
    assert 400 <= min(exposure["eo_concentration"])
    assert max(exposure["eo_concentration"]) <= 650
    assert 37 <= min(exposure["chamber_temp"][10:])
    assert max(exposure["chamber_temp"]) <= 50
    assert 30 <= min(exposure["chamber_rh"])
    assert max(exposure["chamber_rh"]) <= 80
    vacuum = list(phases(trace, "S-1", "chamber_pressure", "vacuum"))
    assert min(vacuum) < 100
    assert max(phases(trace, "S-1", "eo_concentration", "aeration")) < 100
    assert max(values(trace, "S-1", "exposure_time")) == pytest.approx(3.0, abs=0.02)


def test_extruder_zones_settle_on_their_setpoints_after_a_cold_start(
    day: tuple[Plant, Trace],
) -> None:
    plant, trace = day
    pilot = plant.unit("PEX-01")
    states = [r.value for r in trace[("PEX-01", "state")]]
    assert states[0] == "heating"
    assert states[-1] == "running"
    for zone in range(1, 5):
        temps = values(trace, "PEX-01", f"zone{zone}_temp")
        sp = pilot.setpoints[f"zone{zone}_sp"]
        assert temps[0] < 100
        assert all(abs(t - sp) < 2.0 for t in temps[-600:])
        assert max(temps) < sp + 10  # PI settling without a wild overshoot
    running = [
        float(d.value)  # type: ignore[arg-type]
        for s, d in zip(
            trace[("EX-201", "state")], trace[("EX-201", "fibre_diameter")], strict=True
        )
        if s.value == "running"
    ]
    assert 22 < min(running)
    assert max(running) < 28
    assert 50 < min(values(trace, "EX-201", "melt_pressure")[10:]) < 200


def test_moulding_counters_only_count_up(day: tuple[Plant, Trace]) -> None:
    _, trace = day
    for machine in ("IM-501", "IM-502"):
        good = values(trace, machine, "good_count")
        rejects = values(trace, machine, "reject_count")
        assert good == sorted(good)
        assert rejects == sorted(rejects)
        assert good[-1] > 2000
        assert 0 < rejects[-1] < 0.1 * good[-1]
        assert {r.value for r in trace[(machine, "state")]} <= {"running", "idle"}


def test_cleanrooms_match_their_class_and_dryness(day: tuple[Plant, Trace]) -> None:
    plant, trace = day
    rooms = [u for u in plant.units.values() if isinstance(u, Cleanroom)]
    assert len(rooms) == 10
    for unit in rooms:
        cond = unit.conditions
        rh = values(trace, unit.code, "rh")
        if cond.dry:
            assert max(rh) < 5
            assert max(values(trace, unit.code, "dew_point")) < -25
        else:
            assert 35 <= min(rh)
            assert max(rh) <= 45
        if cond.iso_class is not None:
            lim_05, lim_5 = ISO_PARTICLE_LIMITS[cond.iso_class]
            assert max(values(trace, unit.code, "particles_0_5um")) < 0.7 * lim_05
            assert max(values(trace, unit.code, "particles_5um")) < 0.7 * lim_5
        for spec in unit.signals:  # normal operation raises no alarm, not even an alert
            limits = room_limits(unit, spec)
            numbers = values(trace, unit.code, spec.name)
            assert min(numbers) > limits.get("alert_low", -math.inf), (unit.code, spec.name)
            assert max(numbers) < limits.get("alert_high", math.inf), (unit.code, spec.name)


def test_drift_walks_a_value_out_of_its_limits_and_stops_with_the_fault() -> None:
    fault = Fault(kind=FaultKind.drift, unit="EX-201", signal="zone3_temp", duration_s=1800)
    plant, clean = build_plant(5, [fault]), build_plant(5)
    trace, reference = run(plant, 3600), run(clean, 3600)
    drifted = values(trace, "EX-201", "zone3_temp")
    truth = values(reference, "EX-201", "zone3_temp")
    offsets = [d - t for d, t in zip(drifted, truth, strict=True)]
    # readings at t = 60, 120, ... s: the walk is 5 % of the 190-250 band, 3 degC per minute
    assert offsets[:29] == pytest.approx([3.0 * minute for minute in range(1, 30)], abs=1e-3)
    assert max(drifted) > 250  # beyond the action limit
    assert all(o == pytest.approx(0.0) for o in offsets[29:])  # over when the fault ends
    assert values(trace, "EX-201", "zone2_temp") == values(reference, "EX-201", "zone2_temp")


def test_drift_rate_and_direction_are_configurable() -> None:
    plant = build_plant(5, [parse_fault("drift:RM-PKG-01.diff_pressure,start=600,rate=-0.5")])
    clean = build_plant(5)
    trace, reference = run(plant, 1800), run(clean, 1800)
    diff = [
        a - b
        for a, b in zip(
            values(trace, "RM-PKG-01", "diff_pressure"),
            values(reference, "RM-PKG-01", "diff_pressure"),
            strict=True,
        )
    ]
    assert all(d == pytest.approx(0.0) for d in diff[:10])
    assert diff[-1] == pytest.approx(-0.5 * 20, abs=1e-3)  # 20 simulated minutes at -0.5 Pa/min
    assert min(values(trace, "RM-PKG-01", "diff_pressure")) < 10


def test_dropout_delivers_bad_readings_then_recovers() -> None:
    plant = build_plant(5, [parse_fault("dropout:R-101.melt_temp,start=300,duration=600")])
    trace = run(plant, 1800)
    melt = trace[("R-101", "melt_temp")]
    # readings at t = 60, 120, ... s; the fault covers [300, 900)
    assert all(r.good for r in melt[:4])
    assert all(r == Reading(None, good=False) for r in melt[4:14])
    assert all(r.good and r.value is not None for r in melt[14:])
    assert all(r.good for r in trace[("R-101", "jacket_temp")])

    whole = build_plant(5, [Fault(kind=FaultKind.dropout, unit="RM-NDL-01", duration_s=120)])
    first = whole.step(60.0)
    assert all(not r.good for (unit, _), r in first.items() if unit == "RM-NDL-01")
    assert all(r.good for (unit, _), r in first.items() if unit != "RM-NDL-01")


def test_down_stops_the_machine_and_its_counters() -> None:
    plant = build_plant(5, [parse_fault("down:IM-501,start=600,duration=900")])
    trace = run(plant, 3600)
    state = [r.value for r in trace[("IM-501", "state")]]
    good = values(trace, "IM-501", "good_count")
    rejects = values(trace, "IM-501", "reject_count")
    assert state[:9] == ["running"] * 9
    assert state[10:24] == ["down"] * 14
    assert len(set(good[10:24])) == 1
    assert len(set(rejects[10:24])) == 1
    assert values(trace, "IM-501", "injection_pressure")[12] == 0.0
    assert "running" in state[26:]
    assert good[-1] > good[24]
    assert values(trace, "IM-502", "good_count")[23] > values(trace, "IM-502", "good_count")[10]


def test_down_halts_the_sterilizer_cycle_and_the_hvac_of_a_room() -> None:
    plant = build_plant(5, [Fault(kind=FaultKind.down, unit="S-1", start_s=3600, duration_s=3600)])
    trace = run(plant, 3 * 3600)
    phase = [r.value for r in trace[("S-1", "phase")]]
    assert set(phase[61:119]) == {"fault"}
    assert values(trace, "S-1", "phase_no")[70] == -1
    assert phase[121] != "fault"

    room = build_plant(5, [parse_fault("down:RM-PKG-01,start=0")])
    trace = run(room, 3600)
    assert values(trace, "RM-PKG-01", "diff_pressure")[-1] < 1
    assert values(trace, "RM-PKG-01", "particles_0_5um")[-1] > ISO_PARTICLE_LIMITS[7][0]
    assert values(trace, "RM-PKG-01", "dew_point")[-1] > -20


def test_a_downloaded_setpoint_is_followed_and_a_bad_one_refused() -> None:
    plant = build_plant(5)
    with pytest.raises(SetpointError, match="outside"):
        plant.write("EX-201", "zone3_sp", 500)
    with pytest.raises(SetpointError, match="read-only"):
        plant.write("EX-201", "zone3_temp", 230)
    with pytest.raises(SetpointError, match="number"):
        plant.write("EX-201", "zone3_sp", "230")
    assert plant.write("EX-201", "zone3_sp", 235) == 235.0
    trace = run(plant, 3 * 3600)
    assert values(trace, "EX-201", "zone3_sp")[-1] == 235.0
    assert abs(values(trace, "EX-201", "zone3_temp")[-1] - 235.0) < 1.5


def test_faults_validate_and_round_trip_through_their_text_form() -> None:
    fault = parse_fault("drift:R-101.melt_temp,start=60,duration=600,rate=2.5")
    assert fault == Fault(
        kind=FaultKind.drift, unit="R-101", signal="melt_temp", start_s=60, duration_s=600, rate=2.5
    )
    assert parse_fault(fault.describe()) == fault
    assert fault.active(60)
    assert fault.active(659)
    assert not fault.active(660)
    for bad in ("drift:R-101", "down:IM-501.state", "dropout:R-101,rate=1", "melt:R-101", "x"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)
    plant = build_plant(1)
    with pytest.raises(ValueError, match="no simulated unit"):
        plant.schedule(parse_fault("down:R-999"))
    with pytest.raises(ValueError, match="not a number"):
        plant.schedule(parse_fault("drift:R-101.phase"))
    plant.step(100.0)
    scheduled = plant.schedule(parse_fault("down:IM-501,start=10"), relative=True)
    assert scheduled.start_s == pytest.approx(110.0)
