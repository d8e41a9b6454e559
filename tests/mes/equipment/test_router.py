"""Plant-model API over HTTP (/api/v1/equipment): hierarchy, optimistic concurrency, audit
(AT-1, AT-2, AT-3), status actions, QA qualification with an e-signature (ES-1..ES-5, AC-5)
and PROC-3 usability."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import func, text
from sqlmodel import select

from mes.audit import service as audit_service
from mes.context import AppContext
from mes.equipment import service as equipment_service
from mes.equipment.schemas import EquipmentCreate
from mes.models import AuditEntry, Equipment, EquipmentLevel, ESignature
from mes.principal import system_principal
from tests.conftest import PASSWORD, Actors, FakeClock

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
ALL_CODES = ("AREA-A", "ENT", "RM-A", "SITE-A", "U-A", "WC-A", "WC-B")

Json = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


async def create(
    client: httpx.AsyncClient, headers: Mapping[str, str], **body: Any
) -> httpx.Response:
    return await client.post(f"{API}/equipment", json=body, headers=dict(headers))


async def get(client: httpx.AsyncClient, headers: Mapping[str, str], code: str) -> httpx.Response:
    return await client.get(f"{API}/equipment/{code}", headers=dict(headers))


async def patch(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    code: str,
    body: Json,
    version: int | None,
) -> httpx.Response:
    extra = {"If-Match": f'"{version}"'} if version is not None else {}
    return await client.patch(f"{API}/equipment/{code}", json=body, headers={**headers, **extra})


async def audit_of(client: httpx.AsyncClient, headers: Mapping[str, str], code: str) -> list[Json]:
    response = await client.get(
        f"{API}/audit",
        params={"entity_type": "equipment", "entity_id": code, "limit": 500},
        headers=dict(headers),
    )
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


async def signatures_of(
    client: httpx.AsyncClient, headers: Mapping[str, str], code: str
) -> list[Json]:
    response = await client.get(
        f"{API}/signatures", params={"record_id": code}, headers=dict(headers)
    )
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


async def qualify(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    code: str,
    until: datetime,
    *,
    password: str = PASSWORD,
    meaning: str = "approved",
    comment: str = "IQ/OQ/PQ report QR-0042 reviewed",
) -> httpx.Response:
    return await client.post(
        f"{API}/equipment/{code}/qualify",
        json={
            "qualified_until": until.isoformat(),
            "signature": {"password": password, "meaning": meaning, "comment": comment},
        },
        headers=dict(headers),
    )


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} carries no zone"
    return parsed


def assert_problem(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: Json = response.json()
    assert body["status"] == status
    return body


def named_fields(body: Json) -> set[str]:
    """Field names a problem body points at (MesError ``field`` or validation ``errors``)."""
    names = {str(body["field"])} if body.get("field") else set()
    names |= {str(e["field"]) for e in body.get("errors", [])}
    return names


async def count_signatures(ctx: AppContext, code: str) -> int:
    async with ctx.db.sessionmaker() as session:
        result = await session.execute(
            select(func.count()).select_from(ESignature).where(ESignature.record_id == code)
        )
        return int(result.scalar_one())


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def plant(client: httpx.AsyncClient, actors: Actors) -> dict[str, httpx.Response]:
    """ENT > SITE-A > AREA-A > {WC-A > U-A, WC-B, RM-A (ISO 7)}, created by the admin."""
    admin = actors["admin"]
    made = await client.post(
        f"{API}/equipment-classes",
        json={"code": "REACTOR", "name": "ROP reactor"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    bodies: list[Json] = [
        {"code": "ENT", "name": "Biomedical materials base", "level": "enterprise"},
        {"code": "SITE-A", "name": "Core site", "level": "site", "parent_code": "ENT"},
        {"code": "AREA-A", "name": "Polymerization", "level": "area", "parent_code": "SITE-A"},
        {
            "code": "WC-A",
            "name": "ROP cell",
            "level": "work_center",
            "kind": "process_cell",
            "parent_code": "AREA-A",
        },
        {
            "code": "WC-B",
            "name": "Drying cell",
            "level": "work_center",
            "kind": "work_cell",
            "parent_code": "AREA-A",
        },
        {
            "code": "RM-A",
            "name": "Reactor hall",
            "level": "room",
            "parent_code": "AREA-A",
            "cleanroom_class": "ISO 7",
        },
        {
            "code": "U-A",
            "name": "Reactor R-101",
            "level": "unit",
            "kind": "unit",
            "parent_code": "WC-A",
            "equipment_class": "REACTOR",
            "room_code": "RM-A",
            "asset_no": "A-0001",
        },
    ]
    out: dict[str, httpx.Response] = {}
    for body in bodies:
        response = await create(client, admin, **body)
        assert response.status_code == 201, response.text
        out[body["code"]] = response
    return out


def unit_body(code: str, **extra: Any) -> Json:
    return {
        "code": code,
        "name": f"Unit {code}",
        "level": "unit",
        "kind": "unit",
        "parent_code": "WC-A",
        "equipment_class": "REACTOR",
        "room_code": "RM-A",
        **extra,
    }


# --- create --------------------------------------------------------------------------------------


async def test_create_hierarchy_returns_201_etag_and_location(
    plant: dict[str, httpx.Response],
) -> None:
    """Every node is created at version 1 with its ETag and Location."""
    for code, response in plant.items():
        assert response.status_code == 201
        assert response.headers["ETag"] == '"1"'
        assert response.headers["Location"] == f"{API}/equipment/{code}"
        assert response.json()["code"] == code
        assert response.json()["version"] == 1
    site = plant["SITE-A"].json()
    assert site["parent_code"] == "ENT"
    assert site["site_code"] == "SITE-A"
    room = plant["RM-A"].json()
    assert room["cleanroom_class"] == "ISO 7"
    assert room["site_code"] == "SITE-A"
    assert room["status"] is None
    unit = plant["U-A"].json()
    assert unit["level"] == "unit"
    assert unit["parent_code"] == "WC-A"
    assert unit["site_code"] == "SITE-A"
    assert unit["equipment_class"] == "REACTOR"
    assert unit["room_code"] == "RM-A"
    assert unit["status"] == "idle"
    assert unit["asset_no"] == "A-0001"


async def test_get_returns_the_node_with_etag(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await get(client, actors["operator"], "U-A")
    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    assert response.json() == plant["U-A"].json()


@pytest.mark.parametrize(
    ("body", "parent"),
    [
        pytest.param({"code": "X-1", "level": "site"}, "SITE-A", id="site-under-site"),
        pytest.param({"code": "X-1", "level": "area"}, "ENT", id="area-under-enterprise"),
        pytest.param(
            {"code": "X-1", "level": "work_center", "kind": "work_cell"},
            "SITE-A",
            id="work-center-under-site",
        ),
        pytest.param({"code": "X-1", "level": "room"}, "WC-A", id="room-under-work-center"),
        pytest.param(
            {"code": "X-1", "level": "unit", "kind": "unit", "equipment_class": "REACTOR"},
            "AREA-A",
            id="unit-under-area",
        ),
        pytest.param({"code": "X-1", "level": "enterprise"}, "ENT", id="enterprise-with-parent"),
        pytest.param({"code": "X-1", "level": "area"}, None, id="area-without-parent"),
    ],
)
async def test_wrong_parent_level_is_422_naming_parent_code(
    client: httpx.AsyncClient,
    actors: Actors,
    plant: dict[str, httpx.Response],
    body: Json,
    parent: str | None,
) -> None:
    """ISA-95 nesting is enforced by the service; the problem names parent_code."""
    response = await create(client, actors["admin"], name="Misplaced", parent_code=parent, **body)
    problem = assert_problem(response, 422)
    assert problem["field"] == "parent_code"
    assert (await get(client, actors["admin"], "X-1")).status_code == 404


async def test_unit_without_equipment_class_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    body = unit_body("U-NOCLASS")
    del body["equipment_class"]
    problem = assert_problem(await create(client, actors["admin"], **body), 422)
    assert problem["field"] == "equipment_class"


async def test_unknown_equipment_class_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    body = unit_body("U-BADCLASS", equipment_class="NO_SUCH_CLASS")
    problem = assert_problem(await create(client, actors["admin"], **body), 422)
    assert problem["field"] == "equipment_class"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"code": "WC-X", "level": "work_center", "kind": "work_cell", "parent_code": "AREA-A"},
            id="work-center",
        ),
        pytest.param({"code": "AREA-X", "level": "area", "parent_code": "SITE-A"}, id="area"),
        pytest.param(unit_body("U-X"), id="unit"),
    ],
)
async def test_cleanroom_class_on_a_non_room_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response], body: Json
) -> None:
    """Cleanroom classes (ISO 14644-1) describe rooms only."""
    body = {"name": "Not a room", **body, "cleanroom_class": "ISO 7"}
    problem = assert_problem(await create(client, actors["admin"], **body), 422)
    assert problem["field"] == "cleanroom_class"


async def test_cleanroom_class_outside_iso_range_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await create(
        client,
        actors["admin"],
        code="RM-X",
        name="Bad room",
        level="room",
        parent_code="AREA-A",
        cleanroom_class="ISO 10",
    )
    assert "cleanroom_class" in named_fields(assert_problem(response, 422))


async def test_unknown_parent_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await create(
        client, actors["admin"], code="AREA-X", name="Orphan", level="area", parent_code="NOPE"
    )
    problem = assert_problem(response, 422)
    assert problem["field"] == "parent_code"
    assert "NOPE" in problem["detail"]


async def test_unit_in_a_room_of_another_site_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    admin = actors["admin"]
    for body in (
        {"code": "SITE-B", "name": "Other site", "level": "site", "parent_code": "ENT"},
        {"code": "AREA-B", "name": "Other area", "level": "area", "parent_code": "SITE-B"},
        {"code": "RM-B", "name": "Other room", "level": "room", "parent_code": "AREA-B"},
    ):
        assert (await create(client, admin, **body)).status_code == 201
    response = await create(client, admin, **unit_body("U-X", room_code="RM-B"))
    assert assert_problem(response, 422)["field"] == "room_code"


async def test_duplicate_code_is_409(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await create(
        client,
        actors["supervisor"],
        code="AREA-A",
        name="Again",
        level="area",
        parent_code="SITE-A",
    )
    problem = assert_problem(response, 409)
    assert "AREA-A" in problem["detail"]
    current = await get(client, actors["admin"], "AREA-A")
    assert current.json()["name"] == "Polymerization"


@pytest.mark.parametrize("role", ["machine", "planner", "operator", "qa"])
async def test_only_editors_create_equipment(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response], role: str
) -> None:
    """AC-2: machine keys, planners, operators and QA cannot add plant-model nodes."""
    response = await create(
        client, actors[role], code="AREA-X", name="Sneaky", level="area", parent_code="SITE-A"
    )
    assert_problem(response, 403)
    assert (await get(client, actors["admin"], "AREA-X")).status_code == 404


async def test_anonymous_cannot_read_or_create(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    assert_problem(await get(client, actors["anonymous"], "U-A"), 401)
    response = await create(
        client, actors["anonymous"], code="AREA-X", name="x", level="area", parent_code="SITE-A"
    )
    assert_problem(response, 401)


async def test_idempotent_create_replays_the_first_response(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """A retried create with the same Idempotency-Key creates (and audits) only once."""
    body = {"code": "AREA-I", "name": "Retried area", "level": "area", "parent_code": "SITE-A"}
    headers = {**actors["admin"], "Idempotency-Key": "create-area-i"}
    first = await client.post(f"{API}/equipment", json=body, headers=headers)
    second = await client.post(f"{API}/equipment", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    entries = await audit_of(client, actors["qa"], "AREA-I")
    assert [e["action"] for e in entries] == ["create"]
    changed = await client.post(
        f"{API}/equipment", json={**body, "name": "Other name"}, headers=headers
    )
    assert_problem(changed, 422)


async def test_idempotent_replay_carries_etag_and_location(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """API.md: a retry replays the first response, and responses carry an ETag."""
    body = {"code": "AREA-I", "name": "Retried area", "level": "area", "parent_code": "SITE-A"}
    headers = {**actors["admin"], "Idempotency-Key": "create-area-i"}
    first = await client.post(f"{API}/equipment", json=body, headers=headers)
    second = await client.post(f"{API}/equipment", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers.get("ETag") == first.headers["ETag"] == '"1"'
    assert second.headers.get("Location") == first.headers["Location"]


# --- read ----------------------------------------------------------------------------------------


async def test_get_unknown_is_404_problem_json(client: httpx.AsyncClient, actors: Actors) -> None:
    problem = assert_problem(await get(client, actors["operator"], "NO-SUCH-UNIT"), 404)
    assert "NO-SUCH-UNIT" in problem["detail"]


async def test_get_by_id_also_works(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, plant: dict[str, httpx.Response]
) -> None:
    """API.md: resources are addressed by business key; ids are also accepted."""
    async with ctx.db.sessionmaker() as session:
        ident = (
            await session.execute(select(Equipment.id).where(Equipment.code == "U-A"))
        ).scalar_one()
    response = await get(client, actors["operator"], str(ident))
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "U-A"
    assert_problem(await get(client, actors["operator"], str(uuid.uuid4())), 404)


async def test_list_filters_by_level_and_parent(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    reader = actors["planner"]
    by_level = await client.get(f"{API}/equipment", params={"level": "work_center"}, headers=reader)
    assert by_level.status_code == 200
    assert [i["code"] for i in by_level.json()["items"]] == ["WC-A", "WC-B"]
    by_parent = await client.get(
        f"{API}/equipment", params={"parent_code": "AREA-A"}, headers=reader
    )
    assert [i["code"] for i in by_parent.json()["items"]] == ["RM-A", "WC-A", "WC-B"]
    both = await client.get(
        f"{API}/equipment", params={"parent_code": "AREA-A", "level": "room"}, headers=reader
    )
    assert [i["code"] for i in both.json()["items"]] == ["RM-A"]
    units = await client.get(f"{API}/equipment", params={"level": "unit"}, headers=reader)
    assert [i["code"] for i in units.json()["items"]] == ["U-A"]


async def test_list_with_limit_2_walks_every_page_once(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """Cursor pagination: pages of 2 return every node exactly once, in code order."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(f"{API}/equipment", params=params, headers=actors["operator"])
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["code"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == sorted(ALL_CODES)
    assert len(seen) == len(set(seen))
    assert pages == 4


async def test_list_with_a_forged_cursor_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await client.get(
        f"{API}/equipment", params={"cursor": "not base64 json!"}, headers=actors["operator"]
    )
    assert_problem(response, 422)


# --- update --------------------------------------------------------------------------------------


async def test_patch_without_if_match_is_428(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await patch(
        client, actors["supervisor"], "U-A", {"name": "Renamed", "reason": "r"}, None
    )
    assert_problem(response, 428)
    assert (await get(client, actors["admin"], "U-A")).json()["name"] == "Reactor R-101"


async def test_patch_with_stale_version_is_412_with_current_etag(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """A second writer holding version 1 loses after the first moved the record to 2."""
    editor = actors["supervisor"]
    first = await patch(client, editor, "U-A", {"name": "Reactor R-101A", "reason": "rename"}, 1)
    assert first.status_code == 200, first.text
    assert first.headers["ETag"] == '"2"'
    assert first.json()["version"] == 2
    assert first.json()["name"] == "Reactor R-101A"
    stale = await patch(client, editor, "U-A", {"name": "Reactor R-101B", "reason": "rename"}, 1)
    problem = assert_problem(stale, 412)
    assert stale.headers["ETag"] == '"2"'
    assert problem["current_version"] == 2
    current = await get(client, editor, "U-A")
    assert current.json()["name"] == "Reactor R-101A"
    assert current.headers["ETag"] == '"2"'


@pytest.mark.parametrize("body", [{"name": "No reason"}, {"name": "Blank", "reason": "   "}])
async def test_patch_without_reason_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response], body: Json
) -> None:
    """AT-3: an update without a reason is refused."""
    response = await patch(client, actors["supervisor"], "U-A", body, 1)
    assert "reason" in named_fields(assert_problem(response, 422))
    current = await get(client, actors["admin"], "U-A")
    assert current.json()["name"] == "Reactor R-101"
    assert current.headers["ETag"] == '"1"'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("level", "work_center"),
        ("parent_code", "WC-B"),
        ("status", "down"),
        ("qualified_until", "2099-01-01T00:00:00Z"),
        ("version", 7),
    ],
)
async def test_patch_with_forbidden_field_is_422_and_changes_nothing(
    client: httpx.AsyncClient,
    actors: Actors,
    plant: dict[str, httpx.Response],
    field: str,
    value: Any,
) -> None:
    """Level and parent are fixed; status and qualification have their own actions."""
    before = (await get(client, actors["admin"], "U-A")).json()
    body = {"name": "Sneaky rename", field: value, "reason": "try"}
    response = await patch(client, actors["admin"], "U-A", body, 1)
    assert field in named_fields(assert_problem(response, 422))
    after = await get(client, actors["admin"], "U-A")
    assert after.json() == before
    assert after.headers["ETag"] == '"1"'


