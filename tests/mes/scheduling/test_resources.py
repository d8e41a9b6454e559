"""Scheduling resources (mes/scheduling/changeovers.py and availability.py): the changeover
matrix (SCH-2), unit calendars and unavailable windows (SCH-3) over HTTP with their audit
entries (AT-1..AT-3), the scheduler's two reads, the pure shift expansion (DST, night shifts,
the week boundary) and the plant file's ``changeovers:`` and ``calendars:`` sections."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from mes.context import AppContext
from mes.equipment import service as equipment_service
from mes.equipment.schemas import EquipmentClassCreate, EquipmentCreate
from mes.errors import NotFound
from mes.models import EquipmentKind, EquipmentLevel
from mes.plant.loader import PlantFileError, load_plant_file, parse_plant_file
from mes.principal import system_principal
from mes.scheduling import availability, calendar, changeovers
from tests.conftest import Actors, FakeClock

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
BERLIN = ZoneInfo("Europe/Berlin")
PRINCIPAL = system_principal("test")
WEEKDAYS = [0, 1, 2, 3, 4]
EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]

Json = dict[str, Any]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def shift(name: str, days: list[int], start: str, end: str) -> Json:
    return {"name": name, "days": days, "start": start, "end": end}


# --- pure: shift expansion (SCH-3) ---------------------------------------------------------------


def test_no_shifts_is_round_the_clock() -> None:
    start, end = utc(2026, 3, 2), utc(2026, 3, 9)
    assert calendar.off_shift([], BERLIN, start, end) == []
    assert calendar.on_shift([], BERLIN, start, end) == []


def test_two_shifts_monday_to_friday_leave_nights_and_the_weekend_off() -> None:
    """Mon 2 - Mon 9 March 2026 in UTC: 06:00-22:00 on weekdays, everything else off."""
    shifts = [shift("early", WEEKDAYS, "06:00", "14:00"), shift("late", WEEKDAYS, "14:00", "22:00")]
    off = calendar.off_shift(shifts, "UTC", utc(2026, 3, 2), utc(2026, 3, 9))
    assert off == [
        (utc(2026, 3, 2), utc(2026, 3, 2, 6)),
        (utc(2026, 3, 2, 22), utc(2026, 3, 3, 6)),
        (utc(2026, 3, 3, 22), utc(2026, 3, 4, 6)),
        (utc(2026, 3, 4, 22), utc(2026, 3, 5, 6)),
        (utc(2026, 3, 5, 22), utc(2026, 3, 6, 6)),
        (utc(2026, 3, 6, 22), utc(2026, 3, 9)),
    ]


def test_day_shift_keeps_its_wall_clock_across_the_spring_dst_change_in_berlin() -> None:
    """29 March 2026, 02:00 CET -> 03:00 CEST: 06:00 local is 05:00 UTC before, 04:00 after."""
    shifts = [shift("day", EVERY_DAY, "06:00", "14:00")]
    on = calendar.on_shift(shifts, BERLIN, utc(2026, 3, 28), utc(2026, 3, 31))
    assert on == [
        (utc(2026, 3, 28, 5), utc(2026, 3, 28, 13)),
        (utc(2026, 3, 29, 4), utc(2026, 3, 29, 12)),
        (utc(2026, 3, 30, 4), utc(2026, 3, 30, 12)),
    ]
    off = calendar.off_shift(shifts, BERLIN, utc(2026, 3, 28), utc(2026, 3, 31))
    assert off[1] == (utc(2026, 3, 28, 13), utc(2026, 3, 29, 4))  # the short night: 15 h
    assert off[1][1] - off[1][0] == timedelta(hours=15)


@pytest.mark.parametrize(
    ("night", "expected"),
    [
        pytest.param(  # Sat 28 March 22:00 CET -> Sun 29 March 06:00 CEST
            utc(2026, 3, 28, 12), (utc(2026, 3, 28, 21), utc(2026, 3, 29, 4)), id="spring-7h"
        ),
        pytest.param(  # Sat 24 October 22:00 CEST -> Sun 25 October 06:00 CET
            utc(2026, 10, 24, 12), (utc(2026, 10, 24, 20), utc(2026, 10, 25, 5)), id="autumn-9h"
        ),
        pytest.param(  # an ordinary winter night: 8 h
            utc(2026, 1, 10, 12), (utc(2026, 1, 10, 21), utc(2026, 1, 11, 5)), id="winter-8h"
        ),
    ],
)
def test_night_shift_over_a_dst_change_is_shorter_or_longer(
    night: datetime, expected: tuple[datetime, datetime]
) -> None:
    """A 22:00-06:00 shift follows the wall clock: the night the clocks go forward it lasts
    7 hours, the night they go back 9."""
    shifts = [shift("night", EVERY_DAY, "22:00", "06:00")]
    on = calendar.on_shift(shifts, BERLIN, night, night + timedelta(hours=24))
    assert on[0] == expected


def test_sunday_night_shift_runs_into_monday_across_the_week_boundary() -> None:
    """A night shift begun on Sunday 4 January 2026 (22:00 CET) still covers Monday morning,
    although the asked window starts on Monday, after the shift began."""
    shifts = [shift("night", [6], "22:00", "06:00")]
    monday = utc(2026, 1, 5)
    assert calendar.on_shift(shifts, BERLIN, monday, monday + timedelta(hours=12)) == [
        (monday, utc(2026, 1, 5, 5))
    ]
    assert calendar.off_shift(shifts, BERLIN, monday, monday + timedelta(hours=12)) == [
        (utc(2026, 1, 5, 5), utc(2026, 1, 5, 12))
    ]
    week = calendar.on_shift(shifts, BERLIN, utc(2026, 1, 1), utc(2026, 1, 15))
    assert week == [
        (utc(2026, 1, 4, 21), utc(2026, 1, 5, 5)),
        (utc(2026, 1, 11, 21), utc(2026, 1, 12, 5)),
    ]


def test_24_hour_shift_and_adjacent_shifts_merge() -> None:
    """``start == end`` is 24 hours; shifts that touch give one interval."""
    shifts = [shift("all day", [0], "06:00", "06:00"), shift("after", [1], "06:00", "10:00")]
    on = calendar.on_shift(shifts, "UTC", utc(2026, 3, 2), utc(2026, 3, 4))
    assert on == [(utc(2026, 3, 2, 6), utc(2026, 3, 3, 10))]


def test_window_edges_clip_the_shifts() -> None:
    shifts = [shift("day", EVERY_DAY, "08:00", "16:00")]
    start, end = utc(2026, 3, 2, 10), utc(2026, 3, 3, 9)
    assert calendar.on_shift(shifts, "UTC", start, end) == [
        (start, utc(2026, 3, 2, 16)),
        (utc(2026, 3, 3, 8), end),
    ]
    assert calendar.off_shift(shifts, "UTC", start, end) == [
        (utc(2026, 3, 2, 16), utc(2026, 3, 3, 8))
    ]
    assert calendar.off_shift(shifts, "UTC", end, start) == []


def test_naive_datetimes_are_refused() -> None:
    shifts = [shift("day", EVERY_DAY, "08:00", "16:00")]
    naive = datetime(2026, 3, 2, 10)  # noqa: DTZ001 - the case under test
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.off_shift(shifts, "UTC", naive, utc(2026, 3, 3))


def test_merge_intervals_joins_overlapping_and_touching() -> None:
    a, b, c, d = utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), utc(2026, 1, 1, 3), utc(2026, 1, 1, 4)
    assert calendar.merge_intervals([(c, d), (a, b), (b, c), (d, d)]) == [(a, d)]
    assert calendar.merge_intervals([(a, c), (b, b), (a, b)]) == [(a, c)]


@pytest.mark.parametrize(
    ("shifts", "words"),
    [
        pytest.param(
            [shift("early", [0], "06:00", "14:00"), shift("mid", [0], "12:00", "18:00")],
            ["shifts[0]", "shifts[1]", "Monday at 12:00"],
            id="same-day",
        ),
        pytest.param(
            [shift("night", [1], "22:00", "06:00"), shift("early", [2], "05:00", "13:00")],
            ["Wednesday at 05:00"],
            id="night-into-next-morning",
        ),
        pytest.param(
            [shift("night", [6], "22:00", "06:00"), shift("early", [0], "05:30", "13:00")],
            ["Monday at 05:30"],
            id="sunday-night-into-monday",
        ),
        pytest.param(
            [shift("a", [3], "08:00", "16:00"), shift("b", [3, 4], "08:00", "09:00")],
            ["Thursday at 08:00"],
            id="same-start",
        ),
    ],
)
def test_overlapping_shifts_are_named(shifts: list[Json], words: list[str]) -> None:
    problem = calendar.shift_overlap_problem(shifts)
    assert problem is not None
    for word in words:
        assert word in problem


@pytest.mark.parametrize(
    "shifts",
    [
        pytest.param([], id="none"),
        pytest.param(
            [shift("early", WEEKDAYS, "06:00", "14:00"), shift("late", WEEKDAYS, "14:00", "22:00")],
            id="touching",
        ),
        pytest.param(
            [
                shift("night", [6, 0, 1, 2, 3], "22:00", "06:00"),
                shift("early", WEEKDAYS, "06:00", "14:00"),
                shift("late", WEEKDAYS, "14:00", "22:00"),
            ],
            id="three-shifts-from-sunday-night",
        ),
        pytest.param([shift("all", EVERY_DAY, "00:00", "00:00")], id="round-the-clock"),
    ],
)
def test_shifts_that_do_not_overlap_pass(shifts: list[Json]) -> None:
    assert calendar.shift_overlap_problem(shifts) is None


# --- helpers -------------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: Json = response.json()
    assert body["status"] == status
    return body


def named_fields(body: Json) -> set[str]:
    names = {str(body["field"])} if body.get("field") else set()
    names |= {str(e["field"]) for e in body.get("errors", [])}
    return names


def if_match(headers: Mapping[str, str], version: int | None) -> dict[str, str]:
    extra = {"If-Match": f'"{version}"'} if version is not None else {}
    return {**headers, **extra}


async def audit_of(
    client: httpx.AsyncClient, headers: Mapping[str, str], entity_type: str, entity_id: str
) -> list[Json]:
    response = await client.get(
        f"{API}/audit",
        params={"entity_type": entity_type, "entity_id": entity_id, "limit": 500},
        headers=dict(headers),
    )
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


async def post_rule(
    client: httpx.AsyncClient, headers: Mapping[str, str], **body: Any
) -> httpx.Response:
    return await client.post(f"{API}/changeovers", json=body, headers=dict(headers))


async def put_calendar(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    code: str,
    body: Json,
    version: int | None,
) -> httpx.Response:
    return await client.put(
        f"{API}/equipment/{code}/calendar", json=body, headers=if_match(headers, version)
    )


async def post_window(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    code: str,
    start: datetime,
    end: datetime,
    kind: str = "maintenance",
    reason: str = "gearbox service",
) -> httpx.Response:
    return await client.post(
        f"{API}/equipment/{code}/unavailable",
        json={"start": start.isoformat(), "end": end.isoformat(), "kind": kind, "reason": reason},
        headers=dict(headers),
    )


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def plant(ctx: AppContext) -> None:
    """ENT > SITE > AREA > WC > {EX-1, EX-2 (EXTRUDER), BR-1 (BRAIDER)}."""
    async with ctx.db.sessionmaker() as session, session.begin():
        for code in ("EXTRUDER", "BRAIDER"):
            await equipment_service.create_class(
                ctx, session, PRINCIPAL, EquipmentClassCreate(code=code, name=code.title())
            )
        nodes: list[tuple[str, EquipmentLevel, str | None, str | None]] = [
            ("ENT", EquipmentLevel.enterprise, None, None),
            ("SITE", EquipmentLevel.site, "ENT", None),
            ("AREA", EquipmentLevel.area, "SITE", None),
            ("WC", EquipmentLevel.work_center, "AREA", None),
            ("EX-1", EquipmentLevel.unit, "WC", "EXTRUDER"),
            ("EX-2", EquipmentLevel.unit, "WC", "EXTRUDER"),
            ("BR-1", EquipmentLevel.unit, "WC", "BRAIDER"),
        ]
        for code, level, parent, klass in nodes:
            await equipment_service.create_equipment(
                ctx,
                session,
                PRINCIPAL,
                EquipmentCreate(
                    code=code,
                    name=f"Node {code}",
                    level=level,
                    kind=EquipmentKind.unit
                    if level == EquipmentLevel.unit
                    else (EquipmentKind.production_line if parent == "AREA" else None),
                    parent_code=parent,
                    equipment_class=klass,
                ),
            )


# --- changeover rules over HTTP (SCH-2) ----------------------------------------------------------


async def test_create_class_rule_returns_201_etag_location_and_is_audited(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    response = await post_rule(
        client,
        actors["planner"],
        equipment_class="EXTRUDER",
        from_family="PGA",
        to_family="PLGA9010",
        minutes=180,
        reason="purge trial PT-12",
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"{API}/changeovers/{body['id']}"
    assert body["equipment_class"] == "EXTRUDER"
    assert body["equipment_code"] is None
    assert (body["from_family"], body["to_family"], body["minutes"]) == ("PGA", "PLGA9010", 180)
    assert body["created_by"] == "planner"
    assert body["version"] == 1

    again = await client.get(f"{API}/changeovers/{body['id']}", headers=actors["operator"])
    assert again.status_code == 200
    assert again.headers["ETag"] == '"1"'
    assert again.json() == body

    [entry] = await audit_of(client, actors["qa"], "changeover_rule", body["id"])
    assert entry["action"] == "create"
    assert entry["reason"] == "purge trial PT-12"
    assert entry["username"] == "planner"
    changes = {c["field"]: (c["old"], c["new"]) for c in entry["changes"]}
    assert changes["minutes"] == (None, 180)
    assert changes["equipment_class"] == (None, "EXTRUDER")


@pytest.mark.parametrize("role", ["planner", "supervisor", "admin"])
async def test_planners_supervisors_and_admins_write_rules(
    client: httpx.AsyncClient, actors: Actors, plant: None, role: str
) -> None:
    response = await post_rule(
        client, actors[role], equipment_code="BR-1", from_family="A", to_family="B", minutes=0
    )
    assert response.status_code == 201, response.text
    assert response.json()["equipment_code"] == "BR-1"


@pytest.mark.parametrize(("role", "status"), [("operator", 403), ("qa", 403), ("anonymous", 401)])
async def test_others_cannot_write_rules(
    client: httpx.AsyncClient, actors: Actors, plant: None, role: str, status: int
) -> None:
    response = await post_rule(
        client, actors[role], equipment_code="BR-1", from_family="A", to_family="B", minutes=5
    )
    assert_problem(response, status)
    listed = await client.get(f"{API}/changeovers", headers=actors["supervisor"])
    assert listed.json()["items"] == []


async def test_duplicate_rule_is_409_and_changes_nothing(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    first = await post_rule(
        client,
        actors["planner"],
        equipment_class="EXTRUDER",
        from_family="A",
        to_family="B",
        minutes=30,
    )
    assert first.status_code == 201
    again = await post_rule(
        client,
        actors["planner"],
        equipment_class="EXTRUDER",
        from_family="A",
        to_family="B",
        minutes=45,
    )
    problem = assert_problem(again, 409)
    assert problem["rule"] == "SCH-2"
    assert problem["existing_id"] == first.json()["id"]
    # The same pair for one unit of the class is another scope: allowed.
    unit = await post_rule(
        client,
        actors["planner"],
        equipment_code="EX-1",
        from_family="A",
        to_family="B",
        minutes=45,
    )
    assert unit.status_code == 201
    listed = (await client.get(f"{API}/changeovers", headers=actors["qa"])).json()["items"]
    assert [(r["equipment_class"], r["equipment_code"], r["minutes"]) for r in listed] == [
        ("EXTRUDER", None, 30),
        (None, "EX-1", 45),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"equipment_class": "NOPE"}, "equipment_class", id="unknown-class"),
        pytest.param({"equipment_code": "NOPE"}, "equipment_code", id="unknown-unit"),
        pytest.param({"equipment_code": "WC"}, "equipment_code", id="not-a-unit"),
        pytest.param(
            {"equipment_class": "EXTRUDER", "equipment_code": "EX-1"}, "equipment_code", id="both"
        ),
        pytest.param({}, "equipment_class", id="neither"),
        pytest.param(
            {"equipment_class": "EXTRUDER", "to_family": "PGA"}, "to_family", id="same-family"
        ),
        pytest.param({"equipment_class": "EXTRUDER", "minutes": 10081}, "minutes", id="too-long"),
        pytest.param({"equipment_class": "EXTRUDER", "minutes": -1}, "minutes", id="negative"),
        pytest.param({"equipment_class": "EXTRUDER", "minutes": False}, "minutes", id="bool"),
        pytest.param({"equipment_class": "EXTRUDER", "minutes": "30"}, "minutes", id="text"),
        pytest.param(
            {"equipment_class": "EXTRUDER", "from_family": " PGA"}, "from_family", id="blank-edge"
        ),
        pytest.param({"equipment_class": "EXTRUDER", "from_family": ""}, "from_family", id="empty"),
        pytest.param({"equipment_class": "EXTRUDER", "colour": "red"}, "colour", id="extra"),
    ],
)
async def test_bad_rule_is_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, actors: Actors, plant: None, body: Json, field: str
) -> None:
    full = {"from_family": "PGA", "to_family": "PLGA9010", "minutes": 60, **body}
    problem = assert_problem(await post_rule(client, actors["planner"], **full), 422)
    assert field in named_fields(problem)
    listed = await client.get(f"{API}/changeovers", headers=actors["planner"])
    assert listed.json()["items"] == []


async def test_patch_minutes_needs_if_match_and_reason_and_is_audited(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    created = await post_rule(
        client,
        actors["planner"],
        equipment_class="BRAIDER",
        from_family="PGA",
        to_family="PLGA9010",
        minutes=45,
    )
    rule_id = created.json()["id"]
    url = f"{API}/changeovers/{rule_id}"
    body = {"minutes": 60, "reason": "bobbin change measured at 1 h"}
    assert_problem(await client.patch(url, json=body, headers=actors["planner"]), 428)
    stale = await client.patch(url, json=body, headers=if_match(actors["planner"], 7))
    assert_problem(stale, 412)
    assert stale.headers["ETag"] == '"1"'
    no_reason = await client.patch(
        url, json={"minutes": 60}, headers=if_match(actors["planner"], 1)
    )
    assert "reason" in named_fields(assert_problem(no_reason, 422))
    assert_problem(await client.patch(url, json=body, headers=if_match(actors["operator"], 1)), 403)
    assert (await client.get(url, headers=actors["qa"])).json()["minutes"] == 45

    done = await client.patch(url, json=body, headers=if_match(actors["supervisor"], 1))
    assert done.status_code == 200, done.text
    assert done.headers["ETag"] == '"2"'
    assert (done.json()["minutes"], done.json()["version"]) == (60, 2)

    entries = await audit_of(client, actors["qa"], "changeover_rule", rule_id)
    assert [e["action"] for e in entries] == ["create", "update"]
    update = entries[1]
    assert update["entity_version"] == 2
    assert update["reason"] == "bobbin change measured at 1 h"
    assert update["changes"] == [{"field": "minutes", "old": 45, "new": 60}]


async def test_unknown_rule_is_404(client: httpx.AsyncClient, actors: Actors, plant: None) -> None:
    assert_problem(await client.get(f"{API}/changeovers/NOPE", headers=actors["qa"]), 404)
    missing = "01900000-0000-7000-8000-000000000000"
    assert_problem(await client.get(f"{API}/changeovers/{missing}", headers=actors["qa"]), 404)


async def test_list_filters_and_pages(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    rules = [
        {"equipment_class": "EXTRUDER", "from_family": "A", "to_family": "B", "minutes": 1},
        {"equipment_class": "EXTRUDER", "from_family": "B", "to_family": "A", "minutes": 2},
        {"equipment_class": "BRAIDER", "from_family": "A", "to_family": "B", "minutes": 3},
        {"equipment_code": "EX-1", "from_family": "A", "to_family": "B", "minutes": 4},
    ]
    for rule in rules:
        assert (await post_rule(client, actors["planner"], **rule)).status_code == 201
    reader = actors["operator"]

    async def minutes(**params: Any) -> list[int]:
        response = await client.get(f"{API}/changeovers", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [r["minutes"] for r in response.json()["items"]]

    assert await minutes(equipment_class="EXTRUDER") == [1, 2]
    assert await minutes(equipment_code="EX-1") == [4]
    assert await minutes(from_family="A") == [3, 1, 4]
    assert await minutes(equipment_class="EXTRUDER", to_family="A") == [2]
    seen: list[int] = []
    cursor = None
    while True:
        params: Json = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{API}/changeovers", params=params, headers=reader)).json()
        seen += [r["minutes"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [3, 1, 2, 4]  # class:BRAIDER, class:EXTRUDER (A, B), unit:EX-1

    for params, field in (
        ({"equipment_class": "NOPE"}, "query.equipment_class"),
        ({"equipment_code": "NOPE"}, "query.equipment_code"),
        ({"equipment_class": "EXTRUDER", "equipment_code": "EX-1"}, "query.equipment_code"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "query.cursor"),
    ):
        response = await client.get(f"{API}/changeovers", params=params, headers=reader)
        assert field in named_fields(assert_problem(response, 422))


async def test_idempotent_create_makes_one_rule(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    body = {"equipment_class": "EXTRUDER", "from_family": "A", "to_family": "B", "minutes": 5}
    headers = {**actors["planner"], "Idempotency-Key": "co-1"}
    first = await client.post(f"{API}/changeovers", json=body, headers=headers)
    second = await client.post(f"{API}/changeovers", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert len(await audit_of(client, actors["qa"], "changeover_rule", first.json()["id"])) == 1


async def test_matrix_is_the_class_rules_overridden_by_the_units_own(
    ctx: AppContext, client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    """SCH-2: EX-1 and EX-2 share their class's rules; EX-1's own rule wins for its pair and
    adds a pair of its own; BR-1 sees only its class's."""
    for rule in (
        {"equipment_class": "EXTRUDER", "from_family": "PGA", "to_family": "PLGA", "minutes": 180},
        {"equipment_class": "EXTRUDER", "from_family": "PLGA", "to_family": "PGA", "minutes": 150},
        {"equipment_code": "EX-1", "from_family": "PGA", "to_family": "PLGA", "minutes": 240},
        {"equipment_code": "EX-1", "from_family": "PLGA", "to_family": "PLLA", "minutes": 0},
        {"equipment_class": "BRAIDER", "from_family": "PGA", "to_family": "PLGA", "minutes": 45},
    ):
        assert (await post_rule(client, actors["planner"], **rule)).status_code == 201
    async with ctx.db.sessionmaker() as session:
        matrix = await changeovers.changeover_matrix(session, ["EX-1", "EX-2", "BR-1"])
        assert await changeovers.changeover_matrix(session, []) == {}
        with pytest.raises(NotFound, match="NOPE"):
            await changeovers.changeover_matrix(session, ["EX-1", "NOPE"])
    assert matrix == {
        "EX-1": {("PGA", "PLGA"): 240, ("PLGA", "PGA"): 150, ("PLGA", "PLLA"): 0},
        "EX-2": {("PGA", "PLGA"): 180, ("PLGA", "PGA"): 150},
        "BR-1": {("PGA", "PLGA"): 45},
    }


