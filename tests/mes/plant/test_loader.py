"""``mes plant load`` (mes/plant/loader.py): the shipped plant file validates and loads, loads
are idempotent and audited (AT-1, AT-2), invalid files name their YAML paths, and a load is
all or nothing."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func
from sqlmodel import col, select

from mes.audit import service as audit_service
from mes.context import AppContext
from mes.models import AuditEntry, Equipment, EquipmentClass, MaterialDefinition
from mes.plant.loader import LoadReport, PlantFileError, load_plant_file, parse_plant_file
from mes.principal import system_principal

SHIPPED = Path(__file__).resolve().parents[3] / "config" / "plant.yaml"
PRINCIPAL = system_principal("test")

Json = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


def walk(nodes: list[Json]) -> list[Json]:
    out: list[Json] = []
    for node in nodes:
        out.append(node)
        out += walk(node.get("children", []))
    return out


def read_yaml(path: Path) -> Json:
    data: Json = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def write_yaml(path: Path, data: Json) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def expected_counts(data: Json) -> dict[str, int]:
    """Records per kind (the load report's kinds, which are also the audited entity types)."""
    counts = {
        "equipment_class": len(data.get("equipment_classes", [])),
        "material": len(data.get("materials", [])),
        "equipment": len(walk(data.get("equipment", []))),
    }
    if data.get("changeovers"):
        counts["changeover_rule"] = len(data["changeovers"])
    if data.get("calendars"):
        counts["equipment_calendar"] = sum(len(c["units"]) for c in data["calendars"])
    return counts


async def db_state(ctx: AppContext) -> Json:
    """Everything a plant load can touch, for all-or-nothing comparisons."""
    async with ctx.db.sessionmaker() as session:
        equipment = {
            row.code: (row.name, row.version)
            for row in (await session.execute(select(Equipment))).scalars()
        }
        classes = {
            row.code: (row.name, row.version)
            for row in (await session.execute(select(EquipmentClass))).scalars()
        }
        materials = {
            row.code: (row.name, row.version)
            for row in (await session.execute(select(MaterialDefinition))).scalars()
        }
        audit = (await session.execute(select(func.count()).select_from(AuditEntry))).scalar_one()
    return {"equipment": equipment, "classes": classes, "materials": materials, "audit": audit}


async def audit_entries(ctx: AppContext, **where: str) -> list[AuditEntry]:
    async with ctx.db.sessionmaker() as session:
        stmt = select(AuditEntry).order_by(col(AuditEntry.seq))
        for key, value in where.items():
            stmt = stmt.where(getattr(AuditEntry, key) == value)
        return list((await session.execute(stmt)).scalars())


def small_plant() -> Json:
    """ENT > {S1 > A1 > {RM1, WC1 > U1}, S2 > A2 > RM2} with one class and one material."""
    return {
        "equipment_classes": [{"code": "REACTOR", "name": "Reactor"}],
        "materials": [
            {
                "code": "LLA",
                "name": "L-lactide",
                "kind": "monomer",
                "uom": "kg",
                "moisture_sensitive": True,
                "max_exposure_min": 30,
                "gtin": "00812345000016",
            }
        ],
        "equipment": [
            {
                "code": "ENT",
                "name": "Enterprise",
                "level": "enterprise",
                "children": [
                    {
                        "code": "S1",
                        "name": "Site 1",
                        "level": "site",
                        "children": [
                            {
                                "code": "A1",
                                "name": "Area 1",
                                "level": "area",
                                "children": [
                                    {
                                        "code": "RM1",
                                        "name": "Room 1",
                                        "level": "room",
                                        "cleanroom_class": "ISO 7",
                                    },
                                    {
                                        "code": "WC1",
                                        "name": "Cell 1",
                                        "level": "work_center",
                                        "kind": "process_cell",
                                        "children": [
                                            {
                                                "code": "U1",
                                                "name": "Unit 1",
                                                "level": "unit",
                                                "kind": "unit",
                                                "equipment_class": "REACTOR",
                                                "room": "RM1",
                                            }
                                        ],
                                    },
                                ],
                            }
                        ],
                    },
                    {
                        "code": "S2",
                        "name": "Site 2",
                        "level": "site",
                        "children": [
                            {
                                "code": "A2",
                                "name": "Area 2",
                                "level": "area",
                                "children": [{"code": "RM2", "name": "Room 2", "level": "room"}],
                            }
                        ],
                    },
                ],
            }
        ],
    }


def s1(data: Json) -> Json:
    node: Json = data["equipment"][0]["children"][0]
    return node


def a1(data: Json) -> Json:
    node: Json = s1(data)["children"][0]
    return node


def u1(data: Json) -> Json:
    node: Json = a1(data)["children"][1]["children"][0]
    return node


U1_PATH = "equipment[0].children[0].children[0].children[1].children[0]"


# --- the shipped file ----------------------------------------------------------------------------


def test_shipped_plant_file_parses() -> None:
    """The plant YAML shipped in config/ validates (ARCHITECTURE 4)."""
    raw = read_yaml(SHIPPED)
    spec = parse_plant_file(SHIPPED)
    assert [c.code for c in spec.equipment_classes] == [c["code"] for c in raw["equipment_classes"]]
    assert [m.code for m in spec.materials] == [m["code"] for m in raw["materials"]]
    assert len(spec.equipment) == len(raw["equipment"])
    assert expected_counts(raw)["equipment"] > 0


async def test_load_creates_every_record_with_an_audit_entry(ctx: AppContext) -> None:
    """Every class, material and equipment node of the file is created, each audited (AT-1)."""
    raw = read_yaml(SHIPPED)
    counts = expected_counts(raw)
    report = await load_plant_file(ctx, PRINCIPAL, SHIPPED)
    assert isinstance(report, LoadReport)
    assert report.created == counts
    assert report.updated == {}
    assert report.unchanged == {}

    state = await db_state(ctx)
    nodes = walk(raw["equipment"])
    assert set(state["equipment"]) == {n["code"] for n in nodes}
    assert set(state["classes"]) == {c["code"] for c in raw["equipment_classes"]}
    assert set(state["materials"]) == {m["code"] for m in raw["materials"]}

    created = await audit_entries(ctx, action="create")
    by_type = Counter(e.entity_type for e in created)
    assert by_type == Counter(counts)
    audited_equipment = {e.entity_id for e in created if e.entity_type == "equipment"}
    assert audited_equipment == set(state["equipment"])
    assert all(e.username == "system:test" for e in created)
    assert all("plant.yaml" in e.reason for e in created)

    qualified = {n["code"] for n in nodes if n.get("qualified_until") is not None}
    imports = await audit_entries(ctx, action="qualify_import")
    assert {e.entity_id for e in imports} == qualified
    for code in qualified:
        assert state["equipment"][code][1] == 2, code

    async with ctx.db.sessionmaker() as session:
        chain = await audit_service.verify_chain(session)
    assert chain.ok
    assert chain.checked == state["audit"]


async def test_loaded_hierarchy_matches_the_file(ctx: AppContext) -> None:
    """Parents, levels and rooms in the database are the ones in the YAML tree."""
    raw = read_yaml(SHIPPED)
    await load_plant_file(ctx, PRINCIPAL, SHIPPED)
    expected: dict[str, tuple[str, str | None, str | None]] = {}

    def visit(node: Json, parent: str | None) -> None:
        expected[node["code"]] = (node["level"], parent, node.get("room"))
        for child in node.get("children", []):
            visit(child, node["code"])

    for root in raw["equipment"]:
        visit(root, None)
    async with ctx.db.sessionmaker() as session:
        rows = list((await session.execute(select(Equipment))).scalars())
    code_of = {row.id: row.code for row in rows}
    actual = {
        row.code: (
            str(row.level),
            code_of.get(row.parent_id) if row.parent_id else None,
            code_of.get(row.room_id) if row.room_id else None,
        )
        for row in rows
    }
    assert actual == expected


async def test_second_load_changes_nothing(ctx: AppContext) -> None:
    """Loading the same file again reports everything unchanged and writes no audit entry."""
    counts = expected_counts(read_yaml(SHIPPED))
    await load_plant_file(ctx, PRINCIPAL, SHIPPED)
    before = await db_state(ctx)
    again = await load_plant_file(ctx, PRINCIPAL, SHIPPED)
    assert again.created == {}
    assert again.updated == {}
    assert again.unchanged == counts
    assert again.notes == []
    assert await db_state(ctx) == before


async def test_changed_material_name_is_one_audited_update(ctx: AppContext, tmp_path: Path) -> None:
    """AT-2: one changed attribute is one update with field-level old/new."""
    original = SHIPPED.read_text(encoding="utf-8")
    old_line = "    name: L-lactide monomer\n"
    new_line = "    name: L-lactide monomer (polymer grade)\n"
    assert original.count(old_line) == 1
    edited = tmp_path / "plant.yaml"
    edited.write_text(original.replace(old_line, new_line), encoding="utf-8")

    counts = expected_counts(read_yaml(SHIPPED))
    await load_plant_file(ctx, PRINCIPAL, SHIPPED)
    before = await db_state(ctx)
    report = await load_plant_file(ctx, PRINCIPAL, edited)
    assert report.created == {}
    assert report.updated == {"material": 1}
    assert report.unchanged == {**counts, "material": counts["material"] - 1}

    after = await db_state(ctx)
    assert after["audit"] == before["audit"] + 1
    assert after["materials"]["LLA"] == ("L-lactide monomer (polymer grade)", 2)
    assert {k: v for k, v in after["materials"].items() if k != "LLA"} == {
        k: v for k, v in before["materials"].items() if k != "LLA"
    }
    updates = await audit_entries(ctx, action="update")
    assert len(updates) == 1
    entry = updates[0]
    assert (entry.entity_type, entry.entity_id, entry.entity_version) == ("material", "LLA", 2)
    assert entry.changes == [
        {"field": "name", "old": "L-lactide monomer", "new": "L-lactide monomer (polymer grade)"}
    ]
    assert entry.reason


async def test_small_plant_loads(ctx: AppContext, tmp_path: Path) -> None:
    """The fixture file used by the failure cases below is itself valid."""
    path = write_yaml(tmp_path / "plant.yaml", small_plant())
    report = await load_plant_file(ctx, PRINCIPAL, path)
    assert report.created == {"equipment_class": 1, "material": 1, "equipment": 9}


# --- invalid files -------------------------------------------------------------------------------


def _unknown_key(d: Json) -> None:
    u1(d)["colour"] = "blue"


def _bad_level(d: Json) -> None:
    d["equipment"][0]["children"][1]["level"] = "plant"


def _unknown_class(d: Json) -> None:
    u1(d)["equipment_class"] = "NO_SUCH_CLASS"


def _missing_room(d: Json) -> None:
    u1(d)["room"] = "RM9"


def _room_is_not_a_room(d: Json) -> None:
    u1(d)["room"] = "WC1"


def _duplicate_equipment_code(d: Json) -> None:
    d["equipment"][0]["children"][1]["code"] = "S1"


def _duplicate_material_code(d: Json) -> None:
    d["materials"].append({**d["materials"][0], "gtin": "00812345000023"})


def _duplicate_class_code(d: Json) -> None:
    d["equipment_classes"].append({"code": "REACTOR", "name": "Reactor again"})


def _gtin_check_digit(d: Json) -> None:
    d["materials"][0]["gtin"] = "00812345000010"


def _bad_uom(d: Json) -> None:
    d["materials"][0]["uom"] = "furlong-ish"


def _unknown_top_level_key(d: Json) -> None:
    d["equipments"] = []


def _exposure_beyond_api_limit(d: Json) -> None:
    d["materials"][0]["max_exposure_min"] = 200_000


def _naive_datetime(d: Json) -> None:
    u1(d)["calibration_due_at"] = "2027-01-01T00:00:00"


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        pytest.param(_unknown_key, f"{U1_PATH}.colour", [], id="unknown-key"),
        pytest.param(_bad_level, "equipment[0].children[1].level", [], id="bad-level"),
        pytest.param(
            _unknown_class, f"{U1_PATH}.equipment_class", ["NO_SUCH_CLASS"], id="unknown-class"
        ),
        pytest.param(_missing_room, f"{U1_PATH}.room", ["RM9"], id="missing-room"),
        pytest.param(_room_is_not_a_room, f"{U1_PATH}.room", ["WC1"], id="room-not-a-room"),
        pytest.param(
            _duplicate_equipment_code,
            "equipment[0].children[1].code",
            ["S1"],
            id="duplicate-equipment-code",
        ),
        pytest.param(
            _duplicate_material_code, "materials[1].code", ["LLA"], id="duplicate-material-code"
        ),
        pytest.param(
            _duplicate_class_code,
            "equipment_classes[1].code",
            ["REACTOR"],
            id="duplicate-class-code",
        ),
        pytest.param(_gtin_check_digit, "materials[0].gtin", ["expected 6"], id="gtin-check"),
        pytest.param(_bad_uom, "materials[0].uom", ["furlong-ish"], id="bad-uom"),
        pytest.param(_unknown_top_level_key, "equipments", [], id="unknown-top-level-key"),
        pytest.param(
            _exposure_beyond_api_limit,
            "materials[0].max_exposure_min",
            [],
            id="exposure-beyond-api-limit",
        ),
        pytest.param(_naive_datetime, f"{U1_PATH}.calibration_due_at", [], id="naive-datetime"),
    ],
)
async def test_invalid_file_names_the_yaml_path(
    ctx: AppContext, tmp_path: Path, mutate: Any, path: str, words: list[str]
) -> None:
    """Every problem names its YAML path; nothing is written (ARCHITECTURE 4)."""
    data = copy.deepcopy(small_plant())
    mutate(data)
    file = write_yaml(tmp_path / "plant.yaml", data)
    with pytest.raises(PlantFileError) as parsed:
        parse_plant_file(file)
    problems = parsed.value.problems
    matching = [p for p in problems if p.startswith(f"{path}:")]
    assert matching, problems
    for word in words:
        assert any(word in p for p in matching), (word, matching)
    assert parsed.value.path == file

    before = await db_state(ctx)
    with pytest.raises(PlantFileError):
        await load_plant_file(ctx, PRINCIPAL, file)
    assert await db_state(ctx) == before


