"""Genealogy on a hand-built history with a blend, a split and a merge: exact expected
sets for backward and forward traces, recall impact, mass balance (TR-1..TR-5)."""

from __future__ import annotations

import importlib
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from mes.context import AppContext
from mes.equipment import service as equipment
from mes.equipment.schemas import EquipmentClassCreate, EquipmentCreate
from mes.genealogy import repository as repo
from mes.genealogy import service as genealogy
from mes.genealogy.repository import (
    EDGE,
    LOAD,
    LOAD_ITEM,
    LOT,
    MATERIAL,
    REACH,
    SERIAL,
    TX,
    Direction,
)
from mes.genealogy.schemas import (
    MergeRequest,
    ProduceRequest,
    RecallImpact,
    SplitRequest,
    TraceEdge,
)
from mes.genealogy.service import unvalidated
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.lot.schemas import LoadCreate, LotReceive, TransactionRequest
from mes.material import service as materials
from mes.material.schemas import MaterialCreate
from mes.models import EdgeKind, EquipmentLevel, GenealogyEdge, Lot, LotStatus, TransactionKind
from mes.principal import system_principal
from mes.udi.label import verify_symbol
from tests.conftest import BACKEND, Actors

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


async def _sterilizer(ctx: AppContext) -> None:
    """EtO sterilizer S-1, a unit of the plant model."""
    async with ctx.db.sessionmaker() as s, s.begin():
        await equipment.create_class(ctx, s, ME, EquipmentClassCreate(code="EO", name="EtO"))
        for code, level, parent in (
            ("ENT", EquipmentLevel.enterprise, None),
            ("S", EquipmentLevel.site, "ENT"),
            ("A", EquipmentLevel.area, "S"),
            ("WC", EquipmentLevel.work_center, "A"),
        ):
            await equipment.create_equipment(
                ctx, s, ME, EquipmentCreate(code=code, name=code, level=level, parent_code=parent)
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
    await _sterilizer(ctx)
    async with ctx.db.sessionmaker() as s, s.begin():
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


# --- lot_reach, the closure that recall impact reads --------------------------------------------


async def _edges(ctx: AppContext) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Children of each lot, from genealogy_edge."""
    children: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    async with ctx.db.sessionmaker() as s:
        for parent, child in await s.execute(select(EDGE.c.parent_lot_id, EDGE.c.child_lot_id)):
            children[parent].add(child)
    return children


def _below(children: dict[uuid.UUID, set[uuid.UUID]], start: uuid.UUID) -> set[uuid.UUID]:
    """Every lot reached from ``start`` by one or more edges (a plain graph search)."""
    seen: set[uuid.UUID] = set()
    todo = list(children.get(start, ()))
    while todo:
        lot = todo.pop()
        if lot not in seen:
            seen.add(lot)
            todo.extend(children.get(lot, ()))
    return seen


async def _closure(ctx: AppContext) -> set[tuple[uuid.UUID, uuid.UUID]]:
    async with ctx.db.sessionmaker() as s:
        rows = await s.execute(select(REACH.c.ancestor_lot_id, REACH.c.descendant_lot_id))
        return {(a, d) for a, d in rows}


async def assert_closure(ctx: AppContext) -> None:
    """lot_reach holds exactly the pairs joined by a path of edges."""
    children = await _edges(ctx)
    lots = set(children) | {c for cs in children.values() for c in cs}
    expected = {(a, d) for a in lots for d in _below(children, a)}
    assert await _closure(ctx) == expected


async def _walked_recall(
    ctx: AppContext, lot_id: uuid.UUID
) -> tuple[dict[str, int], set[str], set[Any]]:
    """Finished lots (with their serial counts), loads and shipments of a recall, from a
    recursive walk of the edges."""
    walk = repo.walk_cte("walk", "start", Direction.forward)
    finished_lots = (
        select(LOT.c.id, LOT.c.lot_number)
        .select_from(
            walk.join(LOT, LOT.c.id == walk.c.lot_id).join(
                MATERIAL, MATERIAL.c.id == LOT.c.material_id
            )
        )
        .where(MATERIAL.c.gtin.is_not(None))
    )
    async with ctx.db.sessionmaker() as s:
        rows = await s.execute(finished_lots, {"start": lot_id})
        found = {row.id: row.lot_number for row in rows}
        loads = await s.execute(
            select(LOAD.c.load_no, LOAD_ITEM.c.lot_id).join(
                LOAD_ITEM, LOAD_ITEM.c.load_id == LOAD.c.id
            )
        )
        shipped = await s.execute(
            select(TX.c.lot_id, TX.c.consignee, TX.c.quantity).where(TX.c.kind == "shipped")
        )
        serials = Counter(x for (x,) in await s.execute(select(SERIAL.c.lot_id)))
        return (
            {number: serials[x] for x, number in found.items()},
            {load_no for load_no, member in loads if member in found},
            {(found[x], consignee, -qty) for x, consignee, qty in shipped if x in found},
        )


async def assert_recalls_match_the_walk(ctx: AppContext) -> int:
    """For every lot: recall impact (from lot_reach) lists what a recursive walk reaches."""
    async with ctx.db.sessionmaker() as s:
        every = list((await s.execute(select(Lot))).scalars())
    for lot in every:
        async with ctx.db.sessionmaker() as s:
            impact = await genealogy.recall_impact(s, lot)
        finished, loads, shipments = await _walked_recall(ctx, lot.id)
        assert {f.lot_number: f.serials for f in impact.finished_lots} == finished, lot.lot_number
        assert impact.finished_lot_count == len(finished)
        assert impact.serial_count == sum(finished.values())
        assert impact.loads == sorted(loads)
        assert {(x.lot_number, x.consignee, x.quantity) for x in impact.shipments} == shipments
    return len(every)


async def test_lot_reach_is_the_closure_and_every_recall_matches_the_walk(
    history: AppContext,
) -> None:
    """TR-3: after production, a split, a blend, a load and a shipment, lot_reach is the
    closure of the edges and every lot's recall equals the recursive walk's."""
    await assert_closure(history)
    assert await assert_recalls_match_the_walk(history) == 14
    for lot, serials in (("PK-1", ["P1", "P2", "P3"]), ("SUT-1", ["S1", "S2"])):
        async with history.db.sessionmaker() as s, s.begin():
            found = await lots.get_lot(s, lot)
            await containers.add_serials(history, s, ME, found, serials, "serialised")
    assert await assert_recalls_match_the_walk(history) == 14
    async with history.db.sessionmaker() as s:
        impact = await genealogy.recall_impact(s, await lots.get_lot(s, "RES-1A"))
    assert [(f.lot_number, f.serials) for f in impact.finished_lots] == [("PK-1", 3), ("SUT-1", 2)]
    assert impact.serial_count == 5


async def test_lot_reach_grows_with_every_operation(ctx: AppContext) -> None:
    """The closure is right after each produce, split, merge and load membership, and a
    recall made in between already sees the new lots."""
    await _material(ctx, "MON", "monomer", "kg")
    await _material(ctx, "RES", "resin", "kg")
    await _material(ctx, "KIT", "device", "each", gtin="00812345000030")
    for lot in ("M-1", "M-2", "M-3"):
        await _receive(ctx, "MON", lot, "10", "kg")
    await assert_closure(ctx)
    await _produce(ctx, "RES", "R-1", "9", "kg", [("M-1", "5", "kg"), ("M-2", "5", "kg")])
    await assert_closure(ctx)
    async with ctx.db.sessionmaker() as s, s.begin():
        r1 = await lots.get_lot(s, "R-1", lock=True)
        await genealogy.split(
            ctx,
            s,
            ME,
            r1,
            SplitRequest(
                parts=[
                    {"lot_number": "R-1A", "quantity": Decimal("4"), "uom": "kg"},
                    {"lot_number": "R-1B", "quantity": Decimal("5"), "uom": "kg"},
                ],
                reason="two lines",
            ),
        )  # type: ignore[list-item]
    await assert_closure(ctx)
    await _produce(ctx, "RES", "R-2", "4", "kg", [("M-3", "5", "kg")])
    async with ctx.db.sessionmaker() as s, s.begin():
        await genealogy.merge(
            ctx,
            s,
            ME,
            MergeRequest(
                lot_number="R-M",
                inputs=[{"lot_number": "R-1B"}, {"lot_number": "R-2"}],
                reason="blend",
            ),
        )  # type: ignore[list-item]
    await assert_closure(ctx)
    for lot in ("R-1A", "R-M"):
        await _release(ctx, lot)
    await _produce(ctx, "KIT", "K-1", "10", "each", [("R-1A", "2", "kg"), ("R-M", "3", "kg")])
    await assert_closure(ctx)
    async with ctx.db.sessionmaker() as s:
        impact = await genealogy.recall_impact(s, await lots.get_lot(s, "M-3"))
    assert [f.lot_number for f in impact.finished_lots] == ["K-1"]
    await _sterilizer(ctx)
    async with ctx.db.sessionmaker() as s, s.begin():
        await containers.create_load(
            ctx,
            s,
            ME,
            LoadCreate(load_no="L-9", sterilizer_code="S-1", lots=[{"lot_number": "K-1"}]),
        )  # type: ignore[list-item]
    await assert_closure(ctx)
    assert await assert_recalls_match_the_walk(ctx) == 9
    async with ctx.db.sessionmaker() as s:
        impact = await genealogy.recall_impact(s, await lots.get_lot(s, "M-1"))
    assert (impact.loads, impact.finished_lot_count) == (["L-9"], 1)


async def test_an_edge_into_an_existing_chain_reaches_its_descendants(ctx: AppContext) -> None:
    """Closing over a new edge pairs every ancestor of its parent with every descendant of
    its child, not only with the child (outputs are new lots today; the closure does not
    rely on it)."""
    await _material(ctx, "MON", "monomer", "kg")
    await _material(ctx, "RES", "resin", "kg")
    for lot in ("A-1", "B-1"):
        await _receive(ctx, "MON", lot, "10", "kg")
    await _produce(ctx, "RES", "C-1", "5", "kg", [("A-1", "5", "kg")])
    await _release(ctx, "C-1")
    await _produce(ctx, "RES", "D-1", "5", "kg", [("C-1", "5", "kg")])
    async with ctx.db.sessionmaker() as s, s.begin():
        b1, a1 = await lots.get_lot(s, "B-1"), await lots.get_lot(s, "A-1")
        s.add(
            GenealogyEdge(
                parent_lot_id=b1.id,
                child_lot_id=a1.id,
                kind=EdgeKind.rework,
                quantity=Decimal(1),
                uom="kg",
                execution_id=uuid.uuid4(),
            )
        )
        await s.flush()
        await repo.add_reach(s, b1.id, a1.id)
    await assert_closure(ctx)
    async with ctx.db.sessionmaker() as s:
        b1 = await lots.get_lot(s, "B-1")
        trace = await genealogy.trace(s, b1, Direction.forward, 64)
    assert {n.lot_number for n in trace.nodes} == {"B-1", "A-1", "C-1", "D-1"}


async def test_the_backfills_give_the_closure(history: AppContext) -> None:
    """The migration's backfill and the bulk fill compute, from the edges alone, the pairs
    that edge inserts maintained."""
    migration = importlib.import_module("mes.migrations.versions.0003_lot_reach")
    async with history.db.sessionmaker() as s:
        from_migration = {(a, d) for a, d in await s.execute(text(migration.PAIRS))}
        from_fill = {(a, d) for a, d in await s.execute(repo.reach_pairs_stmt())}
    closure = await _closure(history)
    if history.db.dialect == "sqlite":  # raw SQL gives SQLite's stored form: 32 hex digits
        from_migration = {(uuid.UUID(a), uuid.UUID(d)) for a, d in from_migration}
    assert from_migration == closure
    assert from_fill == closure


async def test_lot_reach_is_append_only(history: AppContext) -> None:
    """AT-4: the closure is derived from append-only edges; a lost pair would be a lot
    missing from a recall, so the database refuses deletes and updates."""
    for statement in (
        "DELETE FROM lot_reach",
        "UPDATE lot_reach SET descendant_lot_id = ancestor_lot_id",
    ):
        with pytest.raises(DBAPIError, match="AT-4"):
            async with history.db.engine.begin() as conn:
                await conn.execute(text(statement))


async def test_a_lot_in_two_loads(history: AppContext) -> None:
    """TR-5: a lot in two loads lists both in its trace and the recall, and its edges once."""
    async with history.db.sessionmaker() as s, s.begin():
        await containers.create_load(
            history,
            s,
            ME,
            LoadCreate(load_no="L-2", sterilizer_code="S-1", lots=[{"lot_number": "PK-1"}]),
        )  # type: ignore[list-item]
    back = await _trace(history, "PK-1", Direction.backward)
    assert {n.lot_number: n.loads for n in back.nodes}["PK-1"] == ["L-1", "L-2"]
    assert len(back.edges) == len({(e.parent, e.child) for e in back.edges}) == 10
    forward = await _trace(history, "SUT-1", Direction.forward)
    assert [(e.parent, e.child) for e in forward.edges] == [("SUT-1", "PK-1")]
    async with history.db.sessionmaker() as s:
        impact = await genealogy.recall_impact(s, await lots.get_lot(s, "LLA-1"))
    assert impact.loads == ["L-1", "L-2"]
    assert RecallImpact.model_validate_json(impact.model_dump_json()) == impact


def test_unvalidated_models_equal_validated_ones() -> None:
    values = {
        "parent": "A",
        "child": "B",
        "kind": "merge",
        "quantity": Decimal("1.5"),
        "uom": "kg",
        "execution_id": uuid.UUID(int=7),
    }
    made = unvalidated(TraceEdge)(dict(values))
    checked = TraceEdge.model_validate(values)
    assert made == checked
    assert made.model_dump_json() == checked.model_dump_json()
    assert made.model_fields_set == checked.model_fields_set
    made.uom = "g"  # an assignment leaves the other instances alone
    assert unvalidated(TraceEdge)(dict(values)).uom == "kg"
    with pytest.raises(TypeError, match="model_construct"):
        unvalidated(ProduceRequest)  # fields with defaults


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite runs one writer at a time")
@pytest.mark.parametrize("first_commits_first", [True, False])
async def test_concurrent_edges_close_each_other(
    ctx: AppContext, first_commits_first: bool
) -> None:
    """A -> B and C -> D added by two open transactions, where B already reaches C: whichever
    commits second closes over the other's edge in its commit-time turn, so (A, D) is
    there either way; neither transaction waits for the other before it commits."""
    await _material(ctx, "MON", "monomer", "kg")
    for lot in ("A-1", "B-1", "C-1", "D-1"):
        await _receive(ctx, "MON", lot, "10", "kg")
    async with ctx.db.sessionmaker() as s:
        a, b, c, d = [(await lots.get_lot(s, n)).id for n in ("A-1", "B-1", "C-1", "D-1")]

    async def link(s: AsyncSession, parent: uuid.UUID, child: uuid.UUID) -> None:
        s.add(
            GenealogyEdge(
                parent_lot_id=parent,
                child_lot_id=child,
                kind=EdgeKind.transform,
                quantity=Decimal(1),
                uom="kg",
                execution_id=uuid.uuid4(),
            )
        )
        await s.flush()
        await repo.add_reach(s, parent, child)

    async with ctx.db.sessionmaker() as s, s.begin():
        await link(s, b, c)
    first, second = ctx.db.sessionmaker(), ctx.db.sessionmaker()
    await first.begin()
    await second.begin()
    await link(first, a, b)
    await link(second, c, d)
    for session in (first, second) if first_commits_first else (second, first):
        await session.commit()
        await session.close()
    await assert_closure(ctx)
    assert (a, d) in await _closure(ctx)
    assert (a, d) in await _closure(ctx)


async def test_pilot_ancestry_is_seen_in_the_transaction_that_links_it(ctx: AppContext) -> None:
    """RL-1 within one transaction: an edge from a pilot lot added and then the ancestry read
    (as a release right after production would) - the closure includes the new edge."""
    await _material(ctx, "MON", "monomer", "kg")
    for lot in ("P-1", "Q-1"):
        await _receive(ctx, "MON", lot, "10", "kg")
    async with ctx.db.sessionmaker() as s, s.begin():
        pilot, made = await lots.get_lot(s, "P-1"), await lots.get_lot(s, "Q-1")
        pilot.is_pilot = True
        s.add(pilot)
        s.add(
            GenealogyEdge(
                parent_lot_id=pilot.id,
                child_lot_id=made.id,
                kind=EdgeKind.transform,
                quantity=Decimal(1),
                uom="kg",
                execution_id=uuid.uuid4(),
            )
        )
        await s.flush()
        await repo.add_reach(s, pilot.id, made.id)
        origin = await lots.pilot_origin(s, made)
        assert origin is not None
        assert origin.lot_number == "P-1"
    await assert_closure(ctx)