# --- calendars over HTTP (SCH-3) -----------------------------------------------------------------


TWO_SHIFTS: Json = {
    "timezone": "Europe/Berlin",
    "shifts": [
        shift("early", WEEKDAYS, "06:00", "14:00"),
        shift("late", [4, 0, 3, 2, 1], "14:00", "22:00"),
    ],
    "reason": "two-shift operation from week 12",
}


async def test_unit_without_calendar_works_round_the_clock(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    response = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["operator"])
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"0"'
    assert response.json() == {
        "equipment_code": "EX-1",
        "timezone": "UTC",
        "shifts": [],
        "is_round_the_clock": True,
        "unavailable": [],
        "updated_by": None,
        "version": 0,
        "updated_at": None,
    }


async def test_put_calendar_creates_then_replaces_and_is_audited(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    assert_problem(await put_calendar(client, actors["planner"], "EX-1", TWO_SHIFTS, None), 428)
    assert_problem(await put_calendar(client, actors["planner"], "EX-1", TWO_SHIFTS, 1), 412)
    created = await put_calendar(client, actors["planner"], "EX-1", TWO_SHIFTS, 0)
    assert created.status_code == 200, created.text
    assert created.headers["ETag"] == '"1"'
    body = created.json()
    assert body["version"] == 1
    assert body["timezone"] == "Europe/Berlin"
    assert body["is_round_the_clock"] is False
    assert body["shifts"][1] == shift("late", WEEKDAYS, "14:00", "22:00")  # days sorted
    assert body["updated_by"] == "planner"
    fetched = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["qa"])
    assert fetched.json() == body

    assert_problem(await put_calendar(client, actors["planner"], "EX-1", TWO_SHIFTS, 0), 412)
    round_the_clock = {"timezone": "Europe/Berlin", "shifts": [], "reason": "demand: 24/7"}
    replaced = await put_calendar(client, actors["admin"], "EX-1", round_the_clock, 1)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    assert replaced.json()["is_round_the_clock"] is True

    entries = await audit_of(client, actors["qa"], "equipment_calendar", "EX-1")
    assert [(e["action"], e["entity_version"]) for e in entries] == [("create", 1), ("update", 2)]
    assert entries[0]["reason"] == "two-shift operation from week 12"
    assert entries[1]["reason"] == "demand: 24/7"
    [change] = entries[1]["changes"]
    assert change["field"] == "shifts"
    assert [s["name"] for s in change["old"]] == ["early", "late"]
    assert change["new"] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"timezone": "Europe/Atlantis"}, "timezone", id="unknown-zone"),
        pytest.param({"timezone": "../etc/passwd"}, "timezone", id="path-zone"),
        pytest.param(
            {"shifts": [shift("x", [0], "24:00", "06:00")]}, "shifts.0.start", id="hour-24"
        ),
        pytest.param({"shifts": [shift("x", [0], "6:00", "14:00")]}, "shifts.0.start", id="h-mm"),
        pytest.param({"shifts": [shift("x", [7], "06:00", "14:00")]}, "shifts.0.days.0", id="day"),
        pytest.param(
            {"shifts": [shift("x", [True], "06:00", "14:00")]},
            "shifts.0.days.0",
            id="bool-day",
        ),
        pytest.param({"shifts": [shift("x", [], "06:00", "14:00")]}, "shifts.0.days", id="no-days"),
        pytest.param(
            {"shifts": [shift("x", [1, 1], "06:00", "14:00")]}, "shifts.0.days", id="repeat-day"
        ),
        pytest.param(
            {
                "shifts": [
                    shift("night", [6], "22:00", "06:00"),
                    shift("early", [0], "05:00", "13:00"),
                ]
            },
            "shifts",
            id="overlap",
        ),
        pytest.param({"reason": ""}, "reason", id="no-reason"),
    ],
)
async def test_bad_calendar_is_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, actors: Actors, plant: None, change: Json, field: str
) -> None:
    body = {**copy.deepcopy(TWO_SHIFTS), **change}
    problem = assert_problem(await put_calendar(client, actors["planner"], "EX-1", body, 0), 422)
    assert field in named_fields(problem)
    after = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["planner"])
    assert after.json()["version"] == 0
    assert await audit_of(client, actors["qa"], "equipment_calendar", "EX-1") == []


