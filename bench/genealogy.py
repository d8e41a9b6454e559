"""Genealogy benchmark: traces and recall impact on a synthetic plant history.

Builds a deterministic plant history of at least ``--lots`` lots (default 1,000,000) and more
than three edges per lot - monomer -> (blend) -> resin -> (split) -> fibre -> braid -> (split)
-> suture -> pack -> sterilization load, with catalyst, initiator, needle, coating and
packaging lots, and a few high-fan-out "silo" lots - and its closure ``lot_reach``, then
measures, in one process on warm caches, p50/p95/max of each service call beside the very
statements that call runs, executed bare:

1. backward trace of a finished (pack) lot, full depth (``service.trace``),
2. forward trace of a raw monomer lot that is not a silo (``service.trace``),
3. recall impact of a silo lot reaching 100,000+ finished lots (``service.recall_impact``).

"Bare" is the SQL of the repository functions the service calls (``trace_queries``,
``recall_queries``), compiled beforehand and run on the driver connection of a session in the
same state: no ORM session, no result processing, no models. Both clocks start after the
session has its connection and transaction, so the ratio is what the service layer adds.
The recall's answer from ``lot_reach`` is also checked against a recursive walk of the edges.
The machine's speed at the time is printed too (CPU time of one Argon2id verify, as
``bench/shopfloor.py`` prints it): on a shared host it varies from hour to hour.

Targets (PostgreSQL): backward trace p95 < 10 ms, recall impact < 1 s, overhead ratio < 2x.

Run from the repository root::

    .venv/bin/python bench/genealogy.py              # PostgreSQL on 127.0.0.1, ~12 minutes
    .venv/bin/python bench/genealogy.py --database-url sqlite+aiosqlite:////tmp/bench.db \\
        --lots 30000 --repeat 20                     # quick SQLite smoke run, ~20 seconds

The default run creates the database ``mes_bench_genealogy`` (through an admin connection to
``postgresql://root@127.0.0.1:5432/test``) and drops it at the end unless ``--keep``; a kept
database (or SQLite file) is measured again without reloading with ``--reuse``. ``--profile``
adds per-statement timings, EXPLAIN ANALYZE and a cProfile of one service call.

The schema comes from the Alembic migrations; rows are bulk loaded (COPY on PostgreSQL,
executemany on SQLite) because the ORM is far too slow for millions of rows, and
``lot_reach`` is then computed from the edges in SQL (``repository.reach_fill_stmt``, with its
primary key built afterwards on PostgreSQL). Ids are UUIDv7 shaped and time ordered like
``mes.ids.uuid7`` but drawn from the seeded generator, so a seed always gives the same history.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import pstats
import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event, exists, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import SQLModel, col

from mes.db import create_engine, create_sessionmaker, sqlite_file
from mes.genealogy import repository as repo
from mes.genealogy.repository import LOT, MATERIAL, Direction
from mes.genealogy.service import MAX_DEPTH, recall_impact, trace
from mes.identity.passwords import STANDARD
from mes.material.rules import gtin_check_digit
from mes.migrate import current_revision, upgrade
from mes.models import Lot

ADMIN_DSN = "postgresql://root@127.0.0.1:5432/test"
BENCH_DB = "mes_bench_genealogy"
REACH_PK = "pk_lot_reach"
CHUNK = 200_000  # rows buffered (all tables together) before a COPY round

SPEED_PASSWORD = "machine-speed-yardstick"
TARGET_BACKWARD_P95_MS = 10.0
TARGET_RECALL_MS = 1000.0
TARGET_RATIO = 2.0
MIN_RECALL_FINISHED = 100_000

HISTORY_START = datetime(2023, 1, 2, tzinfo=UTC)
HISTORY_DAYS = 3 * 365

# Resin recipes: resin -> the monomers it is polymerised from, and its share of resin lots.
RESINS: dict[str, tuple[tuple[str, ...], float]] = {
    "PGA": (("GLY",), 0.30),
    "PGLA": (("GLY", "LLA"), 0.35),
    "PDO": (("PDO",), 0.15),
    "PGCL": (("GLY", "CL"), 0.20),
}
MONOMERS = ("GLY", "LLA", "PDO", "CL")
SIZES = ("2-0", "3-0", "4-0")
NEEDLES = ("RB1", "FS2")
PACKAGING = (
    ("PKG-FOIL", "packaging", "Foil pouch"),
    ("PKG-TYVEK", "packaging", "Tyvek outer pouch"),
    ("LBL-PACK", "label", "Pack label"),
    ("PKG-IFU", "packaging", "Instructions for use"),
    ("DES-SIEVE", "desiccant", "Molecular sieve desiccant"),
)
# Silo lots: (lot number, material code, share of eligible children it also feeds).
MONOMER_SILOS = (("SILO-GLY-0001", "MON-GLY", 0.045), ("SILO-LLA-0001", "MON-LLA", 0.03))
RESIN_SILO = ("SILO-PGCL-0001", "RES-PGCL", 0.05)
RECALL_SILO = MONOMER_SILOS[0][0]

LOT_COLUMNS = (
    "id",
    "version",
    "created_at",
    "updated_at",
    "lot_number",
    "material_id",
    "origin",
    "status",
    "uom",
    "initial_qty",
    "remaining_qty",
    "supplier",
    "supplier_lot",
    "manufactured_at",
    "expires_at",
    "execution_id",
)
EDGE_COLUMNS = (
    "id",
    "parent_lot_id",
    "child_lot_id",
    "kind",
    "quantity",
    "uom",
    "execution_id",
    "at",
)
TX_COLUMNS = (
    "id",
    "at",
    "kind",
    "lot_id",
    "quantity",
    "uom",
    "entered_quantity",
    "entered_uom",
    "execution_id",
    "username",
    "reason",
    "consignee",
)
LOAD_COLUMNS = ("id", "version", "created_at", "updated_at", "load_no", "sterilizer_id", "result")
LOAD_ITEM_COLUMNS = ("id", "load_id", "lot_id", "quantity", "uom")
SERIAL_COLUMNS = ("id", "lot_id", "gtin", "serial", "created_at", "created_by")
# Flush order: every row refers only to rows of tables before it (or earlier in its own).
TABLES: dict[str, tuple[str, ...]] = {
    "lot": LOT_COLUMNS,
    "genealogy_edge": EDGE_COLUMNS,
    "material_transaction": TX_COLUMNS,
    "sterilization_load": LOAD_COLUMNS,
    "load_item": LOAD_ITEM_COLUMNS,
    "serial_unit": SERIAL_COLUMNS,
}

Row = tuple[Any, ...]
# username, reason and consignee of the ledger rows, per kind
TX_TAIL: dict[str, tuple[str, str, str | None]] = {
    "received": ("bench", "received", None),
    "produced": ("bench", "produced", None),
    "consumed": ("bench", "consumed", None),
    "shipped": ("bench", "shipped", "Distributor EU"),
}


# --- loading -----------------------------------------------------------------------------------


class Loader:
    """Buffers rows per table and writes them in chunks, parents before children."""

    def __init__(self, engine: AsyncEngine, pg: asyncpg.Connection | None) -> None:
        self.engine = engine
        self.pg = pg
        self.buffers: dict[str, list[Row]] = {name: [] for name in TABLES}
        self.pending = 0
        self.counts: dict[str, int] = defaultdict(int)
        self.write_seconds = 0.0

    def add(self, table: str, row: Row) -> None:
        self.buffers[table].append(row)
        self.pending += 1

    async def maybe_flush(self) -> None:
        if self.pending >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        start = time.perf_counter()
        for table, columns in TABLES.items():
            rows = self.buffers[table]
            if not rows:
                continue
            if self.pg is not None:
                await self.pg.copy_records_to_table(table, records=rows, columns=list(columns))
            else:
                await self._sqlite_insert(table, columns, rows)
            self.counts[table] += len(rows)
            self.buffers[table] = []
        self.pending = 0
        self.write_seconds += time.perf_counter() - start

    async def _sqlite_insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        target = SQLModel.metadata.tables[table]
        async with self.engine.begin() as conn:
            await conn.execute(target.insert(), [dict(zip(columns, r, strict=True)) for r in rows])


# --- generation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    id: uuid.UUID
    code: str
    name: str
    kind: str
    uom: str
    gtin: str | None
    shelf_life_days: int | None


class Plant:
    """Generates the history stage by stage; every edge goes from an earlier stage to a later
    one, so the graph is a DAG by construction."""

    def __init__(self, n_lots: int, seed: int, loader: Loader) -> None:
        self.n = n_lots
        self.rng = random.Random(seed)
        self.loader = loader
        self.materials: dict[str, Material] = {}
        # Lots available as inputs, per material code, in production order.
        self.pools: dict[str, list[uuid.UUID]] = defaultdict(list)
        self.numbers: dict[str, int] = defaultdict(int)
        self.qty = [Decimal(q) for q in ("1", "2.5", "5", "10", "12", "20", "25", "36", "50")]
        self.neg = {q: -q for q in self.qty}
        self.lot_total = 0
        self.edge_total = 0
        self.sterilizer_id = self.uuid_at(self.moment(-30)[1])
        self.gtins: set[str] = set()

    # ids, times, numbers

    def uuid_at(self, ms: int) -> uuid.UUID:
        """A UUIDv7 layout (48-bit ms, version, 12+62 random bits) from the seeded rng."""
        r = self.rng.getrandbits(74)
        value = (ms << 80) | (0x7 << 76) | ((r >> 62) << 64) | (0b10 << 62) | (r & ((1 << 62) - 1))
        return uuid.UUID(int=value)

    @staticmethod
    def moment(day: float) -> tuple[datetime, int]:
        at = HISTORY_START + timedelta(days=day)
        return at, int(at.timestamp() * 1000)

    def number(self, prefix: str) -> str:
        self.numbers[prefix] += 1
        return f"{prefix}{self.numbers[prefix]:07d}"

    # master data

    def material(
        self, code: str, kind: str, uom: str, name: str, *, gtin: bool = False
    ) -> Material:
        gtin_value: str | None = None
        if gtin:
            body = f"1061414{len(self.gtins) + 1:06d}"
            gtin_value = body + str(gtin_check_digit(body))
            self.gtins.add(gtin_value)
        m = Material(
            id=self.uuid_at(self.moment(-30)[1]),
            code=code,
            name=name,
            kind=kind,
            uom=uom,
            gtin=gtin_value,
            shelf_life_days=None if kind in {"needle", "label"} else 3 * 365,
        )
        self.materials[code] = m
        return m

    def define_materials(self) -> None:
        names = {"GLY": "Glycolide", "LLA": "L-lactide", "PDO": "p-Dioxanone", "CL": "Caprolactone"}
        for mono in MONOMERS:
            self.material(f"MON-{mono}", "monomer", "kg", names[mono])
        self.material("CAT-SNOCT", "catalyst", "g", "Stannous octoate")
        self.material("INI-DODOL", "initiator", "g", "1-Dodecanol")
        self.material("COAT-CAST", "coating", "kg", "Calcium stearate coating")
        for needle in NEEDLES:
            self.material(f"NDL-{needle}", "needle", "ea", f"Needle {needle}")
        for code, kind, name in PACKAGING:
            self.material(code, kind, "ea", name)
        for resin in RESINS:
            self.material(f"RES-{resin}", "resin", "kg", f"{resin} resin")
            self.material(f"FIB-{resin}", "fibre", "kg", f"{resin} multifilament yarn")
            for size in SIZES:
                self.material(f"BRD-{resin}-{size}", "braid", "m", f"{resin} braid USP {size}")
                for needle in NEEDLES:
                    suture = f"SUT-{resin}-{size}-{needle}"
                    self.material(suture, "suture", "ea", f"{resin} {size} {needle}", gtin=True)
                    pack = f"PK-{resin}-{size}-{needle}-12"
                    self.material(pack, "device", "ea", f"Box of 12, {suture}", gtin=True)

    def master_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        at, _ = self.moment(-30)
        materials = [
            {
                "id": m.id,
                "version": 1,
                "created_at": at,
                "updated_at": at,
                "code": m.code,
                "name": m.name,
                "kind": m.kind,
                "base_uom": m.uom,
                "shelf_life_days": m.shelf_life_days,
                "moisture_sensitive": m.kind in {"monomer", "resin", "fibre", "braid"},
                "max_exposure_min": None,
                "implant_traceable": m.gtin is not None,
                "gtin": m.gtin,
                "description": "bench",
                "is_active": True,
            }
            for m in self.materials.values()
        ]
        sterilizer = {
            "id": self.sterilizer_id,
            "version": 1,
            "created_at": at,
            "updated_at": at,
            "code": "EO-STERILIZER-1",
            "name": "EO sterilizer 1",
            "level": "unit",
            "is_dry_room": False,
            "is_active": True,
        }
        return materials, sterilizer

    # rows

    def lot(
        self,
        m: Material,
        prefix: str,
        day: float,
        *,
        produced: bool,
        status: str = "released",
        execution_id: uuid.UUID | None = None,
        number: str | None = None,
    ) -> tuple[uuid.UUID, datetime, int]:
        """A lot and its first ledger row (received or produced)."""
        at, ms = self.moment(day)
        lot_id = self.uuid_at(ms)
        qty = self.rng.choice(self.qty)
        remaining = Decimal(0) if status == "consumed" else qty
        expires = at + timedelta(days=m.shelf_life_days) if m.shelf_life_days else None
        supplier = None if produced else "Supplier " + m.code.split("-")[0]
        self.loader.add(
            "lot",
            (
                lot_id,
                1,
                at,
                at,
                number or self.number(prefix),
                m.id,
                "produced" if produced else "received",
                status,
                m.uom,
                qty,
                remaining,
                supplier,
                None if produced else f"S{ms % 10_000_000:07d}",
                at,
                expires,
                execution_id,
            ),
        )
        kind = "produced" if produced else "received"
        self.loader.add(
            "material_transaction",
            (
                self.uuid_at(ms),
                at,
                kind,
                lot_id,
                qty,
                m.uom,
                qty,
                m.uom,
                execution_id,
                *TX_TAIL[kind],
            ),
        )
        self.lot_total += 1
        return lot_id, at, ms

    def edge(
        self,
        parent: uuid.UUID,
        parent_uom: str,
        child: uuid.UUID,
        kind: str,
        execution_id: uuid.UUID,
        at: datetime,
        ms: int,
    ) -> None:
        """An edge and the consumption ledger row of the same execution."""
        qty = self.rng.choice(self.qty)
        self.loader.add(
            "genealogy_edge",
            (self.uuid_at(ms), parent, child, kind, qty, parent_uom, execution_id, at),
        )
        neg, uom = self.neg[qty], parent_uom
        tx_id = self.uuid_at(ms)
        self.loader.add(
            "material_transaction",
            (tx_id, at, "consumed", parent, neg, uom, neg, uom, execution_id, *TX_TAIL["consumed"]),
        )
        self.edge_total += 1

    def pick(self, pool: list[uuid.UUID], frac: float, k: int) -> list[uuid.UUID]:
        """``k`` distinct lots produced around the same time (a window of ~2% of the pool)."""
        n = len(pool)
        if n <= k:
            return list(pool)
        w = max(8, n // 100)
        lo = max(0, min(int(frac * n) - w, n - 2 * w))
        hi = min(n, lo + 2 * w)
        out: list[uuid.UUID] = []
        while len(out) < k:
            candidate = pool[self.rng.randrange(lo, hi)]
            if candidate not in out:
                out.append(candidate)
        return out

    def produce(
        self,
        m: Material,
        prefix: str,
        day: float,
        inputs: Sequence[tuple[uuid.UUID, Material]],
        *,
        kind: str = "transform",
        status: str = "released",
        number: str | None = None,
    ) -> tuple[uuid.UUID, datetime, int]:
        _, ms = self.moment(day)
        execution_id = self.uuid_at(ms)
        lot_id, at, ms = self.lot(
            m, prefix, day, produced=True, status=status, execution_id=execution_id, number=number
        )
        for parent, pm in inputs:
            self.edge(parent, pm.uom, lot_id, kind, execution_id, at, ms)
        return lot_id, at, ms

    def split(self, parent: uuid.UUID, m: Material, prefix: str, day: float) -> list[uuid.UUID]:
        """A lot split into 2-4 children of the same material (the parent is consumed)."""
        _, ms = self.moment(day)
        execution_id = self.uuid_at(ms)
        children: list[uuid.UUID] = []
        for _ in range(self.rng.randint(2, 4)):
            child, at, cms = self.lot(m, prefix, day, produced=True, execution_id=execution_id)
            self.edge(parent, m.uom, child, "split", execution_id, at, cms)
            children.append(child)
        return children

    def stage_day(self, i: int, n: int, lag: float) -> float:
        return lag + (i + self.rng.random()) / n * (HISTORY_DAYS - 60)

    def count(self, share: float) -> int:
        return max(4, math.ceil(share * self.n))

    # stages

    async def generate(self) -> None:
        rng = self.rng
        mats = self.materials
        pools = self.pools

        # Raw materials received; ~30% of monomer lots are blend stock (consumed by blends).
        blend_stock: dict[str, list[uuid.UUID]] = defaultdict(list)
        raw: list[tuple[str, str, float]] = [(f"MON-{m}", "M", 0.0075) for m in MONOMERS]
        raw += [("CAT-SNOCT", "C", 0.001), ("INI-DODOL", "I", 0.001)]
        raw += [("COAT-CAST", "K", 0.002)]
        raw += [(f"NDL-{n}", "N", 0.005) for n in NEEDLES]
        raw += [(code, "P", 0.008) for code, _, _ in PACKAGING]
        for code, prefix, share in raw:
            m = mats[code]
            n = self.count(share)
            for i in range(n):
                for_blend = m.kind == "monomer" and rng.random() < 0.3
                lot_id, _, _ = self.lot(
                    m,
                    prefix,
                    self.stage_day(i, n, 0),
                    produced=False,
                    status="consumed" if for_blend else "released",
                )
                (blend_stock[code] if for_blend else pools[code]).append(lot_id)
                await self.loader.maybe_flush()

        silos: dict[str, uuid.UUID] = {}
        for number, code, _ in MONOMER_SILOS:
            silos[number], _, _ = self.lot(mats[code], "", 1.0, produced=False, number=number)

        # Monomer blends (merge): 2-3 stock lots of one monomer -> one blended lot.
        for code, stock in blend_stock.items():
            m = mats[code]
            i = 0
            while i + 1 < len(stock):
                k = rng.randint(2, 3)
                group = stock[i : i + k]
                i += k
                day = self.stage_day(i, len(stock), 2)
                lot_id, _, _ = self.produce(m, "B", day, [(p, m) for p in group], kind="merge")
                pools[code].append(lot_id)
                await self.loader.maybe_flush()
            pools[code].sort()  # UUIDv7: production order, blends among the receipts

        # Resin: 2-3 monomer lots of the recipe + catalyst + initiator (+ a silo now and then);
        # ~20% of resin lots are split into drums before spinning.
        cat, ini = mats["CAT-SNOCT"], mats["INI-DODOL"]
        resin_names = list(RESINS)
        weights = [RESINS[r][1] for r in resin_names]
        n = self.count(0.04)
        silo_codes = {code: (silos[number], share) for number, code, share in MONOMER_SILOS}
        resin_silo: uuid.UUID | None = None
        for i in range(n):
            resin = rng.choices(resin_names, weights)[0]
            recipe = RESINS[resin][0]
            day = self.stage_day(i, n, 10)
            frac = i / n
            inputs: list[tuple[uuid.UUID, Material]] = []
            k = rng.randint(2, 3)
            for j, mono in enumerate(recipe):
                mm = mats[f"MON-{mono}"]
                share_k = k // len(recipe) + (1 if j < k % len(recipe) else 0)
                inputs += [(p, mm) for p in self.pick(pools[mm.code], frac, max(1, share_k))]
                silo = silo_codes.get(mm.code)
                if silo is not None and rng.random() < silo[1]:
                    inputs.append((silo[0], mm))
            inputs.append((self.pick(pools[cat.code], frac, 1)[0], cat))
            inputs.append((self.pick(pools[ini.code], frac, 1)[0], ini))
            m = mats[f"RES-{resin}"]
            if resin_silo is None and resin == RESIN_SILO[1].removeprefix("RES-"):
                resin_silo, _, _ = self.produce(m, "", day, inputs, number=RESIN_SILO[0])
                continue
            is_split = rng.random() < 0.2
            lot_id, _, _ = self.produce(
                m, "R", day, inputs, status="consumed" if is_split else "released"
            )
            if is_split:
                pools[m.code] += self.split(lot_id, m, "R", day + 1)
            else:
                pools[m.code].append(lot_id)
            await self.loader.maybe_flush()

        # Fibre: 1-2 resin lots of its polymer (+ the resin silo for some PGCL fibre).
        n = self.count(0.09)
        for i in range(n):
            resin = rng.choices(resin_names, weights)[0]
            rm = mats[f"RES-{resin}"]
            inputs = [(p, rm) for p in self.pick(pools[rm.code], i / n, rng.randint(1, 2))]
            if resin_silo is not None and rm.code == RESIN_SILO[1] and rng.random() < RESIN_SILO[2]:
                inputs.append((resin_silo, rm))
            lot_id, _, _ = self.produce(mats[f"FIB-{resin}"], "F", self.stage_day(i, n, 20), inputs)
            pools[f"FIB-{resin}"].append(lot_id)
            await self.loader.maybe_flush()

        # Braid: 3-4 fibre lots (multi-end); ~15% of spools are split.
        n = self.count(0.08)
        for i in range(n):
            resin = rng.choices(resin_names, weights)[0]
            fm = mats[f"FIB-{resin}"]
            m = mats[f"BRD-{resin}-{rng.choice(SIZES)}"]
            day = self.stage_day(i, n, 30)
            inputs = [(p, fm) for p in self.pick(pools[fm.code], i / n, rng.randint(3, 4))]
            is_split = rng.random() < 0.15
            lot_id, _, _ = self.produce(
                m, "D", day, inputs, status="consumed" if is_split else "released"
            )
            if is_split:
                pools[m.code] += self.split(lot_id, m, "D", day + 1)
            else:
                pools[m.code].append(lot_id)
            await self.loader.maybe_flush()

        # Suture: 1 braid + 1 needle lot + 1 coating lot.
        coat = mats["COAT-CAST"]
        suture_codes = [c for c, m in mats.items() if m.kind == "suture"]
        n = self.count(0.24)
        for i in range(n):
            code = rng.choice(suture_codes)
            _, resin, s1, s2, needle = code.split("-")
            bm, nm = mats[f"BRD-{resin}-{s1}-{s2}"], mats[f"NDL-{needle}"]
            frac = i / n
            inputs = [
                (self.pick(pools[bm.code], frac, 1)[0], bm),
                (self.pick(pools[nm.code], frac, 1)[0], nm),
                (self.pick(pools[coat.code], frac, 1)[0], coat),
            ]
            lot_id, _, _ = self.produce(mats[code], "S", self.stage_day(i, n, 40), inputs)
            pools[code].append(lot_id)
            await self.loader.maybe_flush()

        # Pack: 1-2 suture lots + foil, Tyvek, label, IFU and desiccant lots; packs go through
        # EO sterilization in loads of 40-60 lots; ~30% are shipped, ~2% are serialised.
        pkg = [mats[code] for code, _, _ in PACKAGING]
        n = max(self.count(0.42), self.n - self.lot_total)
        load_id: uuid.UUID | None = None
        load_left = 0
        loads = 0
        shipped, ship_tail = self.neg[self.qty[3]], TX_TAIL["shipped"]
        for i in range(n):
            code = rng.choice(suture_codes)
            sm = mats[code]
            pm = mats[f"PK-{code.removeprefix('SUT-')}-12"]
            frac = i / n
            inputs = [(p, sm) for p in self.pick(pools[code], frac, rng.randint(1, 2))]
            inputs += [(self.pick(pools[x.code], frac, 1)[0], x) for x in pkg]
            is_shipped = rng.random() < 0.3
            lot_id, at, ms = self.produce(
                pm,
                "K",
                self.stage_day(i, n, 50),
                inputs,
                status="shipped" if is_shipped else "released",
            )
            if load_left == 0:
                loads += 1
                load_id = self.uuid_at(ms)
                load_left = rng.randint(40, 60)
                self.loader.add(
                    "sterilization_load",
                    (load_id, 1, at, at, f"EO-{loads:07d}", self.sterilizer_id, "passed"),
                )
            load_left -= 1
            self.loader.add("load_item", (self.uuid_at(ms), load_id, lot_id, self.qty[3], "ea"))
            if is_shipped:
                ship, ship_id = at + timedelta(days=5), self.uuid_at(ms + 5 * 86_400_000)
                self.loader.add(
                    "material_transaction",
                    (
                        ship_id,
                        ship,
                        "shipped",
                        lot_id,
                        shipped,
                        "ea",
                        shipped,
                        "ea",
                        None,
                        *ship_tail,
                    ),
                )
            if rng.random() < 0.02:
                assert pm.gtin is not None
                for s in range(10):
                    self.loader.add(
                        "serial_unit",
                        (self.uuid_at(ms), lot_id, pm.gtin, f"{i:09d}{s:03d}", at, "bench"),
                    )
            await self.loader.maybe_flush()
        await self.loader.flush()


# --- database setup ----------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    backend: str
    created_db: str | None = None  # PostgreSQL database created (and dropped) by the bench
    sqlite_path: Path | None = None


async def prepare_target(args: argparse.Namespace) -> Target:
    if args.database_url is None:
        url = f"postgresql+asyncpg://root@127.0.0.1:5432/{BENCH_DB}"
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB)
            if not (exists and args.reuse):
                await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
                await admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
        finally:
            await admin.close()
        return Target(url=url, backend="postgresql", created_db=BENCH_DB)
    url = args.database_url
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is None:
            raise SystemExit("an in-memory SQLite database cannot be benchmarked; give a file")
        if file_exists(path) and not args.reuse:
            raise SystemExit(f"{path} exists: delete it, or pass --reuse to measure it again")
        return Target(url=url, backend="sqlite", sqlite_path=Path(path))
    if url.startswith("postgresql"):
        return Target(url=url, backend="postgresql")
    raise SystemExit(f"unsupported database URL {url!r}")


async def cleanup_target(target: Target, keep: bool) -> None:
    if keep:
        print(f"kept the database: {target.url}")
        return
    if target.created_db is not None:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{target.created_db}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"dropped database {target.created_db}")
    elif target.sqlite_path is not None:
        remove_sqlite(target.sqlite_path)
        print(f"removed {target.sqlite_path}")


def file_exists(path: str) -> bool:
    return Path(path).exists()


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def lot_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(LOT))).scalar_one())


async def load(engine: AsyncEngine, target: Target, n_lots: int, seed: int) -> None:
    started = time.perf_counter()
    pg = None
    if target.backend == "postgresql":
        pg = await asyncpg.connect(asyncpg_dsn(target.url))
        await pg.execute("SET synchronous_commit TO off")
        # Bulk rows skip the triggers (the closure is filled afterwards in one statement).
        await pg.execute("SET session_replication_role TO replica")
    try:
        loader = Loader(engine, pg)
        plant = Plant(n_lots, seed, loader)
        plant.define_materials()
        materials, sterilizer = plant.master_rows()
        async with engine.begin() as conn:
            await conn.execute(SQLModel.metadata.tables["material_definition"].insert(), materials)
            await conn.execute(SQLModel.metadata.tables["equipment"].insert(), [sterilizer])
        await plant.generate()
        loaded = time.perf_counter()
        print(
            f"generated + loaded in {loaded - started:.1f} s "
            f"(writing {loader.write_seconds:.1f} s, generating "
            f"{loaded - started - loader.write_seconds:.1f} s)"
        )
        await fill_reach(engine)
        analysed = time.perf_counter()
        if pg is not None:
            for table in ("material_definition", "equipment", *TABLES, "lot_reach"):
                await pg.execute(f"VACUUM (ANALYZE) {table}")
            print(f"VACUUM (ANALYZE) in {time.perf_counter() - analysed:.1f} s")
        else:
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
            print(f"ANALYZE in {time.perf_counter() - analysed:.1f} s")
    finally:
        if pg is not None:
            await pg.close()
    print(f"load total {time.perf_counter() - started:.1f} s")


async def fill_reach(engine: AsyncEngine) -> None:
    """The closure ``lot_reach`` of the bulk-loaded edges, by the repository's statement. On
    PostgreSQL the primary key is built after the rows, as a bulk load would."""
    started = time.perf_counter()
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
            await conn.exec_driver_sql(f"ALTER TABLE lot_reach DROP CONSTRAINT {REACH_PK}")
        await conn.execute(repo.reach_fill_stmt())
        filled = time.perf_counter()
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(
                f"ALTER TABLE lot_reach ADD CONSTRAINT {REACH_PK} "
                "PRIMARY KEY (ancestor_lot_id, descendant_lot_id)"
            )
        rows = (await conn.execute(select(func.count()).select_from(repo.REACH))).scalar_one()
    done = time.perf_counter()
    print(
        f"lot_reach: {rows:,} rows built in {done - started:.1f} s "
        f"(pairs {filled - started:.1f} s, primary key {done - filled:.1f} s)"
    )


async def print_counts(engine: AsyncEngine) -> tuple[int, int]:
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in ("material_definition", *TABLES, "lot_reach"):
            t = SQLModel.metadata.tables[table]
            counts[table] = (await conn.execute(select(func.count()).select_from(t))).scalar() or 0
    print("rows: " + ", ".join(f"{t} {c:,}" for t, c in counts.items()))
    lots, edges = counts["lot"], counts["genealogy_edge"]
    print(f"edges per lot: {edges / max(lots, 1):.2f}")
    return lots, edges


# --- measurement -------------------------------------------------------------------------------

Call = Callable[[AsyncSession, Lot], Awaitable[object]]
# The statements a service call runs, from the repository function the service itself calls.
Queries = Callable[[str, Lot], list[repo.Query]]


@dataclass
class Measurement:
    name: str
    service: list[float]
    bare: list[float]
    note: str = ""


@dataclass
class Subject:
    """One measured service call and the statements it runs."""

    name: str
    service: Call
    queries: Queries


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (ms)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def driver_sql(stmt: Any, params: dict[str, Any], dialect: Any) -> tuple[str, tuple[Any, ...]]:
    """The SQL text and positional driver arguments that SQLAlchemy sends for ``stmt``."""
    compiled = stmt.compile(dialect=dialect)
    values = compiled.construct_params(params)
    processors = compiled._bind_processors  # e.g. UUID -> hex text on SQLite
    return compiled.string, tuple(
        processors[name](values[name]) if name in processors else values[name]
        for name in compiled.positiontup or ()
    )


async def open_transaction(session: AsyncSession) -> None:
    """Check out the session's connection and begin its transaction, which every sample
    does before its clock starts: the samples time the call, not the connection pool."""
    await session.execute(text("SELECT 1"))


async def time_service(sm: async_sessionmaker[AsyncSession], subject: Subject, lot: Lot) -> float:
    async with sm() as session:
        await open_transaction(session)
        start = time.perf_counter()
        await subject.service(session, lot)
        return (time.perf_counter() - start) * 1000


async def time_bare(sm: async_sessionmaker[AsyncSession], subject: Subject, lot: Lot) -> float:
    """The service's statements, compiled beforehand, run on the raw driver connection of a
    session in the same state: no ORM session, no result processing, no model building."""
    async with sm() as session:
        await open_transaction(session)
        conn = await session.connection()
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        statements = [
            driver_sql(stmt, params, conn.dialect)
            for stmt, params in subject.queries(conn.dialect.name, lot)
        ]
        start = time.perf_counter()
        if conn.dialect.name == "postgresql":
            for sql, args in statements:
                await driver.fetch(sql, *args)
        else:
            for sql, args in statements:
                cursor = await driver.execute(sql, args)
                await cursor.fetchall()
                await cursor.close()
        return (time.perf_counter() - start) * 1000


async def measure_pair(
    sm: async_sessionmaker[AsyncSession], subject: Subject, lots: Sequence[Lot], warmup: int
) -> Measurement:
    """Alternates service and bare calls on the same lot (which goes first alternates too)."""
    for lot in lots[:warmup]:
        await time_service(sm, subject, lot)
        await time_bare(sm, subject, lot)
    s: list[float] = []
    b: list[float] = []
    for i, lot in enumerate(lots):
        if i % 2 == 0:
            s.append(await time_service(sm, subject, lot))
            b.append(await time_bare(sm, subject, lot))
        else:
            b.append(await time_bare(sm, subject, lot))
            s.append(await time_service(sm, subject, lot))
    return Measurement(subject.name, s, b)


def trace_subject(name: str, direction: Direction) -> Subject:
    async def call(session: AsyncSession, lot: Lot) -> object:
        return await trace(session, lot, direction, MAX_DEPTH)

    def queries(dialect: str, lot: Lot) -> list[repo.Query]:
        return repo.trace_queries(lot.id, direction, MAX_DEPTH)

    return Subject(name, call, queries)


def recall_subject(name: str) -> Subject:
    async def call(session: AsyncSession, lot: Lot) -> object:
        return await recall_impact(session, lot)

    def queries(dialect: str, lot: Lot) -> list[repo.Query]:
        return repo.recall_queries(dialect, lot.id)

    return Subject(name, call, queries)


async def sample_ids(
    sm: async_sessionmaker[AsyncSession], where: Any, k: int, rng: random.Random
) -> list[uuid.UUID]:
    async with sm() as session:
        stmt = (
            select(LOT.c.id)
            .select_from(LOT.join(MATERIAL, MATERIAL.c.id == LOT.c.material_id))
            .where(where)
            .order_by(LOT.c.id)
        )
        ids = list((await session.execute(stmt)).scalars())
    if not ids:
        raise SystemExit("no lots to sample: is the database loaded?")
    return [rng.choice(ids) for _ in range(k)]


async def fetch_lots(sm: async_sessionmaker[AsyncSession], ids: Sequence[uuid.UUID]) -> list[Lot]:
    """Lots loaded once up front (detached, attributes loaded): the samples time the service
    call itself, as an API handler calls it with the lot it has resolved."""
    async with sm() as session:
        found = {
            lot.id: lot
            for lot in (
                await session.execute(select(Lot).where(col(Lot.id).in_(set(ids))))
            ).scalars()
        }
    return [found[i] for i in ids]


def fmt_ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}"


def print_table(results: Sequence[Measurement]) -> None:
    print()
    print(
        "| measurement | n | service p50 | service p95 | service max "
        "| bare p50 | bare p95 | bare max | ratio p50 | ratio p95 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s50, s95, b50, b95 = (
            pct(r.service, 50),
            pct(r.service, 95),
            pct(r.bare, 50),
            pct(r.bare, 95),
        )
        cells = [
            r.name + (f" ({r.note})" if r.note else ""),
            str(len(r.service)),
            fmt_ms(s50),
            fmt_ms(s95),
            fmt_ms(max(r.service)),
            fmt_ms(b50),
            fmt_ms(b95),
            fmt_ms(max(r.bare)),
            f"{s50 / b50:.2f}x",
            f"{s95 / b95:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        "(times in ms; each sample is a fresh session, its connection and transaction open "
        "before the clock starts; ratio = service / bare)"
    )


def print_targets(backend: str, results: Sequence[Measurement], finished: int) -> bool:
    backward, _, recall = results
    rows: list[tuple[str, str, str, bool]] = [
        (
            "backward trace p95 (service)",
            f"{pct(backward.service, 95):.2f} ms",
            f"< {TARGET_BACKWARD_P95_MS:.0f} ms",
            pct(backward.service, 95) < TARGET_BACKWARD_P95_MS,
        ),
        (
            f"recall impact p95 (service, {finished:,} finished lots)",
            f"{pct(recall.service, 95):.0f} ms",
            f"< {TARGET_RECALL_MS:.0f} ms",
            pct(recall.service, 95) < TARGET_RECALL_MS,
        ),
        (
            "recall reaches 100,000+ finished lots",
            f"{finished:,}",
            f">= {MIN_RECALL_FINISHED:,}",
            finished >= MIN_RECALL_FINISHED,
        ),
    ]
    for r in results:
        r50 = pct(r.service, 50) / pct(r.bare, 50)
        r95 = pct(r.service, 95) / pct(r.bare, 95)
        rows.append(
            (
                f"overhead ratio, {r.name} (p50 / p95)",
                f"{r50:.2f}x / {r95:.2f}x",
                f"< {TARGET_RATIO:.0f}x",
                max(r50, r95) < TARGET_RATIO,
            )
        )
    print()
    print(f"Targets ({backend}; the targets are set for PostgreSQL)")
    print()
    print("| target | measured | limit | result |")
    print("|---|---:|---:|---|")
    for name, measured, limit, ok in rows:
        print(f"| {name} | {measured} | {limit} | {'PASS' if ok else 'FAIL'} |")
    return all(ok for *_, ok in rows)


# --- profiling ---------------------------------------------------------------------------------


async def statement_timings(
    engine: AsyncEngine, sm: async_sessionmaker[AsyncSession], subject: Subject, lot: Lot
) -> None:
    """Each SQL statement of one service call, with its database round trip time."""
    log: list[tuple[float, str]] = []

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        t0 = conn.info["bench_t0"].pop()
        log.append(((time.perf_counter() - t0) * 1000, " ".join(statement.split())))

    async with sm() as session:
        await open_transaction(session)
        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)
        try:
            start = time.perf_counter()
            await subject.service(session, lot)
            total = (time.perf_counter() - start) * 1000
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", before)
            event.remove(engine.sync_engine, "after_cursor_execute", after)
    print(
        f"\nservice {subject.name}: {total:.1f} ms total, "
        f"{sum(t for t, _ in log):.1f} ms in statements"
    )
    for ms, statement in log:
        short = statement if len(statement) <= 110 else statement[:107] + "..."
        print(f"  {ms:8.2f} ms  {short}")


async def explain(engine: AsyncEngine, subject: Subject, lot: Lot) -> None:
    """EXPLAIN ANALYZE of the last statement of a call, after the ones before it (settings)."""
    async with engine.begin() as conn:
        statements = [
            driver_sql(stmt, params, conn.dialect)
            for stmt, params in subject.queries(conn.dialect.name, lot)
        ]
        for sql, args in statements[:-1]:
            await conn.exec_driver_sql(sql, args)
        sql, args = statements[-1]
        rows = (await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, args)).all()
    lines = [str(r[0]) for r in rows]
    print(f"\nEXPLAIN ANALYZE {subject.name}:")
    for ln in lines:
        print("  " + ln)


async def profile_call(sm: async_sessionmaker[AsyncSession], subject: Subject, lot: Lot) -> None:
    profiler = cProfile.Profile()
    async with sm() as session:
        await open_transaction(session)
        start = time.perf_counter()
        profiler.enable()
        await subject.service(session, lot)
        profiler.disable()
        ms = (time.perf_counter() - start) * 1000
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(22)
        body = out.getvalue()
        begin = body.find("   ncalls")
        print(f"\ncProfile of {subject.name} ({ms:.0f} ms under the profiler), top by {sort}:")
        print(body[begin:].rstrip())


# --- main --------------------------------------------------------------------------------------


def host_speed_ms() -> float:
    """A yardstick of the machine's speed at the time of the run, which varies from hour to
    hour on shared hosts: CPU milliseconds of one Argon2id verify of the standard profile
    (median of five; ``bench/shopfloor.py`` prints the same figure)."""
    hashed = STANDARD.hash(SPEED_PASSWORD)
    cpus = []
    for _ in range(5):
        start = time.process_time()
        STANDARD.verify(SPEED_PASSWORD, hashed)
        cpus.append(time.process_time() - start)
    return sorted(cpus)[2] * 1000


async def run(args: argparse.Namespace) -> int:
    target = await prepare_target(args)
    engine = create_engine(target.url)
    print(f"backend: {target.backend} ({make_url(target.url).render_as_string()})")
    print(f"lots requested: {args.lots:,}, seed {args.seed}")
    ok = False
    try:
        started = time.perf_counter()
        before = await current_revision(engine)
        await upgrade(engine)
        if before is not None and before != await current_revision(engine):
            # e.g. a kept database from before lot_reach: the migration fills it from the edges
            print(f"schema upgraded from {before} in {time.perf_counter() - started:.1f} s")
            if target.backend == "postgresql":
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.exec_driver_sql("VACUUM (ANALYZE) lot_reach")
        if args.reuse and await lot_count(engine) > 0:
            print("reusing the loaded history (--reuse)")
        elif await lot_count(engine) > 0:
            raise SystemExit("the database already holds lots: pass --reuse to measure them")
        else:
            await load(engine, target, args.lots, args.seed)
        lots, edges = await print_counts(engine)
        if lots < args.lots or edges < 3 * lots:
            print(f"WARNING: expected >= {args.lots:,} lots and >= 3 edges per lot")
        sm = create_sessionmaker(engine)
        ok = await measure(engine, sm, target.backend, args)
    finally:
        await engine.dispose()
        await cleanup_target(target, args.keep)
    return 0 if ok else 1


async def measure(
    engine: AsyncEngine,
    sm: async_sessionmaker[AsyncSession],
    backend: str,
    args: argparse.Namespace,
) -> bool:
    rng = random.Random(args.seed + 1)
    repeat = args.repeat
    recall_repeat = args.recall_repeat or (repeat if repeat < 10 else 10)
    warmup = max(3, min(20, repeat // 10))

    packs = await fetch_lots(sm, await sample_ids(sm, MATERIAL.c.kind == "device", repeat, rng))
    # Received monomer lots that were used (a where-used trace of unused stock is trivial).
    raw_where = (
        (MATERIAL.c.kind == "monomer")
        & (LOT.c.origin == "received")
        & LOT.c.lot_number.not_like("SILO%")
        & exists().where(repo.EDGE.c.parent_lot_id == LOT.c.id)
    )
    raws = await fetch_lots(sm, await sample_ids(sm, raw_where, repeat, rng))
    silo_ids = await sample_ids(sm, LOT.c.lot_number == RECALL_SILO, 1, rng)
    silo = (await fetch_lots(sm, silo_ids))[0]

    async with sm() as session:
        for number, _, _ in (*MONOMER_SILOS, RESIN_SILO):
            found = (
                await session.execute(select(Lot).where(col(Lot.lot_number) == number))
            ).scalar_one()
            reached = (await recall_impact(session, found)).finished_lot_count
            print(f"silo {number}: reaches {reached:,} finished lots")
        finished = (await recall_impact(session, silo)).finished_lot_count
        walked = await walked_finished(session, silo.id)
        sizes = [
            len((await trace(session, x, d, MAX_DEPTH)).nodes)
            for x, d in ((packs[0], Direction.backward), (raws[0], Direction.forward))
        ]
    check = "equal" if walked == finished else "DIFFERENT"
    print(f"recall of {RECALL_SILO} from lot_reach: {finished:,} finished lots; from a recursive")
    print(f"walk of the edges: {walked:,} ({check})")
    print(f"sample sizes: backward trace {sizes[0]} lots, forward trace {sizes[1]} lots")

    backward = trace_subject("backward trace, pack lot, full depth", Direction.backward)
    forward = trace_subject("forward trace, raw monomer lot", Direction.forward)
    recall = recall_subject(f"recall impact, silo {RECALL_SILO}")
    print(f"machine speed: {host_speed_ms():.1f} ms of CPU per Argon2id verify (standard profile)")
    t0 = time.perf_counter()
    results = [
        await measure_pair(sm, backward, packs, warmup),
        await measure_pair(sm, forward, raws, warmup),
        await measure_pair(sm, recall, [silo] * recall_repeat, min(2, recall_repeat)),
    ]
    results[2].note = f"{finished:,} finished lots"
    print(f"measured in {time.perf_counter() - t0:.1f} s")
    if finished < MIN_RECALL_FINISHED:
        print(f"WARNING: the silo reaches {finished:,} finished lots (< {MIN_RECALL_FINISHED:,})")

    print_table(results)
    ok = print_targets(backend, results, finished) and walked == finished

    if args.profile:
        for subject, lot in ((backward, packs[0]), (forward, raws[0]), (recall, silo)):
            await statement_timings(engine, sm, subject, lot)
        if backend == "postgresql":
            async with engine.connect() as conn:
                jit = (await conn.exec_driver_sql("SHOW jit")).scalar()
            print(f"\njit = {jit}")
            for subject, lot in ((backward, packs[0]), (forward, raws[0]), (recall, silo)):
                await explain(engine, subject, lot)
        await profile_call(sm, recall, silo)
    return ok


async def walked_finished(session: AsyncSession, start: uuid.UUID) -> int:
    """Finished lots downstream of (or being) ``start`` by a recursive walk of the edges - the
    answer ``lot_reach`` must give."""
    walk = repo.walk_cte("walk", "start", Direction.forward)
    stmt = (
        select(func.count())
        .select_from(
            walk.join(LOT, LOT.c.id == walk.c.lot_id).join(
                MATERIAL, MATERIAL.c.id == LOT.c.material_id
            )
        )
        .where(MATERIAL.c.gtin.is_not(None))
    )
    return int((await session.execute(stmt, {"start": start})).scalar_one())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        help="postgresql+asyncpg://... or sqlite+aiosqlite:///file (default: a fresh "
        f"PostgreSQL database {BENCH_DB} on 127.0.0.1, dropped at the end)",
    )
    parser.add_argument("--lots", type=int, default=1_000_000, help="lots to generate (minimum)")
    parser.add_argument("--repeat", type=int, default=200, help="samples per trace measurement")
    parser.add_argument(
        "--recall-repeat", type=int, help="samples of the recall measurement (default 10)"
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="measure an already loaded database")
    parser.add_argument(
        "--profile", action="store_true", help="statement timings, EXPLAIN and cProfile"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
