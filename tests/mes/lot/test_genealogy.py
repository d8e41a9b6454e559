"""Genealogy on a hand-built history with a blend, a split and a merge: exact expected
sets for backward and forward traces, recall impact, mass balance (TR-1..TR-5)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from mes.context import AppContext
from mes.genealogy import service as genealogy
from mes.genealogy.repository import Direction
from mes.genealogy.schemas import MergeRequest, ProduceRequest, SplitRequest
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.lot.schemas import LoadCreate, LotReceive, TransactionRequest
from mes.material import service as materials
from mes.material.schemas import MaterialCreate
from mes.models import EquipmentLevel, LotStatus, TransactionKind
from mes.principal import system_principal
from mes.udi.label import verify_symbol
from tests.conftest import Actors

ME = system_principal("test")
PASSWORD_SIG = {"password": "correct-horse-battery-7", "meaning": "released"}


async def _material(
    ctx: AppContext,
    code: str,
    kind: str,
    uom: str,
    gtin: str | None = None,
    shelf_life_days: int | None = None,
) -> None:
    async with ctx.db.sessionmaker() as s, s.begin():
        await materials.create(
            ctx,
            s,
            ME,
            MaterialCreate(
                code=code, name=code, kind=kind, uom=uom, gtin=gtin, shelf_life_days=shelf_life_days
            ),
        )


async def _receive(ctx: AppContext, material: str, lot: str, qty: str, uom: str) -> None:
    async with ctx.db.sessionmaker() as s, s.begin():
        got = await lots.receive(
            ctx,
            s,
            ME,
            LotReceive(
                material_code=material,
                lot_number=lot,
                quantity=Decimal(qty),
                uom=uom,
                supplier="Acme",
                supplier_lot=f"S-{lot}",
                coa_ref=f"CoA-{lot}",
            ),
        )
        await lots.set_status(
            ctx,
            s,
            ME,
            got,
            LotStatus.released,
            reason="released for test",
            source="test",
            material_code=material,
        )


async def _produce(
    ctx: AppContext, material: str, lot: str, qty: str, uom: str, inputs: list[tuple[str, str, str]]
) -> None:
    async with ctx.db.sessionmaker() as s, s.begin():
        await genealogy.produce(
            ctx,
            s,
            ME,
            ProduceRequest(
                material_code=material,
                lot_number=lot,
                quantity=Decimal(qty),
                uom=uom,
                inputs=[{"lot_number": n, "quantity": Decimal(q), "uom": u} for n, q, u in inputs],
            ),
        )  # type: ignore[misc]


async def _release(ctx: AppContext, lot_number: str) -> None:
    async with ctx.db.sessionmaker() as s, s.begin():
        lot = await lots.get_lot(s, lot_number)
        m = await lots.material_of(s, lot)
        await lots.set_status(
            ctx,
            s,
            ME,
            lot,
            LotStatus.released,
            reason="test release",
            source="test",
            material_code=m.code,
        )


@pytest.fixture
async def history(ctx: AppContext) -> AppContext:
    """
    LLA-1 ─┐                         ┌─ FIB-1 ─┐
    LLA-2 ─┼─ RES-1 ── split ─┬─ RES-1A ─┤         ├─ BRD-1 ── SUT-1 ── PK-1 (load L-1)
    CAT-1 ─┘                  │          └─ FIB-2 ─┘
    GA-1 ──── RES-2 ──────────┼──────────────────────── merge RES-M (RES-1B + RES-2)
                              └─ RES-1B ─┘
    """
    await _material(ctx, "LLA", "monomer", "kg", shelf_life_days=730)
    await _material(ctx, "GA", "monomer", "kg")
    await _material(ctx, "CAT", "catalyst", "g")
    await _material(ctx, "RES", "resin", "kg", shelf_life_days=365)
    await _material(ctx, "FIB", "fibre", "m")
    await _material(ctx, "BRD", "braid", "m")
    await _material(ctx, "SUT", "suture", "each", gtin="00812345000016")
    await _material(ctx, "PK", "device", "each", gtin="00812345000023")
    await _receive(ctx, "LLA", "LLA-1", "100", "kg")
    await _receive(ctx, "LLA", "LLA-2", "100", "kg")
    await _receive(ctx, "GA", "GA-1", "50", "kg")
    await _receive(ctx, "CAT", "CAT-1", "500", "g")
    await _produce(
        ctx,
        "RES",
        "RES-1",
        "95",
        "kg",
        [("LLA-1", "60", "kg"), ("LLA-2", "40", "kg"), ("CAT-1", "20", "g")],
    )
    await _produce(ctx, "RES", "RES-2", "48", "kg", [("GA-1", "50", "kg")])
    async with ctx.db.sessionmaker() as s, s.begin():
        res1 = await lots.get_lot(s, "RES-1", lock=True)
        await genealogy.split(
            ctx,
            s,
            ME,
            res1,
            SplitRequest(
                parts=[
                    {"lot_number": "RES-1A", "quantity": Decimal("50"), "uom": "kg"},
                    {"lot_number": "RES-1B", "quantity": Decimal("45"), "uom": "kg"},
                ],
                reason="split for two lines",
            ),
        )  # type: ignore[list-item]
    for lot in ("RES-1A", "RES-1B", "RES-2"):
        await _release(ctx, lot)
    await _produce(ctx, "FIB", "FIB-1", "1000", "m", [("RES-1A", "20", "kg")])
    await _produce(ctx, "FIB", "FIB-2", "1000", "m", [("RES-1A", "20", "kg")])
    async with ctx.db.sessionmaker() as s, s.begin():
        await genealogy.merge(
            ctx,
            s,
            ME,
            MergeRequest(
                lot_number="RES-M",
                inputs=[{"lot_number": "RES-1B"}, {"lot_number": "RES-2"}],
                reason="blend of leftovers",
            ),
        )  # type: ignore[list-item]
    for lot in ("FIB-1", "FIB-2"):
        await _release(ctx, lot)
    await _produce(ctx, "BRD", "BRD-1", "500", "m", [("FIB-1", "900", "m"), ("FIB-2", "900", "m")])
    await _release(ctx, "BRD-1")
    await _produce(ctx, "SUT", "SUT-1", "200", "each", [("BRD-1", "150", "m")])
    await _release(ctx, "SUT-1")
    await _produce(ctx, "PK", "PK-1", "200", "each", [("SUT-1", "200", "each")])
    async with ctx.db.sessionmaker() as s, s.begin():
        from mes.equipment import service as equipment
        from mes.equipment.schemas import EquipmentClassCreate, EquipmentCreate

        await equipment.create_class(ctx, s, ME, EquipmentClassCreate(code="EO", name="EtO"))
        await equipment.create_equipment(
            ctx, s, ME, EquipmentCreate(code="ENT", name="Ent", level=EquipmentLevel.enterprise)
        )
        await equipment.create_equipment(
            ctx,
            s,
            ME,
            EquipmentCreate(code="S", name="Site", level=EquipmentLevel.site, parent_code="ENT"),
        )
        await equipment.create_equipment(
            ctx,
            s,
            ME,
            EquipmentCreate(code="A", name="Area", level=EquipmentLevel.area, parent_code="S"),
        )
        await equipment.create_equipment(
            ctx,
            s,
            ME,
            EquipmentCreate(
                code="WC", name="WC", level=EquipmentLevel.work_center, parent_code="A"
            ),
        )
        await equipment.create_equipment(
            ctx,
            s,
            ME,
            EquipmentCreate(
                code="S-1",
                name="Sterilizer",
                level=EquipmentLevel.unit,
                parent_code="WC",
                equipment_class="EO",
            ),
        )
        await containers.create_load(
            ctx,
            s,
            ME,
            LoadCreate(load_no="L-1", sterilizer_code="S-1", lots=[{"lot_number": "PK-1"}]),
        )  # type: ignore[list-item]
    await _release(ctx, "PK-1")
    async with ctx.db.sessionmaker() as s, s.begin():
        pk = await lots.get_lot(s, "PK-1", lock=True)
        await ledger.post_request(
            ctx,
            s,
            ME,
            pk,
            TransactionRequest(
                kind=TransactionKind.shipped,
                quantity=Decimal("120"),
                uom="each",
                reason="order 4711",
                consignee="General Hospital",
            ),
        )
    return ctx


async def _trace(ctx: AppContext, lot: str, direction: Direction, depth: int = 64):  # type: ignore[no-untyped-def]
    async with ctx.db.sessionmaker() as s:
        return await genealogy.trace(s, await lots.get_lot(s, lot), direction, depth)


async def test_backward_trace_of_the_pack_reaches_every_input(history: AppContext) -> None:
    """TR-2: the finished pack traces back to both monomer lots and the catalyst, through
    the split and both fibres, and not to the glycolide blend branch."""
    result = await _trace(history, "PK-1", Direction.backward)
    assert {n.lot_number for n in result.nodes} == {
        "PK-1",
        "SUT-1",
        "BRD-1",
        "FIB-1",
        "FIB-2",
        "RES-1A",
        "RES-1",
        "LLA-1",
        "LLA-2",
        "CAT-1",
    }
    depth = {n.lot_number: n.depth for n in result.nodes}
    assert depth["PK-1"] == 0
    assert depth["LLA-1"] == 6
    assert {(e.parent, e.child) for e in result.edges} == {
        ("SUT-1", "PK-1"),
        ("BRD-1", "SUT-1"),
        ("FIB-1", "BRD-1"),
        ("FIB-2", "BRD-1"),
        ("RES-1A", "FIB-1"),
        ("RES-1A", "FIB-2"),
        ("RES-1", "RES-1A"),
        ("LLA-1", "RES-1"),
        ("LLA-2", "RES-1"),
        ("CAT-1", "RES-1"),
    }
    assert {n.lot_number: n.loads for n in result.nodes}["PK-1"] == ["L-1"]
    assert not result.depth_limited


async def test_depth_limit_cuts_the_trace(history: AppContext) -> None:
    result = await _trace(history, "PK-1", Direction.backward, 2)
    assert {n.lot_number for n in result.nodes} == {"PK-1", "SUT-1", "BRD-1"}
    assert result.depth_limited


async def test_forward_trace_of_a_monomer_reaches_pack_and_blend(history: AppContext) -> None:
    """TR-3: LLA-1 went into RES-1, both split lots, both fibres, the braid, suture, pack,
    and (through RES-1B) the blend RES-M."""
    result = await _trace(history, "LLA-1", Direction.forward)
    assert {n.lot_number for n in result.nodes} == {
        "LLA-1",
        "RES-1",
        "RES-1A",
        "RES-1B",
        "RES-M",
        "FIB-1",
        "FIB-2",
        "BRD-1",
        "SUT-1",
        "PK-1",
    }
    kinds = {(e.parent, e.child): e.kind for e in result.edges}
    assert kinds[("RES-1", "RES-1A")] == "split"
    assert kinds[("RES-1B", "RES-M")] == "merge"
    quantities = {(e.parent, e.child): e.quantity for e in result.edges}
    assert quantities[("LLA-1", "RES-1")] == Decimal("60")


async def test_glycolide_reaches_only_the_blend(history: AppContext) -> None:
    result = await _trace(history, "GA-1", Direction.forward)
    assert {n.lot_number for n in result.nodes} == {"GA-1", "RES-2", "RES-M"}


async def test_recall_impact(history: AppContext) -> None:
    """TR-3, TR-5: finished lots (materials with a GTIN), the load and the shipment."""
    async with history.db.sessionmaker() as s:
        impact = await genealogy.recall_impact(s, await lots.get_lot(s, "CAT-1"))
    assert {f.lot_number for f in impact.finished_lots} == {"SUT-1", "PK-1"}
    assert impact.finished_lot_count == 2
    assert impact.loads == ["L-1"]
    assert [(x.lot_number, x.consignee, x.quantity) for x in impact.shipments] == [
        ("PK-1", "General Hospital", Decimal("120"))
    ]
    async with history.db.sessionmaker() as s:
        none = await genealogy.recall_impact(s, await lots.get_lot(s, "GA-1"))
    assert none.finished_lots == []
    assert none.shipments == []


async def test_mass_balance(history: AppContext) -> None:
    """DOMAIN 7: the resin's ledger balances; its execution shows every input by unit."""
    async with history.db.sessionmaker() as s:
        balance = await genealogy.mass_balance(s, await lots.get_lot(s, "RES-1"))
    assert balance.balanced
    assert balance.remaining == Decimal("0")
    assert balance.ledger == {"consumed": Decimal("-95"), "produced": Decimal("95")}
    [execution] = balance.executions
    assert execution.input_totals == {"kg": Decimal("100"), "g": Decimal("20")}
    assert execution.output_totals == {"kg": Decimal("95")}