async def test_overlap_problem_names_rule_and_shifts(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    body = {
        "shifts": [shift("night", [6], "22:00", "06:00"), shift("early", [0], "05:00", "13:00")],
        "reason": "x",
    }
    problem = assert_problem(await put_calendar(client, actors["planner"], "EX-1", body, 0), 422)
    assert problem["rule"] == "SCH-3"
    assert "Monday at 05:00" in problem["detail"]


async def test_only_units_have_calendars(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    for response in (
        await client.get(f"{API}/equipment/WC/calendar", headers=actors["planner"]),
        await put_calendar(client, actors["planner"], "WC", TWO_SHIFTS, 0),
        await post_window(client, actors["planner"], "WC", utc(2030, 1, 1), utc(2030, 1, 2)),
        await client.get(f"{API}/equipment/WC/unavailable", headers=actors["planner"]),
    ):
        problem = assert_problem(response, 422)
        assert problem["field"] == "path.code"
        assert "only units" in problem["detail"]
    assert_problem(
        await client.get(f"{API}/equipment/NOPE/calendar", headers=actors["planner"]), 404
    )
    assert_problem(await put_calendar(client, actors["operator"], "EX-1", TWO_SHIFTS, 0), 403)


# --- unavailable windows over HTTP (SCH-3) -------------------------------------------------------


async def test_window_is_created_listed_shown_with_the_calendar_and_audited(
    client: httpx.AsyncClient, actors: Actors, clock: FakeClock, plant: None
) -> None:
    now = clock.now()
    start, end = now + timedelta(days=2), now + timedelta(days=2, hours=6)
    created = await post_window(client, actors["planner"], "EX-1", start, end, "calibration")
    assert created.status_code == 201, created.text
    window = created.json()
    assert created.headers["ETag"] == '"1"'
    assert created.headers["Location"] == f"{API}/equipment/EX-1/unavailable/{window['id']}"
    assert window["equipment_code"] == "EX-1"
    assert window["kind"] == "calibration"
    assert window["is_cancelled"] is False
    assert datetime.fromisoformat(window["start"]) == start
    assert datetime.fromisoformat(window["end"]) == end

    fetched = await client.get(
        f"{API}/equipment/EX-1/unavailable/{window['id']}", headers=actors["operator"]
    )
    assert fetched.status_code == 200
    assert fetched.json() == window
    calendar = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["operator"])
    assert calendar.json()["unavailable"] == [window]
    other = await client.get(f"{API}/equipment/EX-2/calendar", headers=actors["operator"])
    assert other.json()["unavailable"] == []
    assert_problem(
        await client.get(
            f"{API}/equipment/EX-2/unavailable/{window['id']}", headers=actors["operator"]
        ),
        404,
    )

    [entry] = await audit_of(client, actors["qa"], "unavailable_window", window["id"])
    assert entry["action"] == "create"
    assert entry["reason"] == "gearbox service"
    assert entry["username"] == "planner"


async def test_past_windows_are_not_upcoming_but_are_listed(
    client: httpx.AsyncClient, actors: Actors, clock: FakeClock, plant: None
) -> None:
    now = clock.now()
    past = await post_window(
        client,
        actors["supervisor"],
        "EX-1",
        now - timedelta(days=3),
        now - timedelta(days=2),
        "breakdown",
        "melt pump seized",
    )
    assert past.status_code == 201
    calendar = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["operator"])
    assert calendar.json()["unavailable"] == []
    listed = await client.get(f"{API}/equipment/EX-1/unavailable", headers=actors["operator"])
    assert [w["id"] for w in listed.json()["items"]] == [past.json()["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"end": "2030-01-01T08:00:00Z"}, "end", id="end-equals-start"),
        pytest.param({"end": "2030-01-01T07:00:00Z"}, "end", id="end-before-start"),
        pytest.param({"start": "2030-01-01T08:00:00"}, "start", id="naive"),
        pytest.param({"kind": "holiday"}, "kind", id="kind"),
        pytest.param({"reason": " "}, "reason", id="blank-reason"),
        pytest.param({"extra": 1}, "extra", id="extra"),
    ],
)
async def test_bad_window_is_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, actors: Actors, plant: None, body: Json, field: str
) -> None:
    full = {
        "start": "2030-01-01T08:00:00Z",
        "end": "2030-01-01T12:00:00Z",
        "kind": "maintenance",
        "reason": "service",
        **body,
    }
    response = await client.post(
        f"{API}/equipment/EX-1/unavailable", json=full, headers=actors["planner"]
    )
    assert field in named_fields(assert_problem(response, 422))
    listed = await client.get(
        f"{API}/equipment/EX-1/unavailable",
        params={"include_cancelled": True},
        headers=actors["planner"],
    )
    assert listed.json()["items"] == []


