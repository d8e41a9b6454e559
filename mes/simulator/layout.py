"""Which units of ``config/plant.yaml`` the simulator plays, and how their signals are named.

Every simulated unit uses its real code, site and work center, so a tag is the plant path
``site/work-center/unit/signal`` (``site/room/signal`` for a room), exactly the convention of
``config/work_masters.yaml`` (``CORE/ROP-TRAIN-1/R-101/melt_temp``). The same names give the
transport addresses, so nothing needs a lookup table:

* OPC UA: ``ns=2;s=<unit>.<signal>`` under namespace ``urn:bmb:simulator``;
* MQTT JSON: one message per room and sample period on ``bmb/<site>/<room>/env``;
* Sparkplug B: group ``<site>``, edge node ``<work center>``, device ``<unit>``, metric
  ``<signal>``, so the connector's ``{group}/{edge_node}/{device}/{metric}`` is the tag.

A test checks these codes against ``config/plant.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable

from mes.simulator.batch_units import EtoSterilizer, ReactorRecipe, RopReactor
from mes.simulator.dynamics import Plant, UnitModel
from mes.simulator.faults import Fault
from mes.simulator.line_units import Cleanroom, Extruder, MouldingMachine, RoomConditions

NAMESPACE_URI = "urn:bmb:simulator"
NAMESPACE_INDEX = 2
"""The first namespace a fresh asyncua server registers after its own (ns=1)."""
OPCUA_PATH = "/bmb/simulator"
OPCUA_PORT = 4840
MQTT_TOPIC_PREFIX = "bmb"
ENV_SUFFIX = "env"

ROOMS: tuple[tuple[str, str, RoomConditions, str], ...] = (
    ("RDC", "RM-RDC-PP01", RoomConditions(None, dry=True, rh_sp=2.5), "Pilot polymerization suite"),
    ("RDC", "RM-RDC-PX01", RoomConditions(8), "Pilot extrusion bay"),
    ("CORE", "RM-POLY-01", RoomConditions(None), "Polymerization hall"),
    ("CORE", "RM-MON-DS", RoomConditions(None, dry=True, temp_sp=20.0, rh_sp=2.5),
     "Monomer dry store"),
    ("CORE", "RM-FIB-01", RoomConditions(8), "Fibre extrusion hall"),
    ("CORE", "RM-BRD-01", RoomConditions(8), "Braiding room"),
    ("CORE", "RM-COAT-01", RoomConditions(8, dp_sp=12.0), "Coating room"),
    ("CORE", "RM-NDL-01", RoomConditions(7, dp_sp=15.0), "Needle attachment cleanroom"),
    ("CORE", "RM-MLD-01", RoomConditions(8), "Moulding room"),
    ("CORE", "RM-PKG-01", RoomConditions(7, dry=True, rh_sp=2.5, dp_sp=15.0),
     "Dry packaging cleanroom"),
)  # fmt: skip
"""(site, room code, design conditions, name): every classified or dry room of the plant, and
the polymerization hall (so ROP batch records have room data too)."""


def build_units(seed: int) -> list[UnitModel]:
    """One model per simulated unit and room, seeded from ``seed``."""
    units: list[UnitModel] = [
        RopReactor("R-101", "CORE", "ROP-TRAIN-1", seed, ReactorRecipe(torque_max_nm=450.0),
                   name="ROP reactor R-101, 100 L"),
        RopReactor("R-102", "CORE", "ROP-TRAIN-1", seed, ReactorRecipe(torque_max_nm=850.0),
                   name="ROP reactor R-102, 250 L"),
        RopReactor("PR-05L", "RDC", "RDC-ROP-PILOT", seed,
                   ReactorRecipe(torque_max_nm=40.0, charge_s=900.0, hold_s=3 * 3600.0,
                                 devol_s=3600.0, discharge_s=900.0),
                   name="Pilot ROP reactor 5 L"),
        Extruder("EX-201", "CORE", "FIB-LINE-1", seed, name="Melt-spinning extruder EX-201"),
        Extruder("EX-202", "CORE", "FIB-LINE-2", seed, zone_sp=(200.0, 215.0, 225.0, 230.0),
                 name="Melt-spinning extruder EX-202"),
        Extruder("PEX-01", "RDC", "RDC-EXT-PILOT", seed, cold_start=True, screw_rpm=25.0,
                 take_up_m_min=400.0, diameter_um=30.0, name="Pilot extruder 12 mm"),
        EtoSterilizer("S-1", "CORE", "ETO-CELL-1", seed, name="EtO sterilizer S-1 (10 m3)"),
        MouldingMachine("IM-501", "CORE", "IM-CELL-1", seed, cycle_s=32.0,
                        name="Injection moulding machine IM-501"),
        MouldingMachine("IM-502", "CORE", "IM-CELL-1", seed, cycle_s=28.0, melt_sp=220.0,
                        pressure_bar=1050.0, name="Injection moulding machine IM-502"),
    ]  # fmt: skip
    units += [Cleanroom(code, site, seed, cond, name) for site, code, cond, name in ROOMS]
    return units


def build_plant(seed: int = 42, faults: Iterable[Fault] = ()) -> Plant:
    """The whole simulated plant at simulated time 0."""
    return Plant(build_units(seed), faults)


def node_id(unit: str, signal: str, namespace_index: int = NAMESPACE_INDEX) -> str:
    """The OPC UA NodeId string of a signal, e.g. ``ns=2;s=R-101.melt_temp``."""
    return f"ns={namespace_index};s={unit}.{signal}"


def opcua_endpoint(host: str = "127.0.0.1", port: int = OPCUA_PORT) -> str:
    return f"opc.tcp://{host}:{port}{OPCUA_PATH}"


def env_topic(unit: UnitModel, prefix: str = MQTT_TOPIC_PREFIX) -> str:
    """The MQTT topic of a room's environment messages, e.g. ``bmb/CORE/RM-PKG-01/env``."""
    return f"{prefix}/{unit.site}/{unit.code}/{ENV_SUFFIX}"


def sparkplug_ids(unit: UnitModel) -> tuple[str, str, str]:
    """(group, edge node, device) of a Sparkplug unit: site, work center, unit code."""
    if unit.parent is None:
        raise ValueError(f"{unit.code} is a room; rooms publish JSON")
    return unit.site, unit.parent, unit.code