async def test_patch_cleanroom_class_on_a_unit_is_422(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await patch(
        client, actors["admin"], "U-A", {"cleanroom_class": "ISO 5", "reason": "x"}, 1
    )
    assert assert_problem(response, 422)["field"] == "cleanroom_class"
    assert (await get(client, actors["admin"], "U-A")).headers["ETag"] == '"1"'


# --- audit ---------------------------------------------------------------------------------------


async def test_create_and_update_are_audited_field_by_field(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """AT-2: who, version, field-level old/new and reason; AT-3: the reason is the one given."""
    response = await patch(
        client,
        actors["supervisor"],
        "U-A",
        {"name": "Reactor R-101 (Hastelloy)", "reason": "name per asset register"},
        1,
    )
    assert response.status_code == 200, response.text
    entries = await audit_of(client, actors["qa"], "U-A")
    assert [e["action"] for e in entries] == ["create", "update"]
    created, updated = entries
    assert created["entity_type"] == "equipment"
    assert created["entity_version"] == 1
    assert created["username"] == "admin"
    created_changes = {c["field"]: c for c in created["changes"]}
    assert created_changes["name"] == {"field": "name", "old": None, "new": "Reactor R-101"}
    assert created_changes["parent_code"]["new"] == "WC-A"
    assert created_changes["equipment_class"]["new"] == "REACTOR"
    assert created_changes["room_code"]["new"] == "RM-A"
    assert created_changes["status"]["new"] == "idle"
    assert created["reason"]
    assert updated["entity_version"] == 2
    assert updated["username"] == "supervisor"
    assert updated["reason"] == "name per asset register"
    assert updated["changes"] == [
        {"field": "name", "old": "Reactor R-101", "new": "Reactor R-101 (Hastelloy)"}
    ]
    assert parse_time(updated["at"]).utcoffset() == timedelta(0)
    assert updated["seq"] > created["seq"]


async def test_three_edits_leave_every_version_readable(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """AT-3: after 3 edits, every earlier version (v1..v4) can be rebuilt from the audit."""
    names = ["Reactor R-101", "Reactor R-101 rev A", "Reactor R-101 rev B", "Reactor R-101 rev C"]
    reasons = ["first correction", "second correction", "third correction"]
    for version, (name, reason) in enumerate(zip(names[1:], reasons, strict=True), start=1):
        response = await patch(
            client, actors["admin"], "U-A", {"name": name, "reason": reason}, version
        )
        assert response.status_code == 200, response.text
        assert response.headers["ETag"] == f'"{version + 1}"'
    entries = await audit_of(client, actors["supervisor"], "U-A")
    assert [e["entity_version"] for e in entries] == [1, 2, 3, 4]
    assert [e["reason"] for e in entries[1:]] == reasons
    state: Json = {}
    versions: dict[int, Json] = {}
    for entry in entries:
        for change in entry["changes"]:
            if entry["action"] != "create":
                assert state.get(change["field"]) == change["old"]
            state[change["field"]] = change["new"]
        versions[entry["entity_version"]] = dict(state)
    assert [versions[v]["name"] for v in (1, 2, 3, 4)] == names
    current = (await get(client, actors["admin"], "U-A")).json()
    for field, value in versions[4].items():
        assert current[field] == value, field


# --- status --------------------------------------------------------------------------------------


async def test_status_actions_follow_the_transition_table(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """Operators report status; refused transitions are 409 naming the current status."""
    operator = actors["operator"]
    down = await client.post(
        f"{API}/equipment/U-A/status",
        json={"status": "down", "reason": "agitator seal leak"},
        headers=operator,
    )
    assert down.status_code == 200, down.text
    assert down.json()["status"] == "down"
    assert down.headers["ETag"] == '"2"'
    assert down.json()["is_usable"] is False
    assert "status is down" in down.json()["blocking_reasons"]

    cleaning = await client.post(
        f"{API}/equipment/U-A/status",
        json={"status": "cleaning", "reason": "try cleaning"},
        headers=operator,
    )
    problem = assert_problem(cleaning, 409)
    assert problem["current_status"] == "down"
    assert "down" in problem["detail"]

    running = await client.post(
        f"{API}/equipment/U-A/status",
        json={"status": "running", "reason": "start it"},
        headers=operator,
    )
    assert "running" in assert_problem(running, 409)["detail"]

    current = await get(client, operator, "U-A")
    assert current.json()["status"] == "down"
    assert current.headers["ETag"] == '"2"'
    entries = await audit_of(client, actors["supervisor"], "U-A")
    assert [e["action"] for e in entries] == ["create", "status"]
    assert entries[1]["changes"] == [{"field": "status", "old": "idle", "new": "down"}]
    assert entries[1]["reason"] == "agitator seal leak"
    assert entries[1]["username"] == "operator"


async def test_status_needs_a_reason_and_a_floor_role(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    no_reason = await client.post(
        f"{API}/equipment/U-A/status", json={"status": "down"}, headers=actors["operator"]
    )
    assert "reason" in named_fields(assert_problem(no_reason, 422))
    planner = await client.post(
        f"{API}/equipment/U-A/status",
        json={"status": "down", "reason": "x"},
        headers=actors["planner"],
    )
    assert_problem(planner, 403)
    assert (await get(client, actors["operator"], "U-A")).json()["status"] == "idle"


async def test_status_of_a_non_unit_is_409(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    response = await client.post(
        f"{API}/equipment/WC-A/status",
        json={"status": "down", "reason": "x"},
        headers=actors["operator"],
    )
    assert_problem(response, 409)


# --- qualification (e-signature) -----------------------------------------------------------------


async def test_qa_qualification_returns_signature_manifestation(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """ES-1/ES-2: printed name, UTC time and meaning; ES-3: bound to the new version."""
    until = (clock.now() + timedelta(days=365)).replace(microsecond=0)
    response = await qualify(client, actors["qa"], "U-A", until)
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"2"'
    body = response.json()
    equipment = body["equipment"]
    assert equipment["version"] == 2
    assert parse_time(equipment["qualified_until"]) == until
    assert "not qualified" not in equipment["blocking_reasons"]
    signature = body["signature"]
    assert signature["signer_username"] == "qa"
    assert signature["printed_name"] == "Qa Person"
    assert signature["meaning"] == "approved"
    assert signature["comment"] == "IQ/OQ/PQ report QR-0042 reviewed"
    assert signature["record_type"] == "equipment"
    assert signature["record_id"] == "U-A"
    assert signature["record_version"] == 2
    assert len(signature["record_hash"]) == 64
    assert signature["verification"] == "valid"
    signed_at = parse_time(signature["signed_at"])
    assert signed_at.utcoffset() == timedelta(0)
    manifestation = signature["manifestation"]
    assert "Qa Person" in manifestation
    assert "approved" in manifestation
    assert manifestation.endswith("UTC")
    assert signed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") in manifestation

    listed = await signatures_of(client, actors["supervisor"], "U-A")
    assert [s["id"] for s in listed] == [signature["id"]]
    assert listed[0]["verification"] == "valid"
    entries = await audit_of(client, actors["qa"], "U-A")
    assert [e["action"] for e in entries] == ["create", "sign", "qualify"]
    assert entries[2]["entity_version"] == 2
    assert entries[2]["changes"][0]["field"] == "qualified_until"


async def test_wrong_signature_password_signs_and_changes_nothing(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """ES-4: the server re-authenticates; a wrong password is 401, audited, nothing signed."""
    before = await get(client, actors["qa"], "U-A")
    response = await qualify(
        client, actors["qa"], "U-A", clock.now() + timedelta(days=90), password="wrong-password-1"
    )
    problem = assert_problem(response, 401)
    assert problem["rule"] == "ES-4"
    after = await get(client, actors["qa"], "U-A")
    assert after.headers["ETag"] == before.headers["ETag"] == '"1"'
    assert after.json()["version"] == 1
    assert after.json()["qualified_until"] is None
    entries = await audit_of(client, actors["qa"], "U-A")
    failed = [e for e in entries if e["action"] == "sign_failed"]
    assert len(failed) == 1
    assert failed[0]["username"] == "qa"
    assert [e["action"] for e in entries if e["action"] in {"sign", "qualify"}] == []
    assert await signatures_of(client, actors["qa"], "U-A") == []
    assert await count_signatures(ctx, "U-A") == 0


async def test_signature_meaning_other_than_approved_is_422(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """A qualification approval is signed with the meaning 'approved' only."""
    response = await qualify(
        client, actors["qa"], "U-A", clock.now() + timedelta(days=90), meaning="released"
    )
    assert "signature.meaning" in named_fields(assert_problem(response, 422))
    assert (await get(client, actors["qa"], "U-A")).json()["qualified_until"] is None
    assert await count_signatures(ctx, "U-A") == 0


async def test_qualification_needs_qa_and_a_future_date(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    by_supervisor = await qualify(
        client, actors["supervisor"], "U-A", clock.now() + timedelta(days=90)
    )
    assert_problem(by_supervisor, 403)
    past = await qualify(client, actors["qa"], "U-A", clock.now() - timedelta(days=1))
    assert assert_problem(past, 422)["field"] == "qualified_until"
    assert await count_signatures(ctx, "U-A") == 0


async def test_later_edit_supersedes_the_signature(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """ES-3: a signature binds one version; after an edit it reports 'superseded'."""
    signed = await qualify(client, actors["qa"], "U-A", clock.now() + timedelta(days=200))
    assert signed.status_code == 200, signed.text
    edited = await patch(
        client, actors["supervisor"], "U-A", {"asset_no": "A-0002", "reason": "re-tagged"}, 2
    )
    assert edited.status_code == 200, edited.text
    listed = await signatures_of(client, actors["qa"], "U-A")
    assert len(listed) == 1
    assert listed[0]["record_version"] == 2
    assert listed[0]["verification"] == "superseded"


async def test_tampered_record_invalidates_the_signature(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """ES-3: editing the signed record behind the application's back fails verification."""
    signed = await qualify(client, actors["qa"], "U-A", clock.now() + timedelta(days=200))
    assert signed.status_code == 200, signed.text
    assert (await signatures_of(client, actors["qa"], "U-A"))[0]["verification"] == "valid"
    async with ctx.db.engine.begin() as conn:
        result = await conn.execute(
            text("UPDATE equipment SET name = :name WHERE code = :code"),
            {"name": "Reactor R-101 (edited in SQL)", "code": "U-A"},
        )
        assert result.rowcount == 1
    current = await get(client, actors["qa"], "U-A")
    assert current.json()["name"] == "Reactor R-101 (edited in SQL)"
    assert current.json()["version"] == 2
    listed = await signatures_of(client, actors["qa"], "U-A")
    assert listed[0]["verification"] == "invalid"


async def test_five_wrong_signature_passwords_lock_the_account(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """AC-5: 5 failed signatures in a row lock the account; its sessions end."""
    until = clock.now() + timedelta(days=90)
    for attempt in range(1, 6):
        response = await qualify(client, actors["qa"], "U-A", until, password=f"bad-{attempt}")
        problem = assert_problem(response, 401)
        assert problem["rule"] == "ES-4"
        if attempt < 5:
            user = await client.get(f"{API}/users/qa", headers=actors["admin"])
            assert user.json()["status"] == "active"
            assert user.json()["failed_attempts"] == attempt
    assert "locked" in problem["detail"]
    user = await client.get(f"{API}/users/qa", headers=actors["admin"])
    assert user.status_code == 200
    assert user.json()["status"] == "locked"
    assert user.json()["locked_at"] is not None
    relogin = await client.post(f"{API}/auth/token", data={"username": "qa", "password": PASSWORD})
    assert assert_problem(relogin, 403)["rule"] == "AC-5"
    assert_problem(await client.get(f"{API}/auth/me", headers=actors["qa"]), 401)
    assert (await get(client, actors["admin"], "U-A")).json()["qualified_until"] is None


async def test_times_are_returned_in_utc(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """API.md / TM-1: timestamps are accepted with any offset, stored and returned in UTC,
    on the write responses as well as on reads."""
    india = timezone(timedelta(hours=5, minutes=30))
    due = datetime(2027, 1, 1, 10, 0, tzinfo=india)
    created = await create(
        client, actors["admin"], **unit_body("U-TZ", calibration_due_at=due.isoformat())
    )
    assert created.status_code == 201, created.text
    patched = await patch(
        client,
        actors["admin"],
        "U-TZ",
        {"maintenance_due_at": due.isoformat(), "reason": "maintenance plan"},
        1,
    )
    assert patched.status_code == 200, patched.text
    until = (clock.now() + timedelta(days=100)).astimezone(india).replace(microsecond=0)
    signed = await qualify(client, actors["qa"], "U-TZ", until)
    assert signed.status_code == 200, signed.text
    fetched = await get(client, actors["admin"], "U-TZ")
    samples = [
        ("create", created.json()["calibration_due_at"], due),
        ("patch", patched.json()["maintenance_due_at"], due),
        ("qualify", signed.json()["equipment"]["qualified_until"], until),
        ("get", fetched.json()["qualified_until"], until),
        ("get", fetched.json()["calibration_due_at"], due),
    ]
    not_utc = []
    for where, value, expected in samples:
        parsed = parse_time(value)
        assert parsed == expected, where
        if parsed.utcoffset() != timedelta(0):
            not_utc.append(f"{where} returned {value}")
    assert not_utc == []


async def test_signing_as_someone_else_is_refused(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """ES-5: users sign only as themselves."""
    response = await client.post(
        f"{API}/equipment/U-A/qualify",
        json={
            "qualified_until": (clock.now() + timedelta(days=30)).isoformat(),
            "signature": {"password": PASSWORD, "meaning": "approved", "username": "admin"},
        },
        headers=actors["qa"],
    )
    assert assert_problem(response, 403)["rule"] == "ES-5"
    assert await count_signatures(ctx, "U-A") == 0
    assert (await get(client, actors["qa"], "U-A")).json()["qualified_until"] is None


async def test_a_good_signature_resets_the_failure_count(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """AC-5 counts failures in a row: 4 wrong, 1 right, 4 wrong leaves the account active."""
    until = clock.now() + timedelta(days=90)
    for attempt in range(4):
        wrong = await qualify(client, actors["qa"], "U-A", until, password=f"bad-{attempt}")
        assert_problem(wrong, 401)
    good = await qualify(client, actors["qa"], "U-A", until)
    assert good.status_code == 200, good.text
    user = (await client.get(f"{API}/users/qa", headers=actors["admin"])).json()
    assert user["failed_attempts"] == 0
    for attempt in range(4):
        wrong = await qualify(client, actors["qa"], "U-A", until, password=f"bad-{attempt}")
        assert_problem(wrong, 401)
    user = (await client.get(f"{API}/users/qa", headers=actors["admin"])).json()
    assert user["status"] == "active"
    assert user["failed_attempts"] == 4


# --- usability (PROC-3) --------------------------------------------------------------------------


async def test_overdue_calibration_makes_a_unit_unusable(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """PROC-3: no start on overdue-calibration equipment."""
    past = clock.now() - timedelta(days=1)
    created = await create(
        client, actors["admin"], **unit_body("U-OLD", calibration_due_at=past.isoformat())
    )
    assert created.status_code == 201, created.text
    assert created.json()["is_usable"] is False
    assert "calibration overdue" in created.json()["blocking_reasons"]
    fetched = (await get(client, actors["operator"], "U-OLD")).json()
    assert fetched["is_usable"] is False
    assert "calibration overdue" in fetched["blocking_reasons"]


async def test_qualified_unit_is_usable_until_calibration_lapses(
    client: httpx.AsyncClient,
    actors: Actors,
    clock: FakeClock,
    plant: dict[str, httpx.Response],
) -> None:
    """PROC-3: the same unit goes from usable to blocked when its calibration is overdue."""
    soon = clock.now() + timedelta(days=10)
    patched = await patch(
        client,
        actors["admin"],
        "U-A",
        {"calibration_due_at": soon.isoformat(), "reason": "calibration plan"},
        1,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["blocking_reasons"] == ["not qualified"]
    signed = await qualify(client, actors["qa"], "U-A", clock.now() + timedelta(days=365))
    assert signed.status_code == 200, signed.text
    usable = (await get(client, actors["operator"], "U-A")).json()
    assert usable["is_usable"] is True
    assert usable["blocking_reasons"] == []
    lapsed = await patch(
        client,
        actors["admin"],
        "U-A",
        {"calibration_due_at": (clock.now() - timedelta(hours=1)).isoformat(), "reason": "late"},
        3,
    )
    assert lapsed.status_code == 200, lapsed.text
    body = (await get(client, actors["operator"], "U-A")).json()
    assert body["is_usable"] is False
    assert body["blocking_reasons"] == ["calibration overdue"]
    listed = await client.get(
        f"{API}/equipment", params={"level": "unit"}, headers=actors["operator"]
    )
    assert listed.json()["items"][0]["blocking_reasons"] == ["calibration overdue"]


async def test_non_units_are_never_usable(
    client: httpx.AsyncClient, actors: Actors, plant: dict[str, httpx.Response]
) -> None:
    """Only units run production; other levels report is_usable false with no reasons."""
    for code in ("SITE-A", "WC-A", "RM-A"):
        body = (await get(client, actors["operator"], code)).json()
        assert body["is_usable"] is False
        assert body["blocking_reasons"] == []


# --- AT-1: the change and its audit entry commit together ----------------------------------------


def _enterprise(code: str) -> EquipmentCreate:
    return EquipmentCreate(
        code=code, name="Rollback test", level=EquipmentLevel.enterprise, reason="AT-1 test"
    )


async def _audit_count(ctx: AppContext, code: str) -> int:
    async with ctx.db.sessionmaker() as session:
        result = await session.execute(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.entity_id == code)
        )
        return int(result.scalar_one())


async def test_failed_audit_write_rolls_back_the_change(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AT-1: if the audit write fails, the change rolls back."""
    written_before_audit: list[bool] = []

    async def failing_record(session: Any, *args: Any, **kwargs: Any) -> None:
        written_before_audit.append(await equipment_service.find(session, "ENT-AT1") is not None)
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(audit_service, "record", failing_record)

    async def create_in_one_transaction() -> None:
        async with ctx.db.sessionmaker() as session, session.begin():
            await equipment_service.create_equipment(
                ctx, session, system_principal("test"), _enterprise("ENT-AT1")
            )

    with pytest.raises(RuntimeError, match="audit store unavailable"):
        await create_in_one_transaction()
    assert written_before_audit == [True], "the record was not written before its audit entry"
    async with ctx.db.sessionmaker() as session:
        assert await equipment_service.find(session, "ENT-AT1") is None
    assert await _audit_count(ctx, "ENT-AT1") == 0


async def test_change_and_audit_entry_commit_together(ctx: AppContext) -> None:
    """AT-1: a normal create commits the record and its audit entry in one transaction."""
    async with ctx.db.sessionmaker() as session, session.begin():
        created = await equipment_service.create_equipment(
            ctx, session, system_principal("test"), _enterprise("ENT-AT1")
        )
        assert created.version == 1
    async with ctx.db.sessionmaker() as session:
        found = await equipment_service.find(session, "ENT-AT1")
        assert found is not None
        entries = list(
            (
                await session.execute(select(AuditEntry).where(AuditEntry.entity_id == "ENT-AT1"))
            ).scalars()
        )
    assert [(e.action, e.entity_type, e.entity_version) for e in entries] == [
        ("create", "equipment", 1)
    ]
    assert entries[0].username == "system:test"
    assert entries[0].reason == "AT-1 test"


async def test_rolled_back_transaction_drops_record_and_audit_entry(ctx: AppContext) -> None:
    """AT-1: the audit entry is in the change's transaction, so it rolls back with it."""

    class Abort(Exception):
        pass

    async def create_then_abort() -> None:
        async with ctx.db.sessionmaker() as session, session.begin():
            await equipment_service.create_equipment(
                ctx, session, system_principal("test"), _enterprise("ENT-AT1")
            )
            raise Abort

    with pytest.raises(Abort):
        await create_then_abort()
    async with ctx.db.sessionmaker() as session:
        assert await equipment_service.find(session, "ENT-AT1") is None
    assert await _audit_count(ctx, "ENT-AT1") == 0