@pytest.mark.parametrize(("role", "status"), [("admin", 403), ("qa", 403), ("operator", 403)])
async def test_only_planners_and_supervisors_declare_windows(
    client: httpx.AsyncClient, actors: Actors, plant: None, role: str, status: int
) -> None:
    response = await post_window(client, actors[role], "EX-1", utc(2030, 1, 1), utc(2030, 1, 2))
    assert_problem(response, status)


async def test_list_windows_between_from_and_to(
    client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    spans = [
        (utc(2030, 1, 1, 8), utc(2030, 1, 1, 12)),
        (utc(2030, 1, 2, 8), utc(2030, 1, 2, 12)),
        (utc(2030, 1, 3, 8), utc(2030, 1, 3, 12)),
    ]
    ids = []
    for start, end in spans:
        response = await post_window(client, actors["planner"], "EX-1", start, end)
        ids.append(response.json()["id"])
    url = f"{API}/equipment/EX-1/unavailable"

    async def listed(**params: Any) -> list[str]:
        response = await client.get(url, params=params, headers=actors["qa"])
        assert response.status_code == 200, response.text
        return [w["id"] for w in response.json()["items"]]

    assert await listed() == ids
    # [from, to) overlaps: the first ends at 12:00 (not after), the third starts at 08:00
    assert await listed(**{"from": "2030-01-01T12:00:00Z", "to": "2030-01-03T08:00:00Z"}) == [
        ids[1]
    ]
    assert await listed(**{"from": "2030-01-01T11:00:00+00:00"}) == ids
    assert await listed(to="2030-01-02T09:00:00Z") == ids[:2]
    pages: list[str] = []
    cursor = None
    while True:
        params: Json = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(url, params=params, headers=actors["qa"])).json()
        pages += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == ids
    backwards = await client.get(
        url,
        params={"from": "2030-01-03T00:00:00Z", "to": "2030-01-02T00:00:00Z"},
        headers=actors["qa"],
    )
    assert "query.to" in named_fields(assert_problem(backwards, 422))