def test_unreadable_yaml_is_a_plant_file_error(tmp_path: Path) -> None:
    file = tmp_path / "plant.yaml"
    file.write_text("equipment: [\n  - code: ENT\n", encoding="utf-8")
    with pytest.raises(PlantFileError) as parsed:
        parse_plant_file(file)
    assert parsed.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Cross-check problems are collected, not stopped at the first one."""
    data = small_plant()
    _unknown_class(data)
    _duplicate_equipment_code(data)
    _duplicate_class_code(data)
    file = write_yaml(tmp_path / "plant.yaml", data)
    with pytest.raises(PlantFileError) as parsed:
        parse_plant_file(file)
    paths = {p.split(":", 1)[0] for p in parsed.value.problems}
    assert {
        f"{U1_PATH}.equipment_class",
        "equipment[0].children[1].code",
        "equipment_classes[1].code",
    } <= paths


# --- errors found while applying -----------------------------------------------------------------


async def test_bad_level_nesting_is_refused_by_the_service(ctx: AppContext, tmp_path: Path) -> None:
    """ISA-95 nesting (a unit directly under an area) is refused with the node's YAML path
    when applied; nothing stays."""
    data = small_plant()
    area = a1(data)
    area["children"].append(
        {
            "code": "U-LOOSE",
            "name": "Unit under an area",
            "level": "unit",
            "kind": "unit",
            "equipment_class": "REACTOR",
        }
    )
    file = write_yaml(tmp_path / "plant.yaml", data)
    parse_plant_file(file)
    before = await db_state(ctx)
    with pytest.raises(PlantFileError) as failed:
        await load_plant_file(ctx, PRINCIPAL, file)
    [problem] = failed.value.problems
    assert problem.startswith("equipment[0].children[0].children[0].children[")
    assert ".parent_code: " in problem
    assert "work_center" in problem
    assert await db_state(ctx) == before


async def test_failing_load_leaves_the_database_unchanged(ctx: AppContext, tmp_path: Path) -> None:
    """All or nothing: a unit in a room of another site fails in the service after classes,
    materials, rooms and updates were already applied; the whole load rolls back (AT-1)."""
    base = write_yaml(tmp_path / "base.yaml", small_plant())
    await load_plant_file(ctx, PRINCIPAL, base)
    before = await db_state(ctx)

    data = small_plant()
    data["equipment_classes"].append({"code": "DRYER", "name": "Dryer"})
    data["materials"][0]["name"] = "L-lactide (renamed)"
    data["materials"].append({"code": "GA", "name": "Glycolide", "kind": "monomer", "uom": "kg"})
    a1(data)["children"].append({"code": "RM3", "name": "Room 3", "level": "room"})
    wc1 = a1(data)["children"][1]
    wc1["children"].append(
        {
            "code": "U2",
            "name": "Unit in a room of site 2",
            "level": "unit",
            "kind": "unit",
            "equipment_class": "DRYER",
            "room": "RM2",
        }
    )
    failing = write_yaml(tmp_path / "failing.yaml", data)
    parse_plant_file(failing)  # valid as a file; the site check happens when applied
    with pytest.raises(PlantFileError) as failed:
        await load_plant_file(ctx, PRINCIPAL, failing)
    [problem] = failed.value.problems
    assert ".room_code: room 'RM2' is on another site" in problem
    after = await db_state(ctx)
    assert after == before
    assert "DRYER" not in after["classes"]
    assert "GA" not in after["materials"]
    assert "RM3" not in after["equipment"]
    assert after["materials"]["LLA"] == ("L-lactide", 1)


async def test_failing_first_load_leaves_an_empty_database(ctx: AppContext, tmp_path: Path) -> None:
    """All or nothing on an empty database too."""
    data = small_plant()
    u1(data)["room"] = "RM2"
    file = write_yaml(tmp_path / "plant.yaml", data)
    with pytest.raises(PlantFileError):
        await load_plant_file(ctx, PRINCIPAL, file)
    state = await db_state(ctx)
    assert state["equipment"] == {}
    assert state["classes"] == {}
    assert state["materials"] == {}
    assert state["audit"] == 0
