"""The telemetry configuration that matches the simulator (``config/telemetry.yaml``).

The tag registry and the connector options are derived from the simulator's own layout,
so the file cannot disagree with what the simulator serves: a test regenerates the document
and compares it with the committed file. Regenerate after changing the layout with::

    python -m mes.simulator.registry > config/telemetry.yaml
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from mes.simulator.dynamics import Plant, SignalSpec, UnitModel
from mes.simulator.layout import (
    ENV_SUFFIX,
    MQTT_TOPIC_PREFIX,
    OPCUA_PORT,
    build_plant,
    node_id,
    opcua_endpoint,
)
from mes.simulator.line_units import Cleanroom, MouldingMachine

HEADER = """\
# Telemetry tag registry and connectors of the demo plant, generated from the plant simulator
# (mes/simulator/layout.py) by `python -m mes.simulator.registry > config/telemetry.yaml`;
# tests/mes/simulator checks that this file and the simulator agree.
#
# Tags are plant paths: site/work-center/unit/signal for equipment, site/room/signal for rooms.
# OPC UA (reactors, extruders, EtO sterilizer): ns=2;s=<unit>.<signal> on the simulator's
# endpoint. MQTT: rooms as JSON on bmb/<site>/<room>/env, moulding machines as Sparkplug B
# (group = site, edge node = work center, device = unit). MQTT 3.1.1 so the demo's embedded
# amqtt broker works too. Room conditions carry alert/action limits (DOMAIN 5 cleanroom, ISO
# class); moulding machines report their state and shot counters for unit status and OEE.
"""


ROOM_ALARM_DELAY_S = 60.0
"""A room excursion must last a minute (source time) before it is an alarm."""

MOULDING_STATES = {"running": "running", "idle": "idle", "down": "down"}


def room_limits(unit: Cleanroom, spec: SignalSpec) -> dict[str, Any]:
    """Alert and action limits of a room condition (DOMAIN 5 ``cleanroom``, the ISO class of
    the room, ``room_dew_point`` for dry rooms), with delay and hysteresis against chatter.

    Action limits are the signal's operating band; alert limits sit inside it (particles at
    70 % of the class limit). Normal operation stays inside the alert limits, so alarms in the
    demo come from faults (drift, HVAC down), not from noise.
    """
    low, high = spec.low, spec.high
    limits: dict[str, Any] = {}
    if spec.name == "temperature":
        limits = {"alert_low": 19.0, "alert_high": 23.0, "hysteresis": 0.2}
    elif spec.name == "rh" and unit.conditions.dry:
        limits = {"alert_high": 6.0, "hysteresis": 0.5}
    elif spec.name == "rh":
        limits = {"alert_low": 33.0, "alert_high": 55.0, "hysteresis": 1.0}
    elif spec.name == "diff_pressure":
        limits, high = {"alert_low": 10.5, "hysteresis": 0.3}, None
    elif spec.name.startswith("particles_") and high is not None:
        limits, low = {"alert_high": round(0.7 * high), "hysteresis": round(0.02 * high)}, None
    elif spec.name == "dew_point":
        limits, low = {"alert_high": -23.0, "hysteresis": 0.5}, None
    if low is not None:
        limits["action_low"] = low
    if high is not None:
        limits["action_high"] = high
    ordered = ("alert_low", "alert_high", "action_low", "action_high", "hysteresis")
    return {key: float(limits[key]) for key in ordered if key in limits} | {
        "alarm_delay_s": ROOM_ALARM_DELAY_S
    }


def unit_role(unit: UnitModel, spec: SignalSpec) -> dict[str, Any]:
    """OEE and status roles of the moulding machines' state and shot counters.

    Only the moulding machines report their state to the MES: no work master runs on them, so
    their status is theirs alone. The batch units (reactors, extruders, sterilizer) cycle on
    their own in the simulator; letting their state drive the unit status would mark them
    ``running`` and block the MES from starting its operations on them (a start needs idle).
    """
    if not isinstance(unit, MouldingMachine):
        return {}
    if spec.name == "state":
        return {"role": "equipment_state", "states": dict(MOULDING_STATES)}
    if spec.name == "good_count":
        return {"role": "good_count", "ideal_cycle_s": unit.cycle_s}
    if spec.name == "reject_count":
        return {"role": "reject_count"}
    return {}


def tag_entries(plant: Plant) -> list[dict[str, Any]]:
    """One registry entry per simulated signal, in layout order."""
    entries: list[dict[str, Any]] = []
    for unit in plant.units.values():
        for spec in unit.signals:
            entry: dict[str, Any] = {"tag": unit.tag(spec.name), "kind": spec.kind.value}
            if spec.uom is not None:
                entry["uom"] = spec.uom
            entry["room" if unit.is_room else "equipment"] = unit.code
            entry["description"] = spec.description
            if isinstance(unit, Cleanroom):
                entry |= room_limits(unit, spec)
            entry |= unit_role(unit, spec)
            entries.append(entry)
    return entries


def opcua_options(plant: Plant, host: str = "127.0.0.1", port: int = OPCUA_PORT) -> dict[str, Any]:
    """Options of the OPC UA connector: every OPC UA signal monitored, setpoints writable."""
    nodes: list[dict[str, Any]] = []
    setpoints: list[dict[str, Any]] = []
    for unit in plant.units.values():
        if unit.transport != "opcua":
            continue
        for spec in unit.signals:
            nid = node_id(unit.code, spec.name)
            nodes.append({"node_id": nid, "tag": unit.tag(spec.name)})
            if spec.writable:
                setpoints.append(
                    {"tag": unit.tag(spec.name), "node_id": nid, "variant_type": "Double"}
                )
    return {"endpoint": opcua_endpoint(host, port), "nodes": nodes, "setpoints": setpoints}


def mqtt_options(
    host: str = "127.0.0.1",
    port: int = 1883,
    protocol: str = "3.1.1",
    client_id: str = "mes-simulator-mqtt",
    topic_prefix: str = MQTT_TOPIC_PREFIX,
) -> dict[str, Any]:
    """Options of the MQTT connector: room JSON and Sparkplug B subscriptions."""
    return {
        "host": host,
        "port": port,
        "protocol": protocol,
        "client_id": client_id,
        "subscriptions": [
            {
                "filter": f"{topic_prefix}/+/+/{ENV_SUFFIX}",
                "codec": "json",
                "samples_field": "samples",
                "tag_field": "signal",
                "tag": "{1}/{2}/{field}",
                "value_field": "value",
                "timestamp_field": "ts",
            },
            {
                "filter": "spBv1.0/+/#",
                "codec": "sparkplug",
                "tag": "{group}/{edge_node}/{device}/{metric}",
                "node_tag": "{group}/{edge_node}/{metric}",
            },
        ],
    }


def telemetry_document(seed: int = 42) -> dict[str, Any]:
    """The whole ``config/telemetry.yaml`` document for the simulator's defaults."""
    plant = build_plant(seed)
    return {
        "tags": tag_entries(plant),
        "connectors": [
            {"name": "sim-opcua", "kind": "opcua", "options": opcua_options(plant)},
            {"name": "sim-mqtt", "kind": "mqtt", "options": mqtt_options()},
        ],
    }


def render() -> str:
    """The file's text: header comment plus the YAML document."""
    body = yaml.safe_dump(
        telemetry_document(),
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(render())