async def test_cancel_window_needs_if_match_and_reason_and_is_audited(
    client: httpx.AsyncClient, actors: Actors, clock: FakeClock, plant: None
) -> None:
    now = clock.now()
    created = await post_window(
        client, actors["planner"], "EX-1", now + timedelta(days=1), now + timedelta(days=1, hours=4)
    )
    window_id = created.json()["id"]
    url = f"{API}/equipment/EX-1/unavailable/{window_id}/cancel"
    body = {"reason": "service moved to the shutdown week"}
    assert_problem(await client.post(url, json=body, headers=actors["planner"]), 428)
    assert_problem(await client.post(url, json=body, headers=if_match(actors["planner"], 2)), 412)
    assert_problem(await client.post(url, json={}, headers=if_match(actors["planner"], 1)), 422)
    assert_problem(await client.post(url, json=body, headers=if_match(actors["qa"], 1)), 403)

    done = await client.post(url, json=body, headers=if_match(actors["supervisor"], 1))
    assert done.status_code == 200, done.text
    assert done.headers["ETag"] == '"2"'
    assert done.json()["is_cancelled"] is True
    again = await client.post(url, json=body, headers=if_match(actors["supervisor"], 2))
    assert assert_problem(again, 409)["rule"] == "SCH-3"

    calendar = await client.get(f"{API}/equipment/EX-1/calendar", headers=actors["qa"])
    assert calendar.json()["unavailable"] == []
    window_list = f"{API}/equipment/EX-1/unavailable"
    assert (await client.get(window_list, headers=actors["qa"])).json()["items"] == []
    everything = await client.get(
        window_list, params={"include_cancelled": True}, headers=actors["qa"]
    )
    assert [w["id"] for w in everything.json()["items"]] == [window_id]

    entries = await audit_of(client, actors["qa"], "unavailable_window", window_id)
    assert [e["action"] for e in entries] == ["create", "cancel"]
    assert entries[1]["reason"] == "service moved to the shutdown week"
    assert entries[1]["changes"] == [{"field": "is_cancelled", "old": False, "new": True}]