async def test_split_and_blend_statuses_and_dates(history: AppContext) -> None:
    """Split children keep the parent's disposition; a blend of released lots is released
    and takes the earliest input expiry."""
    async with history.db.sessionmaker() as s:
        res1 = await lots.get_lot(s, "RES-1")
        res1a = await lots.get_lot(s, "RES-1A")
        blend = await lots.get_lot(s, "RES-M")
        res2 = await lots.get_lot(s, "RES-2")
    assert res1.status == LotStatus.consumed or res1.remaining_qty == 0
    assert res1a.expires_at == res1.expires_at
    assert blend.status == LotStatus.released
    assert blend.remaining_qty == Decimal("45") + Decimal("48")
    assert blend.expires_at == min(d for d in (res1a.expires_at, res2.expires_at) if d)


async def test_genealogy_api(
    client: httpx.AsyncClient, actors: Actors, history: AppContext
) -> None:
    back = await client.get(
        "/api/v1/lots/PK-1/genealogy", params={"direction": "backward"}, headers=actors["qa"]
    )
    assert back.status_code == 200
    assert len(back.json()["nodes"]) == 10
    recall = await client.get("/api/v1/lots/LLA-2/recall-impact", headers=actors["qa"])
    assert recall.status_code == 200
    assert recall.json()["finished_lot_count"] == 2
    assert (
        await client.get("/api/v1/lots/NOPE/genealogy", headers=actors["qa"])
    ).status_code == 404
    balance = await client.get("/api/v1/lots/RES-1/mass-balance", headers=actors["operator"])
    assert balance.json()["balanced"] is True
    load = await client.get("/api/v1/sterilization-loads/L-1", headers=actors["qa"])
    assert load.status_code == 200
    assert load.json()["lots"] == ["PK-1"]  # TR-5: load -> lots
    assert load.json()["sterilizer_code"] == "S-1"


