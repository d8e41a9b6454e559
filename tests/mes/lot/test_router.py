"""Lot and material-ledger API over HTTP (/api/v1/lots, /material-transactions,
/sterilization-loads): receipt into quarantine (DOMAIN 3.3, AT-1), bad input that writes
nothing, ID-1 consumption eligibility and expiry at use, TR-1/TR-4 ledger arithmetic and
reversals, UDI-2 serials, QA disposition with e-signatures (ES-1, ES-3, ES-4, AC-2), TR-5
sterilization loads, split and merge (DOMAIN 7) and Idempotency-Key replay."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import SQLModel, col, select

from mes.context import AppContext
from mes.genealogy import service as genealogy
from mes.genealogy.schemas import InputLot, ProduceRequest
from mes.models import (
    AuditEntry,
    ESignature,
    GenealogyEdge,
    LoadItem,
    Lot,
    LotStatusTransition,
    MaterialTransaction,
    SerialUnit,
    SterilizationLoad,
    Sublot,
)
from mes.principal import system_principal
from tests.conftest import PASSWORD, Actors, FakeClock, login

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
GTIN_A = "00812345000016"
GTIN_B = "00812345000023"
ME = system_principal("test")

Json = dict[str, Any]

COUNTED: dict[str, type[SQLModel]] = {
    "lot": Lot,
    "material_transaction": MaterialTransaction,
    "lot_status_transition": LotStatusTransition,
    "audit_entry": AuditEntry,
    "e_signature": ESignature,
    "sublot": Sublot,
    "serial_unit": SerialUnit,
    "genealogy_edge": GenealogyEdge,
    "sterilization_load": SterilizationLoad,
    "load_item": LoadItem,
}


# --- helpers -------------------------------------------------------------------------------------


async def counts(ctx: AppContext) -> dict[str, int]:
    """Row counts of every table a lot request may write."""
    out: dict[str, int] = {}
    async with ctx.db.sessionmaker() as session:
        for name, model in COUNTED.items():
            result = await session.execute(select(func.count()).select_from(model))
            out[name] = int(result.scalar_one())
    return out


def assert_problem(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: Json = response.json()
    assert body["status"] == status
    return body


def fields_of(body: Json) -> set[str]:
    """Fields a problem body names (MesError ``field`` or validation ``errors``)."""
    found = {str(e["field"]) for e in body.get("errors", [])}
    if body.get("field"):
        found.add(str(body["field"]))
    return found


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


async def material(
    client: httpx.AsyncClient,
    actors: Actors,
    code: str,
    uom: str = "kg",
    *,
    kind: str = "monomer",
    gtin: str | None = None,
    shelf_life_days: int | None = None,
) -> None:
    body: Json = {"code": code, "name": f"Material {code}", "kind": kind, "uom": uom}
    if gtin is not None:
        body["gtin"] = gtin
    if shelf_life_days is not None:
        body["shelf_life_days"] = shelf_life_days
    response = await client.post(f"{API}/materials", json=body, headers=actors["admin"])
    assert response.status_code == 201, response.text


def receipt(material_code: str, lot_number: str, quantity: str = "100", uom: str = "kg") -> Json:
    return {
        "material_code": material_code,
        "lot_number": lot_number,
        "quantity": quantity,
        "uom": uom,
        "supplier": "Acme Chemicals",
        "supplier_lot": f"S-{lot_number}",
        "coa_ref": f"CoA-{lot_number}",
    }


async def receive_raw(
    client: httpx.AsyncClient, headers: Mapping[str, str], body: Json
) -> httpx.Response:
    return await client.post(f"{API}/lots/receive", json=body, headers=dict(headers))


async def receive(
    client: httpx.AsyncClient,
    actors: Actors,
    material_code: str,
    lot_number: str,
    quantity: str = "100",
    uom: str = "kg",
    **extra: Any,
) -> Json:
    body = {**receipt(material_code, lot_number, quantity, uom), **extra}
    response = await receive_raw(client, actors["operator"], body)
    assert response.status_code == 201, response.text
    created: Json = response.json()
    return created


async def get_lot(
    client: httpx.AsyncClient, actors: Actors, lot: str, material_code: str | None = None
) -> Json:
    params = {"material_code": material_code} if material_code else None
    response = await client.get(f"{API}/lots/{lot}", params=params, headers=actors["operator"])
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def set_status(
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    lot: str,
    status: str,
    *,
    meaning: str | None = None,
    password: str = PASSWORD,
    reason: str = "disposition decision",
    params: Mapping[str, str] | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    body: Json = {"status": status, "reason": reason}
    if meaning is not None:
        body["signature"] = {"password": password, "meaning": meaning}
    return await client.post(
        f"{API}/lots/{lot}/status",
        json=body,
        params=dict(params or {}),
        headers={**headers, **(extra_headers or {})},
    )


async def decide(
    client: httpx.AsyncClient, actors: Actors, lot: str, status: str, meaning: str | None = None
) -> Json:
    """A QA decision that must succeed."""
    response = await set_status(client, actors["qa"], lot, status, meaning=meaning)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def release(client: httpx.AsyncClient, actors: Actors, lot: str) -> Json:
    return await decide(client, actors, lot, "released", "released")


async def post_tx(
    client: httpx.AsyncClient,
    actors: Actors,
    lot: str,
    kind: str,
    quantity: str,
    uom: str = "kg",
    **extra: Any,
) -> httpx.Response:
    body = {"kind": kind, "quantity": quantity, "uom": uom, "reason": f"{kind} for test", **extra}
    return await client.post(
        f"{API}/lots/{lot}/transactions", json=body, headers=actors["operator"]
    )


async def produce(
    client: httpx.AsyncClient,
    actors: Actors,
    material_code: str,
    lot_number: str,
    quantity: str,
    uom: str,
    inputs: list[tuple[str, str, str]],
) -> httpx.Response:
    body = {
        "material_code": material_code,
        "lot_number": lot_number,
        "quantity": quantity,
        "uom": uom,
        "inputs": [{"lot_number": n, "quantity": q, "uom": u} for n, q, u in inputs],
    }
    return await client.post(f"{API}/lots/produce", json=body, headers=actors["operator"])


async def transactions(client: httpx.AsyncClient, actors: Actors, lot: str) -> list[Json]:
    response = await client.get(
        f"{API}/lots/{lot}/transactions", params={"limit": 500}, headers=actors["operator"]
    )
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


async def transitions_of(ctx: AppContext, lot_id: str) -> list[LotStatusTransition]:
    async with ctx.db.sessionmaker() as session:
        rows = await session.execute(
            select(LotStatusTransition)
            .where(LotStatusTransition.lot_id == uuid.UUID(lot_id))
            .order_by(col(LotStatusTransition.seq))
        )
        return list(rows.scalars())


async def audits_of(ctx: AppContext, lot_id: str) -> list[AuditEntry]:
    async with ctx.db.sessionmaker() as session:
        rows = await session.execute(
            select(AuditEntry)
            .where(AuditEntry.entity_type == "lot", AuditEntry.entity_id == lot_id)
            .order_by(col(AuditEntry.seq))
        )
        return list(rows.scalars())


async def plant_with_sterilizer(client: httpx.AsyncClient, actors: Actors) -> None:
    """Enterprise / site / area / work center / sterilizer unit S-1 through the API."""
    admin = actors["admin"]
    response = await client.post(
        f"{API}/equipment-classes", json={"code": "EO", "name": "EtO sterilizer"}, headers=admin
    )
    assert response.status_code == 201, response.text
    nodes: list[Json] = [
        {"code": "ENT", "name": "Enterprise", "level": "enterprise"},
        {"code": "SITE", "name": "Core production", "level": "site", "parent_code": "ENT"},
        {"code": "STER", "name": "Sterilization", "level": "area", "parent_code": "SITE"},
        {"code": "EO-CELL", "name": "EtO cell", "level": "work_center", "parent_code": "STER"},
        {
            "code": "S-1",
            "name": "Sterilizer S-1",
            "level": "unit",
            "parent_code": "EO-CELL",
            "equipment_class": "EO",
        },
    ]
    for node in nodes:
        response = await client.post(f"{API}/equipment", json=node, headers=admin)
        assert response.status_code == 201, response.text


@pytest.fixture
async def resin(client: httpx.AsyncClient, actors: Actors) -> None:
    """Materials: LLA monomer (kg), RES resin (kg), SUT suture (each, GTIN A)."""
    await material(client, actors, "LLA", "kg", shelf_life_days=730)
    await material(client, actors, "RES", "kg", kind="resin", shelf_life_days=365)
    await material(client, actors, "SUT", "each", kind="suture", gtin=GTIN_A)


# --- receipt -------------------------------------------------------------------------------------


async def test_receipt_enters_quarantine_with_transition_and_audit(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3.3 new -> quarantine at receipt; TR-1 a received ledger row; AT-1 the lot and
    its audit entry are written together."""
    before = await counts(ctx)
    response = await receive_raw(client, actors["operator"], receipt("LLA", "LLA-1", "100"))
    assert response.status_code == 201, response.text
    lot = response.json()
    assert lot["status"] == "quarantine"
    assert lot["origin"] == "received"
    assert lot["material_code"] == "LLA"
    assert lot["uom"] == "kg"
    assert dec(lot["quantity"]) == Decimal("100")
    assert dec(lot["initial_quantity"]) == Decimal("100")
    assert lot["held_from_status"] is None
    assert response.headers["Location"] == f"{API}/lots/{lot['id']}"
    assert response.headers["ETag"] == f'"{lot["version"]}"'
    after = await counts(ctx)
    assert after["lot"] == before["lot"] + 1
    assert after["material_transaction"] == before["material_transaction"] + 1
    assert after["lot_status_transition"] == before["lot_status_transition"] + 1

    [transition] = await transitions_of(ctx, lot["id"])
    assert (transition.from_status, transition.to_status) == (None, "quarantine")
    assert transition.username == "operator"
    assert transition.source == "received"
    audit = await audits_of(ctx, lot["id"])
    assert [(a.action, a.username, a.entity_version) for a in audit] == [
        ("create", "operator", lot["version"])
    ]
    changes = {c["field"]: c for c in audit[0].changes}
    assert changes["status"]["new"] == "quarantine"
    assert changes["lot_number"]["new"] == "LLA-1"

    [tx] = await transactions(client, actors, "LLA-1")
    assert tx["kind"] == "received"
    assert dec(tx["quantity"]) == Decimal("100")
    assert tx["username"] == "operator"
    fetched = await get_lot(client, actors, lot["id"])
    assert fetched["lot_number"] == "LLA-1"
    assert fetched["status"] == "quarantine"