# --- the scheduler's read of unavailable time (SCH-3) --------------------------------------------


async def test_unavailable_intervals_join_off_shift_time_and_windows(
    ctx: AppContext, client: httpx.AsyncClient, actors: Actors, plant: None
) -> None:
    """EX-1: early shift in Berlin on weekdays plus a maintenance window that runs past the
    end of a shift, and a cancelled one that no longer counts; EX-2: no calendar, one window;
    BR-1: nothing."""
    calendar = {
        "timezone": "Europe/Berlin",
        "shifts": [shift("early", WEEKDAYS, "06:00", "14:00")],
        "reason": "one shift",
    }
    assert (await put_calendar(client, actors["planner"], "EX-1", calendar, 0)).status_code == 200
    # Monday 30 March 2026 (summer time: 06:00-14:00 local is 04:00-12:00 UTC)
    kept = await post_window(
        client, actors["planner"], "EX-1", utc(2026, 3, 30, 10), utc(2026, 3, 30, 13)
    )
    assert kept.status_code == 201
    dropped = await post_window(
        client, actors["planner"], "EX-1", utc(2026, 3, 31, 5), utc(2026, 3, 31, 6)
    )
    cancel = await client.post(
        f"{API}/equipment/EX-1/unavailable/{dropped.json()['id']}/cancel",
        json={"reason": "not needed"},
        headers=if_match(actors["planner"], 1),
    )
    assert cancel.status_code == 200
    other = await post_window(client, actors["planner"], "EX-2", utc(2026, 3, 29), utc(2026, 3, 31))
    assert other.status_code == 201

    start, end = utc(2026, 3, 30), utc(2026, 4, 1)
    async with ctx.db.sessionmaker() as session:
        spans = await availability.unavailable_intervals(
            session, ["EX-1", "EX-2", "BR-1"], start, end
        )
        with pytest.raises(NotFound):
            await availability.unavailable_intervals(session, ["NOPE"], start, end)
        assert await availability.unavailable_intervals(session, ["EX-1"], end, start) == {
            "EX-1": []
        }
    assert spans == {
        "EX-1": [
            (utc(2026, 3, 30), utc(2026, 3, 30, 4)),
            (utc(2026, 3, 30, 10), utc(2026, 3, 31, 4)),  # window 10-13 joins the off time
            (utc(2026, 3, 31, 12), utc(2026, 4, 1)),
        ],
        "EX-2": [(start, utc(2026, 3, 31))],
        "BR-1": [],
    }


