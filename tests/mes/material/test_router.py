"""Material-definition API over HTTP (/api/v1/materials): GTIN-14 check digits and uniqueness
(UDI-1), pint units of measure, moisture exposure, optimistic concurrency and audit (AT-2,
AT-3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from sqlmodel import select

from mes.context import AppContext
from mes.models import MaterialDefinition
from tests.conftest import Actors

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
GTIN_A = "00812345000016"  # GS1 mod-10: check digit 6
GTIN_B = "00812345000023"  # check digit 3

Json = dict[str, Any]


def material(code: str, **extra: Any) -> Json:
    return {"code": code, "name": f"Material {code}", "kind": "monomer", "uom": "kg", **extra}


async def create(
    client: httpx.AsyncClient, headers: Mapping[str, str], body: Json
) -> httpx.Response:
    return await client.post(f"{API}/materials", json=body, headers=dict(headers))


async def patch(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    code: str,
    body: Json,
    version: int | None,
) -> httpx.Response:
    extra = {"If-Match": f'"{version}"'} if version is not None else {}
    return await client.patch(f"{API}/materials/{code}", json=body, headers={**headers, **extra})


def assert_problem(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: Json = response.json()
    assert body["status"] == status
    return body


def messages_for(body: Json, field: str) -> list[str]:
    """Messages a problem body gives for ``field`` (MesError ``field`` or validation errors)."""
    found = [str(body["detail"])] if body.get("field") == field else []
    found += [str(e["message"]) for e in body.get("errors", []) if e["field"] == field]
    return found


async def assert_absent(client: httpx.AsyncClient, actors: Actors, code: str) -> None:
    response = await client.get(f"{API}/materials/{code}", headers=actors["admin"])
    assert_problem(response, 404)


async def audit_of(client: httpx.AsyncClient, actors: Actors, code: str) -> list[Json]:
    response = await client.get(
        f"{API}/audit",
        params={"entity_type": "material", "entity_id": code},
        headers=actors["qa"],
    )
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


# --- create --------------------------------------------------------------------------------------


async def test_create_material(client: httpx.AsyncClient, actors: Actors) -> None:
    """A valid definition with a GTIN-14 is created at version 1 and audited."""
    body = material(
        "LLA",
        name="L-lactide monomer",
        shelf_life_days=730,
        moisture_sensitive=True,
        max_exposure_min=30,
        implant_traceable=True,
        gtin=GTIN_A,
    )
    response = await create(client, actors["supervisor"], body)
    assert response.status_code == 201, response.text
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"{API}/materials/LLA"
    created = response.json()
    for key in ("code", "name", "kind", "uom", "shelf_life_days", "max_exposure_min", "gtin"):
        assert created[key] == body[key], key
    assert created["moisture_sensitive"] is True
    assert created["implant_traceable"] is True
    assert created["is_active"] is True
    assert created["version"] == 1
    fetched = await client.get(f"{API}/materials/LLA", headers=actors["operator"])
    assert fetched.status_code == 200
    assert fetched.json() == created
    entries = await audit_of(client, actors, "LLA")
    assert [(e["action"], e["entity_version"]) for e in entries] == [("create", 1)]
    changes = {c["field"]: c for c in entries[0]["changes"]}
    assert changes["gtin"] == {"field": "gtin", "old": None, "new": GTIN_A}
    assert changes["base_uom"]["new"] == "kg"


@pytest.mark.parametrize(
    ("gtin", "expected"),
    [("00812345000010", 6), ("00812345000029", 3), ("10812345000011", 3)],
)
async def test_gtin_with_wrong_check_digit_is_422(
    client: httpx.AsyncClient, actors: Actors, gtin: str, expected: int
) -> None:
    """UDI-1: the GS1 mod-10 check digit is verified; the problem names the expected digit."""
    response = await create(client, actors["admin"], material("BAD-GTIN", gtin=gtin))
    messages = messages_for(assert_problem(response, 422), "gtin")
    assert messages, response.text
    assert any(f"expected {expected}" in m for m in messages), messages
    await assert_absent(client, actors, "BAD-GTIN")


@pytest.mark.parametrize("gtin", ["0081234500001", "812345000016", "0081234500001X", ""])
async def test_gtin_that_is_not_14_digits_is_422(
    client: httpx.AsyncClient, actors: Actors, gtin: str
) -> None:
    """UDI-1: a GTIN-14 is exactly 14 digits (13-digit GTINs are padded by the sender)."""
    response = await create(client, actors["admin"], material("SHORT-GTIN", gtin=gtin))
    assert messages_for(assert_problem(response, 422), "gtin")
    await assert_absent(client, actors, "SHORT-GTIN")


async def test_gtin_is_unique_across_materials(client: httpx.AsyncClient, actors: Actors) -> None:
    """UDI-1: one GTIN identifies one material; a second claim is a 409 conflict."""
    first = await create(client, actors["admin"], material("SUT-A", kind="suture", gtin=GTIN_A))
    assert first.status_code == 201, first.text
    second = await create(client, actors["admin"], material("SUT-B", kind="suture", gtin=GTIN_A))
    problem = assert_problem(second, 409)
    assert problem["rule"] == "UDI-1"
    assert problem["field"] == "gtin"
    assert "SUT-A" in problem["detail"]
    await assert_absent(client, actors, "SUT-B")


async def test_duplicate_code_is_409(client: httpx.AsyncClient, actors: Actors) -> None:
    assert (await create(client, actors["admin"], material("GA"))).status_code == 201
    again = await create(client, actors["admin"], material("GA", name="Glycolide again"))
    assert_problem(again, 409)
    fetched = await client.get(f"{API}/materials/GA", headers=actors["admin"])
    assert fetched.json()["name"] == "Material GA"


@pytest.mark.parametrize("uom", ["furlong-ish", "bananas", "kg kg", "1/", ""])
async def test_unknown_unit_of_measure_is_422_naming_uom(
    client: httpx.AsyncClient, actors: Actors, uom: str
) -> None:
    """Units of measure are checked with pint; the problem names the uom field."""
    response = await create(client, actors["admin"], material("BAD-UOM", uom=uom))
    assert messages_for(assert_problem(response, 422), "uom"), response.text
    await assert_absent(client, actors, "BAD-UOM")


@pytest.mark.parametrize("uom", ["kg", "mg/L", "each", "g", "m", "mL"])
async def test_pint_units_are_accepted(client: httpx.AsyncClient, actors: Actors, uom: str) -> None:
    response = await create(client, actors["admin"], material("GOOD-UOM", uom=uom))
    assert response.status_code == 201, response.text
    assert response.json()["uom"] == uom


async def test_max_exposure_on_a_non_moisture_sensitive_material_is_422(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    """Exposure limits apply to moisture-sensitive materials only."""
    response = await create(
        client,
        actors["admin"],
        material("FOIL", kind="packaging", uom="each", max_exposure_min=30),
    )
    assert assert_problem(response, 422)["field"] == "max_exposure_min"
    await assert_absent(client, actors, "FOIL")


async def test_clearing_moisture_sensitivity_with_an_exposure_limit_is_422(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    body = material("CL", moisture_sensitive=True, max_exposure_min=60)
    assert (await create(client, actors["admin"], body)).status_code == 201
    response = await patch(
        client, actors["admin"], "CL", {"moisture_sensitive": False, "reason": "re-assessed"}, 1
    )
    assert assert_problem(response, 422)["field"] == "max_exposure_min"
    fetched = await client.get(f"{API}/materials/CL", headers=actors["admin"])
    assert fetched.json()["moisture_sensitive"] is True
    assert fetched.headers["ETag"] == '"1"'


@pytest.mark.parametrize("role", ["machine", "planner", "operator", "qa"])
async def test_only_editors_define_materials(
    client: httpx.AsyncClient, actors: Actors, role: str
) -> None:
    """AC-2: material master data is maintained by supervisors and admins."""
    assert_problem(await create(client, actors[role], material("NOPE")), 403)
    await assert_absent(client, actors, "NOPE")


# --- update --------------------------------------------------------------------------------------


async def test_patch_is_versioned_and_audited(client: httpx.AsyncClient, actors: Actors) -> None:
    """AT-2/AT-3: If-Match required, reason required, field-level old/new recorded."""
    assert (await create(client, actors["admin"], material("DLLA"))).status_code == 201
    editor = actors["supervisor"]
    missing = await patch(client, editor, "DLLA", {"name": "D,L-lactide", "reason": "x"}, None)
    assert_problem(missing, 428)
    no_reason = await patch(client, editor, "DLLA", {"name": "D,L-lactide"}, 1)
    assert_problem(no_reason, 422)
    stale = await patch(client, editor, "DLLA", {"name": "D,L-lactide", "reason": "x"}, 4)
    assert_problem(stale, 412)
    assert stale.headers["ETag"] == '"1"'

    ok = await patch(
        client,
        editor,
        "DLLA",
        {"name": "D,L-lactide monomer", "shelf_life_days": 365, "reason": "supplier spec rev 3"},
        1,
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["ETag"] == '"2"'
    assert ok.json()["name"] == "D,L-lactide monomer"
    assert ok.json()["shelf_life_days"] == 365
    assert ok.json()["version"] == 2

    entries = await audit_of(client, actors, "DLLA")
    assert [(e["action"], e["entity_version"]) for e in entries] == [("create", 1), ("update", 2)]
    update = entries[1]
    assert update["username"] == "supervisor"
    assert update["reason"] == "supplier spec rev 3"
    assert sorted(update["changes"], key=lambda c: c["field"]) == [
        {"field": "name", "old": "Material DLLA", "new": "D,L-lactide monomer"},
        {"field": "shelf_life_days", "old": None, "new": 365},
    ]


async def test_patch_with_same_values_changes_nothing(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    """An edit that changes no value keeps the version and writes no audit entry."""
    assert (await create(client, actors["admin"], material("SNOCT"))).status_code == 201
    response = await patch(
        client, actors["admin"], "SNOCT", {"name": "Material SNOCT", "reason": "no-op"}, 1
    )
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"1"'
    assert len(await audit_of(client, actors, "SNOCT")) == 1


async def test_patch_to_another_materials_gtin_is_409(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    """UDI-1 uniqueness also holds on update."""
    admin = actors["admin"]
    assert (await create(client, admin, material("BOX-A", gtin=GTIN_A))).status_code == 201
    assert (await create(client, admin, material("BOX-B", gtin=GTIN_B))).status_code == 201
    response = await patch(client, admin, "BOX-B", {"gtin": GTIN_A, "reason": "relabel"}, 1)
    assert assert_problem(response, 409)["rule"] == "UDI-1"
    fetched = await client.get(f"{API}/materials/BOX-B", headers=admin)
    assert fetched.json()["gtin"] == GTIN_B


async def test_patch_unknown_material_is_404(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await patch(client, actors["admin"], "NOPE", {"name": "x", "reason": "x"}, 1)
    assert_problem(response, 404)


async def test_get_by_id_also_works(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    """API.md: resources are addressed by business key (materials/{code}); ids are also
    accepted."""
    assert (await create(client, actors["admin"], material("LLA"))).status_code == 201
    async with ctx.db.sessionmaker() as session:
        ident = (
            await session.execute(
                select(MaterialDefinition.id).where(MaterialDefinition.code == "LLA")
            )
        ).scalar_one()
    response = await client.get(f"{API}/materials/{ident}", headers=actors["operator"])
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "LLA"


# --- list ----------------------------------------------------------------------------------------


async def test_list_filters_by_kind(client: httpx.AsyncClient, actors: Actors) -> None:
    admin = actors["admin"]
    for code, kind in (
        ("LLA", "monomer"),
        ("GA", "monomer"),
        ("PGA-R", "resin"),
        ("FOIL", "packaging"),
    ):
        uom = "each" if kind == "packaging" else "kg"
        response = await create(client, admin, material(code, kind=kind, uom=uom))
        assert response.status_code == 201, response.text
    reader = actors["planner"]
    monomers = await client.get(f"{API}/materials", params={"kind": "monomer"}, headers=reader)
    assert monomers.status_code == 200
    assert [m["code"] for m in monomers.json()["items"]] == ["GA", "LLA"]
    assert all(m["kind"] == "monomer" for m in monomers.json()["items"])
    resins = await client.get(f"{API}/materials", params={"kind": "resin"}, headers=reader)
    assert [m["code"] for m in resins.json()["items"]] == ["PGA-R"]
    everything = await client.get(f"{API}/materials", headers=reader)
    assert [m["code"] for m in everything.json()["items"]] == ["FOIL", "GA", "LLA", "PGA-R"]
    bad_kind = await client.get(f"{API}/materials", params={"kind": "unobtainium"}, headers=reader)
    assert_problem(bad_kind, 422)


async def test_list_pages_with_a_cursor(client: httpx.AsyncClient, actors: Actors) -> None:
    codes = [f"M-{i:02d}" for i in range(5)]
    for code in codes:
        assert (await create(client, actors["admin"], material(code))).status_code == 201
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    for _ in range(10):
        page = (await client.get(f"{API}/materials", params=params, headers=actors["qa"])).json()
        seen += [m["code"] for m in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == codes
