"""``config/telemetry.yaml`` and the simulator agree, use the plant's real codes, and load
with the MES's own validation (connector options included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mes.simulator.layout import build_plant
from mes.simulator.line_units import Cleanroom
from mes.simulator.registry import render, telemetry_document
from mes.telemetry.config import load_config

ROOT = Path(__file__).resolve().parents[3]
TELEMETRY = ROOT / "config" / "telemetry.yaml"


def walk(
    node: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    yield path, node
    for child in node.get("children") or []:
        yield from walk(child, (*path, node["code"]))


def plant_nodes() -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    doc = yaml.safe_load((ROOT / "config" / "plant.yaml").read_text(encoding="utf-8"))
    roots = doc["equipment"] if isinstance(doc.get("equipment"), list) else [doc["equipment"]]
    nodes: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
    for root in roots:
        for path, node in walk(root):
            nodes[node["code"]] = (path, node)
    return nodes


def test_the_committed_file_is_the_generated_one() -> None:
    assert yaml.safe_load(TELEMETRY.read_text(encoding="utf-8")) == telemetry_document()
    assert TELEMETRY.read_text(encoding="utf-8") == render()


def test_the_file_loads_with_the_mes_validation() -> None:
    config = load_config(TELEMETRY)
    plant = build_plant()
    assert len(config.tags) == sum(len(u.signals) for u in plant.units.values())
    assert [c.name for c in config.connectors] == ["sim-opcua", "sim-mqtt"]
    names = {t.tag for t in config.tags}
    # the work masters' auto-captured parameters are simulated signals
    work_masters = (ROOT / "config" / "work_masters.yaml").read_text(encoding="utf-8")
    wm_tags = {
        line.split("tag:", 1)[1].strip()
        for line in work_masters.splitlines()
        if line.strip().startswith("tag:")
    }
    assert {"CORE/ROP-TRAIN-1/R-101/melt_temp", "RDC/RDC-ROP-PILOT/PR-05L/melt_temp"} <= wm_tags
    assert wm_tags <= names


def test_every_simulated_unit_and_room_is_in_the_plant_model_where_its_tags_say() -> None:
    nodes = plant_nodes()
    for unit in build_plant().units.values():
        assert unit.code in nodes, unit.code
        path, node = nodes[unit.code]
        assert unit.site in path
        if isinstance(unit, Cleanroom):
            assert node["level"] == "room"
            assert node.get("is_dry_room", False) == unit.conditions.dry
            iso = unit.conditions.iso_class
            assert node.get("cleanroom_class") == (None if iso is None else f"ISO {iso}")
        else:
            assert node["level"] == "unit"
            assert unit.parent is not None
            assert path[-1] == unit.parent
            assert nodes[unit.parent][1]["level"] == "work_center"