async def test_udi_label_of_a_finished_lot(
    client: httpx.AsyncClient, actors: Actors, history: AppContext
) -> None:
    """PR-7 / UDI-3 / UDI-5: label content from stored dates; the served symbol decodes
    back to the same elements as GS1 DataMatrix (]d2)."""
    label = await client.get("/api/v1/lots/PK-1/udi-label", headers=actors["operator"])
    assert label.status_code == 200
    body = label.json()
    assert body["gtin"] == "00812345000023"
    assert body["lot"] == "PK-1"
    png = await client.get("/api/v1/lots/PK-1/udi-label.png", headers=actors["operator"])
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    scan = verify_symbol(png.content)
    assert scan.symbology_id == "]d2"
    assert (scan.gtin, scan.lot) == ("00812345000023", "PK-1")
    svg = await client.get("/api/v1/lots/PK-1/udi-label.svg", headers=actors["operator"])
    assert svg.text.lstrip().startswith("<?xml")
    no_gtin = await client.get("/api/v1/lots/RES-M/udi-label", headers=actors["operator"])
    assert no_gtin.status_code == 409
    missing = await client.get(
        "/api/v1/lots/PK-1/udi-label", params={"serial": "X1"}, headers=actors["operator"]
    )
    assert missing.status_code == 404