# --- the plant file's changeovers: and calendars: -------------------------------------------------


def small_plant() -> Json:
    """ENT > S1 > A1 > WC1 > {U1, U2} (class EXTRUDER), with two rules and one calendar."""
    unit = {"level": "unit", "kind": "unit", "equipment_class": "EXTRUDER"}
    return {
        "equipment_classes": [{"code": "EXTRUDER", "name": "Extruder"}],
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
                                        "code": "WC1",
                                        "name": "Line 1",
                                        "level": "work_center",
                                        "kind": "production_line",
                                        "children": [
                                            {"code": "U1", "name": "Unit 1", **unit},
                                            {"code": "U2", "name": "Unit 2", **unit},
                                        ],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "changeovers": [
            {
                "equipment_class": "EXTRUDER",
                "from_family": "PGA",
                "to_family": "PLGA",
                "minutes": 90,
            },
            {"equipment_code": "U1", "from_family": "PGA", "to_family": "PLGA", "minutes": 120},
        ],
        "calendars": [
            {
                "units": ["U1", "U2"],
                "timezone": "Europe/Berlin",
                "shifts": [
                    {"name": "night", "days": [6, 0, 1, 2, 3], "start": "22:00", "end": "06:00"},
                    {"name": "early", "days": [0, 1, 2, 3, 4], "start": "06:00", "end": "14:00"},
                ],
            }
        ],
    }