async def test_receipt_returns_quantities_exactly(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """Quantities are Decimal: a receipt with many significant digits is answered, and read
    back, without binary floating-point rounding."""
    quantity = "12345678901234.123456"
    created = await receive(client, actors, "LLA", "LLA-BIG", quantity)
    assert dec(created["quantity"]) == Decimal(quantity)
    fetched = await get_lot(client, actors, "LLA-BIG")
    assert dec(fetched["quantity"]) == Decimal(quantity)


async def test_receipt_in_a_convertible_unit_is_stored_in_the_material_unit(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """A kg material received in g is stored in kg; the ledger keeps what was entered."""
    created = await receive(client, actors, "LLA", "LLA-G", "2500", "g")
    assert created["uom"] == "kg"
    assert dec(created["quantity"]) == Decimal("2.5")
    [tx] = await transactions(client, actors, "LLA-G")
    assert dec(tx["quantity"]) == Decimal("2.5")
    assert (dec(tx["entered_quantity"]), tx["entered_uom"]) == (Decimal("2500"), "g")


async def test_receipt_is_for_stores_roles_only(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """AC-2: QA, planners, admins and machines do not receive material."""
    before = await counts(ctx)
    for role in ("qa", "planner", "admin", "machine"):
        response = await receive_raw(client, actors[role], receipt("LLA", "LLA-X"))
        body = assert_problem(response, 403)
        assert body["rule"] == "AC-2"
    assert_problem(await receive_raw(client, actors["anonymous"], receipt("LLA", "LLA-X")), 401)
    assert await counts(ctx) == before


async def test_receipt_of_unknown_material_is_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    before = await counts(ctx)
    body = assert_problem(await receive_raw(client, actors["operator"], receipt("NOPE", "X")), 422)
    assert "material_code" in fields_of(body)
    assert await counts(ctx) == before


async def test_idempotency_key_replays_the_receipt(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """A retried receipt with the same Idempotency-Key returns the first answer and creates
    one lot; the same key with another body is refused."""
    before = await counts(ctx)
    headers = {**actors["operator"], "Idempotency-Key": "rcv-LLA-7"}
    body = receipt("LLA", "LLA-7", "40")
    first = await receive_raw(client, headers, body)
    second = await receive_raw(client, headers, body)
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.headers["Location"] == first.headers["Location"]
    after = await counts(ctx)
    assert after["lot"] == before["lot"] + 1
    assert after["material_transaction"] == before["material_transaction"] + 1
    other = await receive_raw(client, headers, receipt("LLA", "LLA-8", "40"))
    problem = assert_problem(other, 422)
    assert "header.Idempotency-Key" in fields_of(problem)
    assert await counts(ctx) == after


# --- bad input writes nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "role", "body"),
    [
        ("GET", "", "operator", None),
        ("POST", "/status", "qa", {"status": "on_hold", "reason": "suspect"}),
        ("GET", "/transactions", "operator", None),
        (
            "POST",
            "/transactions",
            "operator",
            {"kind": "scrapped", "quantity": "1", "uom": "kg", "reason": "spill"},
        ),
        ("GET", "/genealogy", "qa", None),
        ("GET", "/sublots", "operator", None),
        ("POST", "/sublots", "operator", {"code": "D1", "quantity": "1", "uom": "kg"}),
        ("GET", "/serials", "operator", None),
        (
            "POST",
            "/split",
            "operator",
            {"parts": [{"lot_number": "N-A", "quantity": "1", "uom": "kg"}], "reason": "split"},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_unknown_lot_is_404(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    resin: None,
    method: str,
    suffix: str,
    role: str,
    body: Json | None,
) -> None:
    """An unknown lot number answers 404 and writes nothing."""
    await receive(client, actors, "LLA", "LLA-1")
    before = await counts(ctx)
    response = await client.request(
        method, f"{API}/lots/NOPE-1{suffix}", json=body, headers=actors[role]
    )
    problem = assert_problem(response, 404)
    assert "NOPE-1" in problem["detail"]
    assert await counts(ctx) == before


async def test_unknown_input_lot_in_production_is_404(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    before = await counts(ctx)
    response = await produce(client, actors, "RES", "RES-1", "1", "kg", [("NOPE", "1", "kg")])
    problem = assert_problem(response, 404)
    assert "inputs[0].lot_number" in fields_of(problem)
    assert await counts(ctx) == before


@pytest.mark.parametrize("quantity", ["-5", "0", "-0.000001"])
async def test_negative_receipt_quantity_is_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None, quantity: str
) -> None:
    """Quantities are positive; the problem names the field."""
    before = await counts(ctx)
    response = await receive_raw(client, actors["operator"], receipt("LLA", "LLA-1", quantity))
    assert "quantity" in fields_of(assert_problem(response, 422))
    assert await counts(ctx) == before


@pytest.mark.parametrize("kind", ["sampled", "scrapped", "shipped", "transferred", "returned"])
async def test_negative_transaction_quantity_is_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None, kind: str
) -> None:
    """Only adjustments carry a sign; any other movement with a negative quantity is 422."""
    await receive(client, actors, "LLA", "LLA-1")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    response = await post_tx(
        client, actors, "LLA-1", kind, "-1", consignee="Hospital", location_to="WH-2"
    )
    assert "quantity" in fields_of(assert_problem(response, 422))
    assert await counts(ctx) == before
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("100")


async def test_negative_production_and_container_quantities_are_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    await receive(client, actors, "LLA", "LLA-1")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    bad_input = await produce(client, actors, "RES", "RES-1", "1", "kg", [("LLA-1", "-1", "kg")])
    assert "inputs.0.quantity" in fields_of(assert_problem(bad_input, 422))
    bad_output = await produce(client, actors, "RES", "RES-1", "-1", "kg", [("LLA-1", "1", "kg")])
    assert "quantity" in fields_of(assert_problem(bad_output, 422))
    sublot = await client.post(
        f"{API}/lots/LLA-1/sublots",
        json={"code": "D1", "quantity": "-1", "uom": "kg"},
        headers=actors["operator"],
    )
    assert "quantity" in fields_of(assert_problem(sublot, 422))
    split = await client.post(
        f"{API}/lots/LLA-1/split",
        json={"parts": [{"lot_number": "A", "quantity": "-1", "uom": "kg"}], "reason": "x"},
        headers=actors["operator"],
    )
    assert "parts.0.quantity" in fields_of(assert_problem(split, 422))
    assert await counts(ctx) == before


async def test_unit_mismatch_is_422_naming_uom(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """A kg material cannot be received, scrapped or consumed in 'each' (or a non-unit)."""
    before = await counts(ctx)
    each = await receive_raw(client, actors["operator"], receipt("LLA", "LLA-1", "5", "each"))
    problem = assert_problem(each, 422)
    assert "uom" in fields_of(problem)
    assert "each" in problem["detail"]
    junk = await receive_raw(client, actors["operator"], receipt("LLA", "LLA-1", "5", "parsecs!"))
    assert "uom" in fields_of(assert_problem(junk, 422))
    assert await counts(ctx) == before

    await receive(client, actors, "LLA", "LLA-1")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    scrap = await post_tx(client, actors, "LLA-1", "scrapped", "1", "each")
    assert "uom" in fields_of(assert_problem(scrap, 422))
    consume = await produce(client, actors, "RES", "RES-1", "1", "kg", [("LLA-1", "1", "m")])
    assert "inputs[0].uom" in fields_of(assert_problem(consume, 422))
    output = await produce(client, actors, "RES", "RES-1", "1", "each", [("LLA-1", "1", "kg")])
    assert "uom" in fields_of(assert_problem(output, 422))
    assert await counts(ctx) == before


async def test_production_beyond_remaining_is_409_tr4(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-4: consuming more than a lot has left is refused; no output lot, no ledger rows."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    response = await produce(client, actors, "RES", "RES-1", "9", "kg", [("LLA-1", "10.5", "kg")])
    problem = assert_problem(response, 409)
    assert problem["rule"] == "TR-4"
    assert "quantity" in fields_of(problem)
    assert dec(problem["remaining"]) == Decimal("10")
    assert await counts(ctx) == before
    lot = await get_lot(client, actors, "LLA-1")
    assert dec(lot["quantity"]) == Decimal("10")
    assert lot["status"] == "released"
    missing = await client.get(f"{API}/lots/RES-1", headers=actors["operator"])
    assert_problem(missing, 404)


async def test_scrap_beyond_remaining_is_409_tr4(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-4: scrapping more than is left is refused; scrapping exactly what is left is not."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    before = await counts(ctx)
    problem = assert_problem(await post_tx(client, actors, "LLA-1", "scrapped", "10.000001"), 409)
    assert problem["rule"] == "TR-4"
    assert await counts(ctx) == before
    all_of_it = await post_tx(client, actors, "LLA-1", "scrapped", "10")
    assert all_of_it.status_code == 201, all_of_it.text
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("0")
    again = assert_problem(await post_tx(client, actors, "LLA-1", "sampled", "0.000001"), 409)
    assert again["rule"] == "TR-4"


async def test_duplicate_serials_are_409_udi2(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """UDI-2: a serial is unique per GTIN, within one request and across lots."""
    await receive(client, actors, "SUT", "SUT-1", "10", "each")
    await receive(client, actors, "SUT", "SUT-2", "10", "each")
    url = f"{API}/lots/{{}}/serials"
    before = await counts(ctx)
    twice = await client.post(
        url.format("SUT-1"), json={"serials": ["SN1", "SN2", "SN1"]}, headers=actors["operator"]
    )
    problem = assert_problem(twice, 409)
    assert problem["rule"] == "UDI-2"
    assert "SN1" in problem["detail"]
    assert await counts(ctx) == before

    ok = await client.post(
        url.format("SUT-1"), json={"serials": ["SN1", "SN2"]}, headers=actors["operator"]
    )
    assert ok.status_code == 201, ok.text
    assert [(s["gtin"], s["serial"]) for s in ok.json()] == [(GTIN_A, "SN1"), (GTIN_A, "SN2")]
    before = await counts(ctx)
    reused = await client.post(
        url.format("SUT-2"), json={"serials": ["SN3", "SN2"]}, headers=actors["operator"]
    )
    problem = assert_problem(reused, 409)
    assert problem["rule"] == "UDI-2"
    assert "SN2" in problem["detail"]
    same_lot = await client.post(
        url.format("SUT-1"), json={"serials": ["SN1"]}, headers=actors["operator"]
    )
    assert assert_problem(same_lot, 409)["rule"] == "UDI-2"
    assert await counts(ctx) == before
    listed = await client.get(url.format("SUT-2"), headers=actors["operator"])
    assert listed.json()["items"] == []


async def test_same_serial_under_another_gtin_is_allowed(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """UDI-2: uniqueness is per GTIN, not global."""
    await material(client, actors, "PK", "each", kind="device", gtin=GTIN_B)
    await receive(client, actors, "SUT", "SUT-1", "5", "each")
    await receive(client, actors, "PK", "PK-1", "5", "each")
    for lot in ("SUT-1", "PK-1"):
        response = await client.post(
            f"{API}/lots/{lot}/serials", json={"serials": ["0001"]}, headers=actors["operator"]
        )
        assert response.status_code == 201, response.text
    listed = await client.get(f"{API}/lots/PK-1/serials", headers=actors["qa"])
    assert [(s["gtin"], s["serial"]) for s in listed.json()["items"]] == [(GTIN_B, "0001")]


async def test_serials_need_a_gtin_and_a_unit_each(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """UDI-1/UDI-2: a material without a GTIN is not serialised; a lot of n units takes at
    most n serials; serials are CSET 82, at most 20 characters."""
    await receive(client, actors, "LLA", "LLA-1")
    await receive(client, actors, "SUT", "SUT-1", "2", "each")
    before = await counts(ctx)
    no_gtin = await client.post(
        f"{API}/lots/LLA-1/serials", json={"serials": ["SN1"]}, headers=actors["operator"]
    )
    assert_problem(no_gtin, 409)
    too_many = await client.post(
        f"{API}/lots/SUT-1/serials", json={"serials": ["A", "B", "C"]}, headers=actors["operator"]
    )
    assert_problem(too_many, 409)
    for bad in ("SN 1", "S" * 21, "SN#1"):
        response = await client.post(
            f"{API}/lots/SUT-1/serials", json={"serials": [bad]}, headers=actors["operator"]
        )
        assert assert_problem(response, 422)["errors"][0]["field"] == "serials.0", bad
    assert await counts(ctx) == before


async def test_lot_number_is_unique_per_material(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 2.1: a lot number is unique per material definition, not globally; a number
    used by two materials must be qualified with ?material_code=."""
    first = await receive(client, actors, "LLA", "L-100", "10")
    before = await counts(ctx)
    duplicate = await receive_raw(client, actors["operator"], receipt("LLA", "L-100", "5"))
    assert "lot_number" in fields_of(assert_problem(duplicate, 409))
    assert await counts(ctx) == before
    other = await receive(client, actors, "RES", "L-100", "7")
    assert other["id"] != first["id"]

    ambiguous = await client.get(f"{API}/lots/L-100", headers=actors["operator"])
    problem = assert_problem(ambiguous, 409)
    assert "material_code" in fields_of(problem)
    assert "material" in problem["detail"]
    by_res = await get_lot(client, actors, "L-100", "RES")
    assert (by_res["material_code"], dec(by_res["quantity"])) == ("RES", Decimal("7"))
    by_lla = await get_lot(client, actors, "L-100", "LLA")
    assert (by_lla["id"], dec(by_lla["quantity"])) == (first["id"], Decimal("10"))
    by_id = await get_lot(client, actors, other["id"])
    assert by_id["material_code"] == "RES"

    before = await counts(ctx)
    scrap = await post_tx(client, actors, "L-100", "scrapped", "1")
    assert "material_code" in fields_of(assert_problem(scrap, 409))
    assert await counts(ctx) == before
    scrap = await client.post(
        f"{API}/lots/L-100/transactions",
        params={"material_code": "RES"},
        json={"kind": "scrapped", "quantity": "1", "uom": "kg", "reason": "spill"},
        headers=actors["operator"],
    )
    assert scrap.status_code == 201, scrap.text
    assert dec((await get_lot(client, actors, "L-100", "RES"))["quantity"]) == Decimal("6")
    assert dec((await get_lot(client, actors, "L-100", "LLA"))["quantity"]) == Decimal("10")
    listed = await client.get(
        f"{API}/lots", params={"material_code": "RES"}, headers=actors["planner"]
    )
    assert [x["id"] for x in listed.json()["items"]] == [other["id"]]


# --- ID-1: what may be consumed ------------------------------------------------------------------


async def _to_status(client: httpx.AsyncClient, actors: Actors, lot: str, status: str) -> None:
    if status == "on_hold":
        await decide(client, actors, lot, "on_hold")
    elif status == "rejected":
        await decide(client, actors, lot, "rejected", "rejected")
    elif status == "conditionally_released":
        await decide(client, actors, lot, "conditionally_released", "released")
    elif status == "released_then_held":
        await release(client, actors, lot)
        await decide(client, actors, lot, "on_hold")


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("quarantine", "quarantine"),
        ("on_hold", "on_hold"),
        ("released_then_held", "on_hold"),
        ("rejected", "rejected"),
        ("conditionally_released", "conditionally_released"),
    ],
)
async def test_consuming_an_unreleased_lot_is_409_id1(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    resin: None,
    status: str,
    shown: str,
) -> None:
    """ID-1, DOMAIN 3.3: consumption accepts released lots only (conditionally released
    only where the BOM line allows it, which a plain production request does not)."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    await _to_status(client, actors, "LLA-1", status)
    before = await counts(ctx)
    response = await produce(client, actors, "RES", "RES-1", "1", "kg", [("LLA-1", "1", "kg")])
    problem = assert_problem(response, 409)
    assert problem["rule"] == "ID-1"
    assert problem["current_status"] == shown
    assert shown in problem["detail"] or shown.replace("_", " ") in problem["detail"]
    assert await counts(ctx) == before
    lot = await get_lot(client, actors, "LLA-1")
    assert (lot["status"], dec(lot["quantity"])) == (shown, Decimal("10"))


async def test_consuming_a_lot_past_its_expiry_is_409_id1(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, clock: FakeClock, resin: None
) -> None:
    """ID-1, DOMAIN 3.3 released -> expired 'at use': a released lot whose expiry has passed
    is refused at consumption."""
    past = (clock.now() - timedelta(days=1)).isoformat()
    await receive(client, actors, "LLA", "LLA-OLD", "10", expires_at=past)
    await release(client, actors, "LLA-OLD")
    before = await counts(ctx)
    response = await produce(client, actors, "RES", "RES-1", "1", "kg", [("LLA-OLD", "1", "kg")])
    problem = assert_problem(response, 409)
    assert problem["rule"] == "ID-1"
    assert "expired" in problem["detail"]
    assert await counts(ctx) == before


async def test_a_lot_expires_while_in_stock(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, clock: FakeClock, resin: None
) -> None:
    """ID-1: the same lot is consumable before its expiry and refused once time passes it."""
    soon = (clock.now() + timedelta(days=1)).isoformat()
    await receive(client, actors, "LLA", "LLA-1", "10", expires_at=soon)
    await release(client, actors, "LLA-1")
    ok = await produce(client, actors, "RES", "RES-1", "1", "kg", [("LLA-1", "1", "kg")])
    assert ok.status_code == 201, ok.text
    clock.advance(timedelta(days=2))
    headers = await login(client, "operator")  # the earlier session has idled out (AC-6)
    before = await counts(ctx)
    response = await client.post(
        f"{API}/lots/produce",
        json={
            "material_code": "RES",
            "lot_number": "RES-2",
            "quantity": "1",
            "uom": "kg",
            "inputs": [{"lot_number": "LLA-1", "quantity": "1", "uom": "kg"}],
        },
        headers=headers,
    )
    problem = assert_problem(response, 409)
    assert problem["rule"] == "ID-1"
    assert "expired" in problem["detail"]
    assert await counts(ctx) == before


async def test_conditionally_released_lot_needs_an_allowing_bom_line(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3.3: a conditionally released lot is consumed only where the BOM line sets
    allow_conditional (the service flag); the plain API refuses it (ID-1)."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    await decide(client, actors, "LLA-1", "conditionally_released", "released")
    refused = await produce(client, actors, "RES", "RES-1", "4", "kg", [("LLA-1", "4", "kg")])
    assert assert_problem(refused, 409)["rule"] == "ID-1"
    async with ctx.db.sessionmaker() as session, session.begin():
        request = ProduceRequest(
            material_code="RES",
            lot_number="RES-1",
            quantity=Decimal("4"),
            uom="kg",
            inputs=[InputLot(lot_number="LLA-1", quantity=Decimal("4"), uom="kg")],
        )
        _, inputs, output = await genealogy.produce(
            ctx, session, ME, request, allow_conditional=True
        )
        assert [x.lot_number for x in inputs] == ["LLA-1"]
        assert output.status == "quarantine"
    lot = await get_lot(client, actors, "LLA-1")
    assert (lot["status"], dec(lot["quantity"])) == ("conditionally_released", Decimal("6"))
    produced = await get_lot(client, actors, "RES-1")
    assert dec(produced["quantity"]) == Decimal("4")


async def test_production_consumes_released_inputs_and_links_them(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-1: one execution writes a consumed row per input and one produced row; the output
    enters quarantine; fully consuming a released lot marks it consumed (DOMAIN 3.3)."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    await receive(client, actors, "LLA", "LLA-2", "30")
    await release(client, actors, "LLA-1")
    await release(client, actors, "LLA-2")
    response = await produce(
        client, actors, "RES", "RES-1", "38", "kg", [("LLA-1", "10", "kg"), ("LLA-2", "29", "kg")]
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["consumed"] == ["LLA-1", "LLA-2"]
    assert result["produced"] == ["RES-1"]

    used_up = await get_lot(client, actors, "LLA-1")
    assert (used_up["status"], dec(used_up["quantity"])) == ("consumed", Decimal("0"))
    last = (await transitions_of(ctx, used_up["id"]))[-1]
    assert (last.from_status, last.to_status, last.source) == ("released", "consumed", "system")
    partly = await get_lot(client, actors, "LLA-2")
    assert (partly["status"], dec(partly["quantity"])) == ("released", Decimal("1"))
    output = await get_lot(client, actors, "RES-1")
    assert (output["status"], output["origin"]) == ("quarantine", "produced")
    assert output["execution_id"] == result["execution_id"]
    consumed = (await transactions(client, actors, "LLA-2"))[-1]
    assert (consumed["kind"], dec(consumed["quantity"])) == ("consumed", Decimal("-29"))
    assert consumed["execution_id"] == result["execution_id"]
    trace = await client.get(f"{API}/lots/RES-1/genealogy", headers=actors["qa"])
    assert {n["lot_number"] for n in trace.json()["nodes"]} == {"RES-1", "LLA-1", "LLA-2"}


# --- disposition (DOMAIN 3.3, ES-1..ES-4, AC-2) --------------------------------------------------


async def test_qa_releases_with_an_e_signature(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3.3 quarantine -> released: QA, e-signed 'released'; the answer shows the
    manifestation (ES-2), the signature binds the new lot version (ES-3) and the transition
    row points at it."""
    lot = await receive(client, actors, "LLA", "LLA-1")
    response = await set_status(
        client, actors["qa"], "LLA-1", "released", meaning="released", reason="CoA reviewed"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lot"]["status"] == "released"
    assert body["lot"]["version"] == lot["version"] + 1
    assert response.headers["ETag"] == f'"{lot["version"] + 1}"'
    sig = body["signature"]
    assert sig["meaning"] == "released"
    assert sig["signer_username"] == "qa"
    assert sig["printed_name"] == "Qa Person"
    assert sig["record_type"] == "lot"
    assert sig["record_id"] == lot["id"]
    assert sig["record_version"] == lot["version"] + 1
    assert sig["manifestation"].startswith("Qa Person (qa) - released - ")
    assert sig["manifestation"].endswith(" UTC")
    assert sig["verification"] == "valid"

    assert (await get_lot(client, actors, "LLA-1"))["status"] == "released"
    transitions = await transitions_of(ctx, lot["id"])
    assert [(t.from_status, t.to_status) for t in transitions] == [
        (None, "quarantine"),
        ("quarantine", "released"),
    ]
    assert transitions[-1].signature_id == uuid.UUID(sig["id"])
    assert (transitions[-1].username, transitions[-1].reason) == ("qa", "CoA reviewed")
    actions = [a.action for a in await audits_of(ctx, lot["id"])]
    assert actions == ["create", "sign", "status"]


async def test_release_without_a_signature_is_428(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    lot = await receive(client, actors, "LLA", "LLA-1")
    before = await counts(ctx)
    problem = assert_problem(await set_status(client, actors["qa"], "LLA-1", "released"), 428)
    assert "signature" in fields_of(problem)
    assert await counts(ctx) == before
    after = await get_lot(client, actors, "LLA-1")
    assert (after["status"], after["version"]) == ("quarantine", lot["version"])


async def test_release_with_a_wrong_password_is_401_and_changes_nothing(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """ES-4: the server re-authenticates the signer; a wrong password signs nothing and
    leaves the lot as it was (the failed attempt itself is audited, AC-5)."""
    lot = await receive(client, actors, "LLA", "LLA-1")
    before = await counts(ctx)
    response = await set_status(
        client, actors["qa"], "LLA-1", "released", meaning="released", password="wrong-password"
    )
    problem = assert_problem(response, 401)
    assert problem["rule"] == "ES-4"
    after = await counts(ctx)
    assert {k: v for k, v in after.items() if k != "audit_entry"} == {
        k: v for k, v in before.items() if k != "audit_entry"
    }
    current = await get_lot(client, actors, "LLA-1")
    assert (current["status"], current["version"]) == ("quarantine", lot["version"])
    assert [a.action for a in await audits_of(ctx, lot["id"])] == ["create", "sign_failed"]


@pytest.mark.parametrize("role", ["operator", "planner", "admin", "machine"])
async def test_disposition_is_refused_to_other_roles(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None, role: str
) -> None:
    """AC-2: only QA (and a supervisor placing a hold) decide dispositions; admin never
    approves."""
    await receive(client, actors, "LLA", "LLA-1")
    before = await counts(ctx)
    for status, meaning in (("released", "released"), ("on_hold", None)):
        response = await set_status(client, actors[role], "LLA-1", status, meaning=meaning)
        assert assert_problem(response, 403)["rule"] == "AC-2"
    assert await counts(ctx) == before
    assert (await get_lot(client, actors, "LLA-1"))["status"] == "quarantine"


async def test_supervisor_may_hold_but_not_release(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    """DOMAIN 3.3, AC-2: a supervisor places a hold without a signature but cannot release,
    even with a valid signature."""
    await create_supervisor_material(client, actors)
    await receive(client, actors, "LLA", "LLA-1")
    await receive(client, actors, "LLA", "LLA-2")
    before = await counts(ctx)
    refused = await set_status(
        client, actors["supervisor"], "LLA-1", "released", meaning="released"
    )
    assert assert_problem(refused, 403)["rule"] == "AC-2"
    assert await counts(ctx) == before

    held = await set_status(client, actors["supervisor"], "LLA-2", "on_hold", reason="dropped")
    assert held.status_code == 200, held.text
    body = held.json()
    assert body["signature"] is None
    assert (body["lot"]["status"], body["lot"]["held_from_status"]) == ("on_hold", "quarantine")
    last = (await transitions_of(ctx, body["lot"]["id"]))[-1]
    assert (last.from_status, last.to_status, last.username) == (
        "quarantine",
        "on_hold",
        "supervisor",
    )
    assert last.signature_id is None


async def create_supervisor_material(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.post(
        f"{API}/materials",
        json={"code": "LLA", "name": "L-lactide", "kind": "monomer", "uom": "kg"},
        headers=actors["supervisor"],
    )
    assert response.status_code == 201, response.text


async def test_lifting_a_hold_returns_to_the_held_from_status(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3.3 on_hold -> previous: QA, e-signed 'approved'; lifting a hold cannot skip
    the release decision."""
    lot = await receive(client, actors, "LLA", "LLA-1")
    await release(client, actors, "LLA-1")
    await decide(client, actors, "LLA-1", "on_hold")
    before = await counts(ctx)
    wrong_meaning = await set_status(client, actors["qa"], "LLA-1", "released", meaning="released")
    assert "signature.meaning" in fields_of(assert_problem(wrong_meaning, 422))
    assert await counts(ctx) == before
    lifted = await set_status(client, actors["qa"], "LLA-1", "released", meaning="approved")
    assert lifted.status_code == 200, lifted.text
    body = lifted.json()
    assert (body["lot"]["status"], body["lot"]["held_from_status"]) == ("released", None)
    assert body["signature"]["meaning"] == "approved"
    assert body["signature"]["verification"] == "valid"
    assert [(t.from_status, t.to_status) for t in await transitions_of(ctx, lot["id"])] == [
        (None, "quarantine"),
        ("quarantine", "released"),
        ("released", "on_hold"),
        ("on_hold", "released"),
    ]

    await receive(client, actors, "LLA", "LLA-2")
    await decide(client, actors, "LLA-2", "on_hold")
    before = await counts(ctx)
    skip = await set_status(client, actors["qa"], "LLA-2", "released", meaning="approved")
    assert assert_problem(skip, 409)["current_status"] == "on_hold"
    assert await counts(ctx) == before
    back = await decide(client, actors, "LLA-2", "quarantine", "approved")
    assert back["lot"]["status"] == "quarantine"


async def test_invalid_transition_is_409_naming_the_current_status(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3: unlisted transitions (released -> quarantine) are rejected."""
    await receive(client, actors, "LLA", "LLA-1")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    response = await set_status(client, actors["qa"], "LLA-1", "quarantine", meaning="approved")
    problem = assert_problem(response, 409)
    assert problem["current_status"] == "released"
    assert "quarantine" in problem["detail"]
    for status in ("consumed", "expired", "shipped"):
        response = await set_status(client, actors["qa"], "LLA-1", status, meaning="approved")
        assert assert_problem(response, 409)["current_status"] == "released"
    assert await counts(ctx) == before
    assert (await get_lot(client, actors, "LLA-1"))["status"] == "released"


async def test_stale_if_match_is_412(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """A disposition based on an old version of the lot is refused."""
    lot = await receive(client, actors, "LLA", "LLA-1")
    await post_tx(client, actors, "LLA-1", "sampled", "1")
    before = await counts(ctx)
    response = await set_status(
        client,
        actors["qa"],
        "LLA-1",
        "on_hold",
        extra_headers={"If-Match": f'"{lot["version"]}"'},
    )
    assert_problem(response, 412)
    assert await counts(ctx) == before


# --- ledger movements ----------------------------------------------------------------------------


async def test_sample_scrap_adjust_transfer_follow_remaining(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 7 mass balance: remaining = in - sampled - scrapped +/- adjusted; transfers
    move no quantity; every movement is a ledger row, every quantity change audited."""
    lot = await receive(client, actors, "LLA", "LLA-1", "100")
    steps = [
        ({"kind": "sampled", "quantity": "2"}, "-2", "98"),
        ({"kind": "scrapped", "quantity": "3"}, "-3", "95"),
        ({"kind": "adjusted", "quantity": "-5"}, "-5", "90"),
        ({"kind": "adjusted", "quantity": "1.5"}, "1.5", "91.5"),
        ({"kind": "transferred", "quantity": "10", "location_to": "WH-2"}, "0", "91.5"),
        ({"kind": "returned", "quantity": "0.5"}, "0.5", "92"),
    ]
    for body, delta, left in steps:
        extra = {k: v for k, v in body.items() if k not in {"kind", "quantity"}}
        response = await post_tx(client, actors, "LLA-1", body["kind"], body["quantity"], **extra)
        assert response.status_code == 201, response.text
        tx = response.json()
        assert (tx["kind"], dec(tx["quantity"])) == (body["kind"], Decimal(delta))
        assert dec(tx["entered_quantity"]) == Decimal(body["quantity"])
        assert tx["username"] == "operator"
        assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal(left)
    rows = await transactions(client, actors, "LLA-1")
    assert [r["kind"] for r in rows] == [
        "received",
        "sampled",
        "scrapped",
        "adjusted",
        "adjusted",
        "transferred",
        "returned",
    ]
    assert rows[5]["location_to"] == "WH-2"
    assert sum(dec(r["quantity"]) for r in rows) == Decimal("92")
    audit = await audits_of(ctx, lot["id"])
    assert [a.action for a in audit] == [
        "create",
        "sampled",
        "scrapped",
        "adjusted",
        "adjusted",
        "returned",
    ]
    [change] = audit[1].changes
    assert change["field"] == "quantity"
    assert (dec(change["old"]), dec(change["new"])) == (Decimal("100"), Decimal("98"))
    assert all(a.reason.endswith("]") and "[transaction " in a.reason for a in audit[1:])
    balance = await client.get(f"{API}/lots/LLA-1/mass-balance", headers=actors["qa"])
    assert balance.json()["balanced"] is True


async def test_movement_rules_are_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """A transfer names where it went, a shipment its consignee; an adjustment of zero and
    kinds recorded by receipt or production are refused."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    await release(client, actors, "LLA-1")
    before = await counts(ctx)
    cases = [
        (("transferred", "5"), {}, "location_to"),
        (("shipped", "5"), {}, "consignee"),
        (("adjusted", "0"), {}, "quantity"),
        (("received", "5"), {}, "kind"),
        (("consumed", "5"), {}, "kind"),
        (("produced", "5"), {}, "kind"),
        (("scrapped", "1"), {"sublot_code": "NO-SUCH-DRUM"}, "sublot_code"),
    ]
    for (kind, quantity), extra, field in cases:
        response = await post_tx(client, actors, "LLA-1", kind, quantity, **extra)
        assert field in fields_of(assert_problem(response, 422)), kind
    missing_reason = await client.post(
        f"{API}/lots/LLA-1/transactions",
        json={"kind": "scrapped", "quantity": "1", "uom": "kg"},
        headers=actors["operator"],
    )
    assert "reason" in fields_of(assert_problem(missing_reason, 422))
    assert await counts(ctx) == before


async def test_negative_adjustment_below_zero_is_409_tr4(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    await receive(client, actors, "LLA", "LLA-1", "10")
    before = await counts(ctx)
    problem = assert_problem(await post_tx(client, actors, "LLA-1", "adjusted", "-10.5"), 409)
    assert problem["rule"] == "TR-4"
    assert await counts(ctx) == before
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("10")


async def test_shipping_needs_a_released_lot(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 3.3: shipment accepts only released lots (ID-1); a full shipment marks the
    lot shipped."""
    await receive(client, actors, "SUT", "SUT-1", "10", "each")
    before = await counts(ctx)
    early = await post_tx(client, actors, "SUT-1", "shipped", "1", "each", consignee="Hospital")
    problem = assert_problem(early, 409)
    assert (problem["rule"], problem["current_status"]) == ("ID-1", "quarantine")
    assert await counts(ctx) == before

    lot = await release(client, actors, "SUT-1")
    part = await post_tx(client, actors, "SUT-1", "shipped", "4", "each", consignee="Hospital A")
    assert part.status_code == 201, part.text
    assert (part.json()["consignee"], dec(part.json()["quantity"])) == ("Hospital A", Decimal(-4))
    assert (await get_lot(client, actors, "SUT-1"))["status"] == "released"
    rest = await post_tx(client, actors, "SUT-1", "shipped", "6", "each", consignee="Hospital B")
    assert rest.status_code == 201, rest.text
    shipped = await get_lot(client, actors, "SUT-1")
    assert (shipped["status"], dec(shipped["quantity"])) == ("shipped", Decimal("0"))
    last = (await transitions_of(ctx, lot["lot"]["id"]))[-1]
    assert (last.from_status, last.to_status, last.source) == ("released", "shipped", "system")
    recall = await client.get(f"{API}/lots/SUT-1/recall-impact", headers=actors["qa"])
    assert sorted((s["consignee"], dec(s["quantity"])) for s in recall.json()["shipments"]) == [
        ("Hospital A", Decimal("4")),
        ("Hospital B", Decimal("6")),
    ]


# --- reversals (TR-4: corrections are reversing entries) -----------------------------------------


async def test_reversal_restores_the_quantity_once(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-4: a wrong posting is corrected by a reversing entry with a reason; the original
    stays; it can be reversed only once, and a reversal is not reversed."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    scrap = (await post_tx(client, actors, "LLA-1", "scrapped", "10")).json()
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("90")
    url = f"{API}/material-transactions/{{}}/reverse"
    reversal = await client.post(
        url.format(scrap["id"]), json={"reason": "posted to wrong lot"}, headers=actors["operator"]
    )
    assert reversal.status_code == 201, reversal.text
    row = reversal.json()
    assert (row["kind"], dec(row["quantity"]), row["reverses_id"]) == (
        "scrapped",
        Decimal("10"),
        scrap["id"],
    )
    assert row["reason"] == "posted to wrong lot"
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("100")
    rows = await transactions(client, actors, "LLA-1")
    assert [r["id"] for r in rows] == [rows[0]["id"], scrap["id"], row["id"]]

    before = await counts(ctx)
    again = await client.post(
        url.format(scrap["id"]), json={"reason": "again"}, headers=actors["operator"]
    )
    assert_problem(again, 409)
    of_reversal = await client.post(
        url.format(row["id"]), json={"reason": "undo the undo"}, headers=actors["operator"]
    )
    assert_problem(of_reversal, 409)
    of_receipt = await client.post(
        url.format(rows[0]["id"]), json={"reason": "not received"}, headers=actors["operator"]
    )
    assert_problem(of_receipt, 409)
    unknown = await client.post(
        url.format(uuid.uuid4()), json={"reason": "x"}, headers=actors["operator"]
    )
    assert_problem(unknown, 404)
    no_reason = await client.post(url.format(scrap["id"]), json={}, headers=actors["operator"])
    assert "reason" in fields_of(assert_problem(no_reason, 422))
    qa = await client.post(url.format(scrap["id"]), json={"reason": "x"}, headers=actors["qa"])
    assert_problem(qa, 403)
    assert await counts(ctx) == before
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("100")


async def test_reversing_an_adjustment_and_a_consumption(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """TR-4: a reversal negates exactly the original signed quantity."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    await release(client, actors, "LLA-1")
    up = (await post_tx(client, actors, "LLA-1", "adjusted", "7.25")).json()
    produced = await produce(client, actors, "RES", "RES-1", "20", "kg", [("LLA-1", "20", "kg")])
    assert produced.status_code == 201, produced.text
    consumed = (await transactions(client, actors, "LLA-1"))[-1]
    assert consumed["kind"] == "consumed"
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("87.25")
    for tx, expected in ((up, "80"), (consumed, "100")):
        response = await client.post(
            f"{API}/material-transactions/{tx['id']}/reverse",
            json={"reason": "correction"},
            headers=actors["supervisor"],
        )
        assert response.status_code == 201, response.text
        assert dec(response.json()["quantity"]) == -dec(tx["quantity"])
        assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal(expected)


async def test_reversing_a_full_shipment_restores_the_quantity(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """TR-4: a shipment posted in error is corrected by its reversal, also when it emptied
    the lot (the reversal is a correction, not a new shipment)."""
    await receive(client, actors, "SUT", "SUT-1", "5", "each")
    await release(client, actors, "SUT-1")
    ship = await post_tx(client, actors, "SUT-1", "shipped", "5", "each", consignee="Wrong Co")
    assert ship.status_code == 201, ship.text
    assert (await get_lot(client, actors, "SUT-1"))["status"] == "shipped"
    response = await client.post(
        f"{API}/material-transactions/{ship.json()['id']}/reverse",
        json={"reason": "shipment keyed against the wrong lot"},
        headers=actors["supervisor"],
    )
    assert response.status_code == 201, response.text
    assert dec((await get_lot(client, actors, "SUT-1"))["quantity"]) == Decimal("5")


# --- ledger listing ------------------------------------------------------------------------------


async def test_transactions_list_in_order_with_cursor_paging(
    client: httpx.AsyncClient, actors: Actors, resin: None
) -> None:
    """The lot's ledger comes back in posting order, page by page, without gaps or repeats."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    await receive(client, actors, "LLA", "LLA-2", "100")
    for i in range(1, 6):
        response = await post_tx(client, actors, "LLA-1", "sampled", str(i))
        assert response.status_code == 201, response.text
        await post_tx(client, actors, "LLA-2", "sampled", "1")
    seen: list[Json] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(
            f"{API}/lots/LLA-1/transactions", params=params, headers=actors["planner"]
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert [r["kind"] for r in seen] == ["received"] + ["sampled"] * 5
    assert [dec(r["entered_quantity"]) for r in seen[1:]] == [Decimal(i) for i in range(1, 6)]
    assert {r["lot_number"] for r in seen} == {"LLA-1"}
    seqs = [r["seq"] for r in seen]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    bad = await client.get(
        f"{API}/lots/LLA-1/transactions",
        params={"cursor": "bm90LWEtbnVtYmVy"},
        headers=actors["qa"],
    )
    assert "query.cursor" in fields_of(assert_problem(bad, 422))


# --- containers ----------------------------------------------------------------------------------


async def test_containers_never_hold_more_than_the_lot(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-4: sublots of a lot together hold at most what the lot has left; a container code
    is unique within its lot; a movement from a container draws on it."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    url = f"{API}/lots/LLA-1/sublots"
    first = await client.post(
        url, json={"code": "DRUM-1", "quantity": "60", "uom": "kg"}, headers=actors["operator"]
    )
    assert first.status_code == 201, first.text
    assert (first.json()["code"], dec(first.json()["quantity"])) == ("DRUM-1", Decimal("60"))
    before = await counts(ctx)
    too_much = await client.post(
        url, json={"code": "DRUM-2", "quantity": "40.5", "uom": "kg"}, headers=actors["operator"]
    )
    assert assert_problem(too_much, 409)["rule"] == "TR-4"
    duplicate = await client.post(
        url, json={"code": "DRUM-1", "quantity": "1", "uom": "kg"}, headers=actors["operator"]
    )
    assert "code" in fields_of(assert_problem(duplicate, 409))
    assert await counts(ctx) == before
    second = await client.post(
        url,
        json={"code": "DRUM-2", "quantity": "40", "uom": "kg", "location": "WH-1"},
        headers=actors["operator"],
    )
    assert second.status_code == 201, second.text
    scrap = await post_tx(client, actors, "LLA-1", "scrapped", "61", sublot_code="DRUM-1")
    assert assert_problem(scrap, 409)["rule"] == "TR-4"
    scrap = await post_tx(client, actors, "LLA-1", "scrapped", "10", sublot_code="DRUM-1")
    assert scrap.status_code == 201, scrap.text
    listed = await client.get(url, headers=actors["qa"])
    assert [(s["code"], dec(s["quantity"]), s["location"]) for s in listed.json()] == [
        ("DRUM-1", Decimal("50"), None),
        ("DRUM-2", Decimal("40"), "WH-1"),
    ]
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("90")


async def test_container_with_the_longest_allowed_code(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """A container code may have 40 characters; registering it is audited like any other."""
    lot = await receive(client, actors, "LLA", "LLA-1", "100")
    code = "BOBBIN-" + "9" * 33
    assert len(code) == 40
    response = await client.post(
        f"{API}/lots/LLA-1/sublots",
        json={"code": code, "quantity": "1", "uom": "kg"},
        headers=actors["operator"],
    )
    assert response.status_code == 201, response.text
    async with ctx.db.sessionmaker() as session:
        rows = await session.execute(select(AuditEntry).where(AuditEntry.entity_type == "sublot"))
        entries = list(rows.scalars())
    [entry] = entries
    assert {c["field"]: c["new"] for c in entry.changes}["code"] == code
    listed = await client.get(f"{API}/lots/{lot['id']}/sublots", headers=actors["qa"])
    assert [s["code"] for s in listed.json()] == [code]


# --- sterilization loads (TR-5) ------------------------------------------------------------------


async def test_sterilization_load_links_lots_both_ways(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-5: a load lists its lots and each lot's trace lists its loads."""
    await plant_with_sterilizer(client, actors)
    await receive(client, actors, "SUT", "SUT-1", "10", "each")
    await receive(client, actors, "SUT", "SUT-2", "20", "each")
    response = await client.post(
        f"{API}/sterilization-loads",
        json={
            "load_no": "L-2026-001",
            "sterilizer_code": "S-1",
            "lots": [{"lot_number": "SUT-1"}, {"lot_number": "SUT-2", "material_code": "SUT"}],
        },
        headers=actors["operator"],
    )
    assert response.status_code == 201, response.text
    load = response.json()
    assert (load["load_no"], load["sterilizer_code"], load["result"]) == (
        "L-2026-001",
        "S-1",
        "pending",
    )
    assert load["lots"] == ["SUT-1", "SUT-2"]
    for lot in ("SUT-1", "SUT-2"):
        trace = await client.get(f"{API}/lots/{lot}/genealogy", headers=actors["qa"])
        assert trace.json()["nodes"][0]["loads"] == ["L-2026-001"]
    async with ctx.db.sessionmaker() as session:
        items = list((await session.execute(select(LoadItem))).scalars())
    assert sorted(i.quantity for i in items) == [Decimal("10"), Decimal("20")]

    before = await counts(ctx)
    duplicate = await client.post(
        f"{API}/sterilization-loads",
        json={"load_no": "L-2026-001", "sterilizer_code": "S-1", "lots": [{"lot_number": "SUT-1"}]},
        headers=actors["operator"],
    )
    assert "load_no" in fields_of(assert_problem(duplicate, 409))
    assert await counts(ctx) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sterilizer_code": "S-9", "lots": [{"lot_number": "SUT-1"}]}, "sterilizer_code"),
        ({"sterilizer_code": "EO-CELL", "lots": [{"lot_number": "SUT-1"}]}, "sterilizer_code"),
        (
            {"sterilizer_code": "S-1", "lots": [{"lot_number": "SUT-1"}, {"lot_number": "NOPE"}]},
            "lots[1].lot_number",
        ),
        (
            {"sterilizer_code": "S-1", "lots": [{"lot_number": "SUT-1"}, {"lot_number": "SUT-1"}]},
            "lots[1]",
        ),
        ({"sterilizer_code": "S-1", "lots": []}, "lots"),
    ],
)
async def test_bad_sterilization_load_is_422(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
    resin: None,
    body: Json,
    field: str,
) -> None:
    """TR-5: a load runs in a sterilizer unit of the plant model and lists existing lots once;
    a refused load writes nothing."""
    await plant_with_sterilizer(client, actors)
    await receive(client, actors, "SUT", "SUT-1", "10", "each")
    before = await counts(ctx)
    response = await client.post(
        f"{API}/sterilization-loads", json={"load_no": "L-1", **body}, headers=actors["operator"]
    )
    assert field in fields_of(assert_problem(response, 422))
    assert await counts(ctx) == before


# --- split and merge (DOMAIN 7) ------------------------------------------------------------------


async def test_split_beyond_remaining_is_409_and_writes_nothing(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """TR-4, DOMAIN 7: the parts of a split cannot exceed what the lot has left; the first,
    valid part is not kept either."""
    await receive(client, actors, "LLA", "LLA-1", "100")
    before = await counts(ctx)
    response = await client.post(
        f"{API}/lots/LLA-1/split",
        json={
            "parts": [
                {"lot_number": "LLA-1A", "quantity": "60", "uom": "kg"},
                {"lot_number": "LLA-1B", "quantity": "50", "uom": "kg"},
            ],
            "reason": "two lines",
        },
        headers=actors["operator"],
    )
    assert assert_problem(response, 409)["rule"] == "TR-4"
    assert await counts(ctx) == before
    assert dec((await get_lot(client, actors, "LLA-1"))["quantity"]) == Decimal("100")
    assert_problem(await client.get(f"{API}/lots/LLA-1A", headers=actors["operator"]), 404)


async def test_split_children_keep_the_parent_disposition(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 7 split: the split execution consumes the parent and produces the children,
    which keep its status and dates."""
    expires = "2030-01-31T00:00:00Z"
    await receive(client, actors, "LLA", "LLA-1", "100", expires_at=expires)
    await release(client, actors, "LLA-1")
    await decide(client, actors, "LLA-1", "on_hold")
    response = await client.post(
        f"{API}/lots/LLA-1/split",
        json={
            "parts": [
                {"lot_number": "LLA-1A", "quantity": "60", "uom": "kg"},
                {"lot_number": "LLA-1B", "quantity": "40", "uom": "kg"},
            ],
            "reason": "two lines",
        },
        headers=actors["operator"],
    )
    assert response.status_code == 201, response.text
    assert response.json()["produced"] == ["LLA-1A", "LLA-1B"]
    parent = await get_lot(client, actors, "LLA-1")
    assert dec(parent["quantity"]) == Decimal("0")
    for name, qty in (("LLA-1A", "60"), ("LLA-1B", "40")):
        child = await get_lot(client, actors, name)
        assert (child["status"], child["held_from_status"]) == ("on_hold", "released")
        assert dec(child["quantity"]) == Decimal(qty)
        assert child["expires_at"] == parent["expires_at"]
        assert child["supplier_lot"] == "S-LLA-1"
    trace = await client.get(
        f"{API}/lots/LLA-1/genealogy", params={"direction": "forward"}, headers=actors["qa"]
    )
    assert {(e["parent"], e["child"], e["kind"]) for e in trace.json()["edges"]} == {
        ("LLA-1", "LLA-1A", "split"),
        ("LLA-1", "LLA-1B", "split"),
    }


async def test_merge_refuses_mixed_materials_and_held_lots(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, resin: None
) -> None:
    """DOMAIN 7 blend: one material only (422); a lot blocked by a quality decision cannot be
    blended (409, ID-1); refused blends write nothing."""
    await receive(client, actors, "LLA", "LLA-1", "10")
    await receive(client, actors, "LLA", "LLA-2", "20")
    await receive(client, actors, "RES", "RES-1", "5")
    await receive(client, actors, "LLA", "LLA-3", "30")
    await decide(client, actors, "LLA-3", "on_hold")
    url = f"{API}/lots/merge"
    before = await counts(ctx)
    mixed = await client.post(
        url,
        json={
            "lot_number": "BLEND-1",
            "inputs": [{"lot_number": "LLA-1"}, {"lot_number": "RES-1"}],
            "reason": "blend",
        },
        headers=actors["operator"],
    )
    assert "inputs[1].lot_number" in fields_of(assert_problem(mixed, 422))
    held = await client.post(
        url,
        json={
            "lot_number": "BLEND-1",
            "inputs": [{"lot_number": "LLA-1"}, {"lot_number": "LLA-3"}],
            "reason": "blend",
        },
        headers=actors["operator"],
    )
    problem = assert_problem(held, 409)
    assert (problem["rule"], problem["current_status"]) == ("ID-1", "on_hold")
    assert await counts(ctx) == before

    ok = await client.post(
        url,
        json={
            "lot_number": "BLEND-1",
            "inputs": [{"lot_number": "LLA-1"}, {"lot_number": "LLA-2"}],
            "reason": "blend",
        },
        headers=actors["operator"],
    )
    assert ok.status_code == 201, ok.text
    blend = await get_lot(client, actors, "BLEND-1")
    assert (blend["status"], dec(blend["quantity"])) == ("quarantine", Decimal("30"))
    for name in ("LLA-1", "LLA-2"):
        assert dec((await get_lot(client, actors, name))["quantity"]) == Decimal("0")