def write_yaml(path: Path, data: Json) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def test_plant_file_loads_rules_and_calendars_idempotently(
    ctx: AppContext, tmp_path: Path
) -> None:
    data = small_plant()
    path = write_yaml(tmp_path / "plant.yaml", data)
    first = await load_plant_file(ctx, PRINCIPAL, path)
    assert first.created["changeover_rule"] == 2
    assert first.created["equipment_calendar"] == 2
    again = await load_plant_file(ctx, PRINCIPAL, path)
    assert again.created == {}
    assert again.updated == {}
    assert again.unchanged["changeover_rule"] == 2
    assert again.unchanged["equipment_calendar"] == 2

    data["changeovers"][0]["minutes"] = 100
    data["calendars"][0]["shifts"].pop(0)
    changed = await load_plant_file(ctx, PRINCIPAL, write_yaml(tmp_path / "plant.yaml", data))
    assert changed.updated == {"changeover_rule": 1, "equipment_calendar": 2}
    async with ctx.db.sessionmaker() as session:
        matrix = await changeovers.changeover_matrix(session, ["U1", "U2"])
        calendar = await availability.find_calendar(
            session, (await equipment_service.get(session, "U2")).id
        )
    assert matrix == {"U1": {("PGA", "PLGA"): 120}, "U2": {("PGA", "PLGA"): 100}}
    assert calendar is not None
    assert calendar.version == 2
    assert calendar.timezone == "Europe/Berlin"
    assert [s["name"] for s in calendar.shifts] == ["early"]


def _both(d: Json) -> None:
    d["changeovers"][1]["equipment_class"] = "EXTRUDER"


def _neither(d: Json) -> None:
    del d["changeovers"][1]["equipment_code"]


def _unknown_class(d: Json) -> None:
    d["changeovers"][0]["equipment_class"] = "NOPE"


def _not_a_unit(d: Json) -> None:
    d["changeovers"][1]["equipment_code"] = "WC1"


def _same_family(d: Json) -> None:
    d["changeovers"][1]["to_family"] = "PGA"


def _duplicate_rule(d: Json) -> None:
    d["changeovers"].append(dict(d["changeovers"][0]))


def _calendar_unknown_unit(d: Json) -> None:
    d["calendars"][0]["units"].append("U9")


def _calendar_twice(d: Json) -> None:
    d["calendars"].append({"units": ["U2"], "shifts": []})


def _overlap(d: Json) -> None:
    d["calendars"][0]["shifts"][1]["start"] = "05:00"


def _bad_zone(d: Json) -> None:
    d["calendars"][0]["timezone"] = "Mars/Olympus"


def _unquoted_time(d: Json) -> None:
    d["calendars"][0]["shifts"][0]["start"] = 1320  # YAML 1.1 reads 22:00 unquoted as 1320


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        pytest.param(_both, "changeovers[1]", id="both"),
        pytest.param(_neither, "changeovers[1]", id="neither"),
        pytest.param(_unknown_class, "changeovers[0].equipment_class", id="unknown-class"),
        pytest.param(_not_a_unit, "changeovers[1].equipment_code", id="not-a-unit"),
        pytest.param(_same_family, "changeovers[1].to_family", id="same-family"),
        pytest.param(_duplicate_rule, "changeovers[2]", id="duplicate"),
        pytest.param(_calendar_unknown_unit, "calendars[0].units[2]", id="unknown-unit"),
        pytest.param(_calendar_twice, "calendars[1].units[0]", id="two-calendars"),
        pytest.param(_overlap, "calendars[0].shifts", id="overlap"),
        pytest.param(_bad_zone, "calendars[0].timezone", id="zone"),
        pytest.param(_unquoted_time, "calendars[0].shifts[0].start", id="unquoted-time"),
    ],
)
async def test_invalid_sections_name_the_yaml_path_and_load_nothing(
    ctx: AppContext, tmp_path: Path, mutate: Any, path: str
) -> None:
    data = copy.deepcopy(small_plant())
    mutate(data)
    file = write_yaml(tmp_path / "plant.yaml", data)
    with pytest.raises(PlantFileError) as parsed:
        parse_plant_file(file)
    assert any(p.startswith(f"{path}:") for p in parsed.value.problems), parsed.value.problems
    with pytest.raises(PlantFileError):
        await load_plant_file(ctx, PRINCIPAL, file)
    async with ctx.db.sessionmaker() as session:
        assert await equipment_service.find(session, "U1") is None
