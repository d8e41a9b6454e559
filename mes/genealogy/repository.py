"""Genealogy SQL (SQLite and PostgreSQL).

Traces walk ``genealogy_edge`` from a start lot with a recursive CTE, one level per recursion
step, with a depth cap; ``UNION`` (not ``UNION ALL``) drops rows already produced, so revisits
are not expanded twice, and the cap bounds the walk even if an edge set were ever cyclic.

Recall impact reads ``lot_reach``, the closure of the edges (every ancestor, descendant pair),
so a recall of a silo lot is one index range however deep and wide its descendants are. Each
edge adds its pairs in the transaction that records it (:func:`add_reach`).

A trace is one statement, and so is a recall impact (after its settings on PostgreSQL); each
returns a union of differently shaped rows tagged by a ``part`` column. The services run the
statements that :func:`trace_queries` and :func:`recall_queries` give, and so does the
benchmark, bare, to measure what the service layer adds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Dialect,
    Executable,
    Integer,
    Numeric,
    Select,
    String,
    Uuid,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import CTE, CompoundSelect
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from mes.models import (
    GenealogyEdge,
    LoadItem,
    Lot,
    MaterialDefinition,
    MaterialTransaction,
    SerialUnit,
    SterilizationLoad,
    TransactionKind,
)
from mes.models.lot import LotReach

EDGE: Any = GenealogyEdge.__table__  # type: ignore[attr-defined]
REACH: Any = LotReach.__table__  # type: ignore[attr-defined]
LOT: Any = Lot.__table__  # type: ignore[attr-defined]
MATERIAL: Any = MaterialDefinition.__table__  # type: ignore[attr-defined]
TX: Any = MaterialTransaction.__table__  # type: ignore[attr-defined]
LOAD: Any = SterilizationLoad.__table__  # type: ignore[attr-defined]
LOAD_ITEM: Any = LoadItem.__table__  # type: ignore[attr-defined]
SERIAL: Any = SerialUnit.__table__  # type: ignore[attr-defined]

Query = tuple[Executable, dict[str, Any]]

# Advisory lock key that serialises closure maintenance on PostgreSQL (see add_reach).
REACH_LOCK = 0x6C6F745F7265  # "lot_re"

# A recall joins 100k+ rows: sort and hash in memory, and plan for the lot actually asked
# about (a cached generic plan would assume an average lot's handful of descendants). With
# less memory the grouping of 100k+ finished lots sorts them on their text keys instead of
# hashing, which was measured taking a fifth of the statement; a recall is rare.
RECALL_SETTINGS = {"work_mem": "160MB", "plan_cache_mode": "force_custom_plan"}


class Direction(StrEnum):
    backward = "backward"
    forward = "forward"


# --- column types for reading -----------------------------------------------------------------


class _StoredDecimal(TypeDecorator[Decimal]):
    """An ``ExactDecimal`` column read as stored: asyncpg gives NUMERIC(20, 6) as a Decimal
    already, SQLite's quantized text becomes one. Nothing is re-quantized per value, which a
    recall would do 100k+ times."""

    impl = Numeric(20, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(20, 6))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


class _StoredTime(TypeDecorator[datetime]):
    """A ``UTCDateTime`` column read as stored: asyncpg gives aware UTC datetimes already,
    SQLite's naive UTC ones get their zone back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


QTY = _StoredDecimal()
TIME = _StoredTime()


class _Listed(TypeDecorator[list[Any]]):
    """The values a :class:`collect` gathered: PostgreSQL's array arrives as a list of items
    that need no conversion; SQLite's JSON array text is parsed and each item converted as a
    column of ``item`` would be."""

    impl = String
    cache_ok = True
    item: TypeEngine[Any]

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(self.item))
        return dialect.type_descriptor(String())

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            return None
        convert = self.item.dialect_impl(dialect).result_processor(dialect, None)

        def process(value: str | None) -> list[Any] | None:
            if value is None:
                return None
            items = json.loads(value)
            return items if convert is None else [convert(x) for x in items]

        return process


def _listed(item: TypeEngine[Any]) -> _Listed:
    listed: type[_Listed] = type(
        f"Listed{type(item).__name__}", (_Listed,), {"item": item, "cache_ok": True}
    )
    return listed()


class collect(FunctionElement[list[Any]]):
    """The values of a group as one list: ``array_agg`` on PostgreSQL, ``json_group_array``
    on SQLite. A 100k-lot recall then comes as a few rows of lists rather than 100k rows,
    which costs the driver and the cycle collector far less."""

    inherit_cache = True
    name = "collect"


@compiles(collect)
def _collect_array(element: collect, compiler: Any, **kw: Any) -> str:
    return f"array_agg({compiler.process(element.clauses, **kw)})"


@compiles(collect, "sqlite")
def _collect_json(element: collect, compiler: Any, **kw: Any) -> str:
    return f"json_group_array({compiler.process(element.clauses, **kw)})"


# --- walks -------------------------------------------------------------------------------------


def _ends(direction: Direction) -> tuple[Any, Any]:
    """(near, far) ends of an edge for a walk in ``direction``."""
    if direction == Direction.backward:
        return EDGE.c.child_lot_id, EDGE.c.parent_lot_id
    return EDGE.c.parent_lot_id, EDGE.c.child_lot_id


def trace_cte(direction: Direction) -> CTE:
    """(lot_id, depth) for the start lot (``:start``) and every lot reached within
    ``:max_depth`` steps; a lot reached by several paths appears once per distinct depth."""
    near, far = _ends(direction)
    base = select(
        bindparam("start", type_=Uuid()).label("lot_id"), literal_column("0").label("depth")
    ).cte("trace", recursive=True)
    step = (
        select(far.label("lot_id"), (base.c.depth + literal_column("1")).label("depth"))
        .select_from(base.join(EDGE, near == base.c.lot_id))
        .where(base.c.depth < bindparam("max_depth", type_=Integer()))
    )
    return base.union(step)


def walk_cte(name: str, start: str, direction: Direction) -> CTE:
    """Every lot reached from the lot bound to ``:<start>`` (and itself), each once: ``UNION``
    on ids is both the duplicate filter and the cycle guard, so no depth is needed."""
    near, far = _ends(direction)
    base = select(bindparam(start, type_=Uuid()).label("lot_id")).cte(name, recursive=True)
    step = select(far.label("lot_id")).select_from(base.join(EDGE, near == base.c.lot_id))
    return base.union(step)


async def reaches(
    session: AsyncSession,
    start: uuid.UUID,
    direction: Direction,
    targets: Sequence[uuid.UUID],
    max_depth: int,
) -> bool:
    """Whether any of ``targets`` is reached from ``start`` (the cycle check)."""
    if not targets:
        return False
    cte = trace_cte(direction)
    stmt = select(cte.c.lot_id).where(cte.c.lot_id.in_(list(targets))).limit(1)
    params = {"start": start, "max_depth": max_depth}
    return (await session.execute(stmt, params)).first() is not None


# --- closure maintenance -----------------------------------------------------------------------


@cache
def reach_insert_stmt() -> Executable:
    """The pairs a new edge ``:parent`` -> ``:child`` adds to ``lot_reach`` (SQLite): the
    parent and each of its ancestors, times the child and each of its descendants. Pairs
    already there (another path between the same lots) are skipped. PostgreSQL runs the same
    in ``mes_lot_reach_close`` (migration 0005)."""
    up = walk_cte("up", "parent", Direction.backward)
    down = walk_cte("down", "child", Direction.forward)
    pairs = select(up.c.lot_id, down.c.lot_id).select_from(up.join(down, true())).where(true())
    columns = [REACH.c.ancestor_lot_id, REACH.c.descendant_lot_id]
    return sqlite.insert(REACH).from_select(columns, pairs).on_conflict_do_nothing()


async def add_reach(session: AsyncSession, parent: uuid.UUID, child: uuid.UUID) -> None:
    """Close ``lot_reach`` over a new edge (already flushed), in the caller's transaction.

    Transactions that add edges take turns. Otherwise one adding A -> B and another adding
    C -> D, where B already reaches C, would each walk without the other's edge, and neither
    would add (A, D). SQLite already runs one writing transaction at a time: the pairs are
    added here. On PostgreSQL the deferred trigger ``mes_lot_reach_close`` (migration 0005)
    adds them inside COMMIT, after taking a transaction advisory lock (:data:`REACH_LOCK`), so
    its walks see the edges of every transaction that committed before it; the lock is
    never held across a round trip to the application. Until then, the transaction's own
    new pairs are not in ``lot_reach``: a reader in the same transaction calls
    :func:`settle_reach` first.
    """
    if session.get_bind().dialect.name == "postgresql":
        return
    await session.execute(reach_insert_stmt(), {"parent": parent, "child": child})


async def settle_reach(session: AsyncSession) -> None:
    """Make ``lot_reach`` include the edges this transaction added, before reading it in the
    same transaction: on PostgreSQL the pending closure triggers run now (taking the closure
    lock until the commit); on SQLite the pairs are there already."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET CONSTRAINTS genealogy_edge_reach IMMEDIATE"))


def reach_pairs_stmt() -> Select[Any]:
    """Every pair of ``lot_reach``, computed from the edges alone (``UNION`` expands each pair
    once however many paths lead to it)."""
    walk = select(
        EDGE.c.parent_lot_id.label("ancestor"), EDGE.c.child_lot_id.label("descendant")
    ).cte("reach", recursive=True)
    step = select(walk.c.ancestor, EDGE.c.child_lot_id).select_from(
        walk.join(EDGE, EDGE.c.parent_lot_id == walk.c.descendant)
    )
    walk = walk.union(step)
    return select(walk.c.ancestor, walk.c.descendant)


def reach_fill_stmt() -> Insert:
    """Fill an empty ``lot_reach`` from the edges: for edges loaded in bulk."""
    return insert(REACH).from_select(
        [REACH.c.ancestor_lot_id, REACH.c.descendant_lot_id], reach_pairs_stmt()
    )


# --- traces ------------------------------------------------------------------------------------


def _part(part: int, columns: dict[str, Any], **values: Any) -> list[Any]:
    """The select list of one part of a union of differently shaped rows: ``part`` first,
    then every one of ``columns`` (name -> type), from ``values`` or a typed NULL.
    PostgreSQL resolves the column types of a union pair by pair, and an untyped NULL text
    column would not meet a number."""
    return [literal_column(str(part), Integer()).label("part")] + [
        (type_coerce(values[name], type_) if name in values else cast(null(), type_)).label(name)
        for name, type_ in columns.items()
    ]


class TracePart:
    """What a row of :func:`trace_stmt` is."""

    node = 0
    load = 1
    edge = 2


TRACE_COLUMNS: dict[str, Any] = {
    "lot_id": Uuid(),
    "depth": Integer(),
    "lot_number": String(),
    "material_code": String(),
    "material_kind": String(),
    "status": String(),
    "quantity": QTY,
    "uom": String(),
    "load_no": String(),
    "parent_lot_id": Uuid(),
    "edge_kind": String(),
    "execution_id": Uuid(),
}


@cache
def trace_stmt(direction: Direction) -> CompoundSelect[Any]:
    """A walk from ``:start`` in one statement: rows of :data:`TRACE_COLUMNS` after ``part``
    (:class:`TracePart`), which says what each row is -

    - node: a reached lot at its shortest depth (up to ``:max_depth``) with its material:
      lot_id to uom;
    - load: a sterilization load a reached lot is in: lot_id, load_no;
    - edge: an edge between two reached lots: lot_id (the child), parent_lot_id, edge_kind,
      quantity, uom, execution_id.
    """
    walk = trace_cte(direction)
    # Read four times below: both databases materialise it once.
    nodes = (
        select(walk.c.lot_id, func.min(walk.c.depth).label("depth"))
        .group_by(walk.c.lot_id)
        .cte("nodes")
    )
    parent = nodes.alias("parent_node")
    lots = select(
        *_part(
            TracePart.node,
            TRACE_COLUMNS,
            lot_id=nodes.c.lot_id,
            depth=nodes.c.depth,
            lot_number=LOT.c.lot_number,
            material_code=MATERIAL.c.code,
            material_kind=MATERIAL.c.kind,
            status=LOT.c.status,
            quantity=LOT.c.remaining_qty,
            uom=LOT.c.uom,
        )
    ).select_from(
        nodes.join(LOT, LOT.c.id == nodes.c.lot_id).join(
            MATERIAL, MATERIAL.c.id == LOT.c.material_id
        )
    )
    loads = select(
        *_part(TracePart.load, TRACE_COLUMNS, lot_id=nodes.c.lot_id, load_no=LOAD.c.load_no)
    ).select_from(
        nodes.join(LOAD_ITEM, LOAD_ITEM.c.lot_id == nodes.c.lot_id).join(
            LOAD, LOAD.c.id == LOAD_ITEM.c.load_id
        )
    )
    edges = select(
        *_part(
            TracePart.edge,
            TRACE_COLUMNS,
            lot_id=EDGE.c.child_lot_id,
            parent_lot_id=EDGE.c.parent_lot_id,
            edge_kind=EDGE.c.kind,
            quantity=EDGE.c.quantity,
            uom=EDGE.c.uom,
            execution_id=EDGE.c.execution_id,
        )
    ).select_from(
        nodes.join(EDGE, EDGE.c.child_lot_id == nodes.c.lot_id).join(
            parent, parent.c.lot_id == EDGE.c.parent_lot_id
        )
    )
    return union_all(lots, loads, edges)


def trace_queries(start: uuid.UUID, direction: Direction, max_depth: int) -> list[Query]:
    """The statements of a trace: :func:`trace_stmt`, walking one level past ``max_depth`` so
    that the caller can tell whether the cap cut anything off."""
    return [(trace_stmt(direction), {"start": start, "max_depth": max_depth + 1})]


# --- recall impact -----------------------------------------------------------------------------


class RecallPart:
    """What a row of :func:`recall_stmt` is."""

    finished = 0
    serials = 1
    load = 2
    shipment = 3
    suspect = 4


RECALL_COLUMNS: dict[str, Any] = {
    "material_code": String(),
    "gtin": String(),
    "status": String(),
    "uom": String(),
    "consignee": String(),
    "lot_numbers": _listed(String()),
    "quantities": _listed(QTY),
    "serials": _listed(BigInteger()),
    "ats": _listed(TIME),
    "load_nos": _listed(String()),
}


@cache
def recall_stmt() -> CompoundSelect[Any]:
    """Everything a recall of ``:start`` lists, in one statement: the finished lots (material
    with a GTIN) downstream of it or being it, their serial counts, the loads they went
    through, their shipments, and the suspect lot's material. Rows of :data:`RECALL_COLUMNS`
    after ``part`` (:class:`RecallPart`), which says what each row is -

    - finished: the finished lots of one material, status and unit: material_code, gtin,
      status, uom, and per lot (in one order) lot_numbers and quantities;
    - serials: the serialised ones among them of one material: material_code, and per lot
      lot_numbers and serials (the count);
    - load: load_nos, every load any of them went through, once;
    - shipment: the shipments to one consignee in one unit: consignee, uom, and per shipment
      lot_numbers, quantities (as the ledger has them: negative) and ats;
    - suspect: the suspect lot's material_code.

    """
    start = bindparam("start", type_=Uuid())
    columns = (
        LOT.c.id,
        LOT.c.lot_number,
        MATERIAL.c.code,
        MATERIAL.c.gtin,
        LOT.c.status,
        LOT.c.remaining_qty,
        LOT.c.uom,
    )
    lot_material = LOT.join(MATERIAL, MATERIAL.c.id == LOT.c.material_id)
    downstream = (
        select(*columns)
        .select_from(REACH.join(lot_material, LOT.c.id == REACH.c.descendant_lot_id))
        .where(REACH.c.ancestor_lot_id == start, MATERIAL.c.gtin.is_not(None))
    )
    itself = (
        select(*columns)
        .select_from(lot_material)
        .where(LOT.c.id == start, MATERIAL.c.gtin.is_not(None))
    )
    # Read by every part below: both databases materialise it once.
    finished = union_all(downstream, itself).cte("finished")

    lots = select(
        *_part(
            RecallPart.finished,
            RECALL_COLUMNS,
            material_code=finished.c.code,
            gtin=finished.c.gtin,
            status=finished.c.status,
            uom=finished.c.uom,
            lot_numbers=collect(finished.c.lot_number),
            quantities=collect(finished.c.remaining_qty),
        )
    ).group_by(finished.c.code, finished.c.gtin, finished.c.status, finished.c.uom)
    counted = (
        select(finished.c.code, finished.c.lot_number, func.count().label("n"))
        .select_from(SERIAL.join(finished, finished.c.id == SERIAL.c.lot_id))
        .group_by(finished.c.id, finished.c.code, finished.c.lot_number)
        .subquery("counted")
    )
    serials = select(
        *_part(
            RecallPart.serials,
            RECALL_COLUMNS,
            material_code=counted.c.code,
            lot_numbers=collect(counted.c.lot_number),
            serials=collect(counted.c.n),
        )
    ).group_by(counted.c.code)
    loads = select(*_part(RecallPart.load, RECALL_COLUMNS, load_nos=collect(LOAD.c.load_no))).where(
        exists()
        .select_from(LOAD_ITEM.join(finished, finished.c.id == LOAD_ITEM.c.lot_id))
        .where(LOAD_ITEM.c.load_id == LOAD.c.id)
    )
    shipments = (
        select(
            *_part(
                RecallPart.shipment,
                RECALL_COLUMNS,
                consignee=TX.c.consignee,
                uom=TX.c.uom,
                lot_numbers=collect(finished.c.lot_number),
                quantities=collect(TX.c.quantity),
                ats=collect(TX.c.at),
            )
        )
        .select_from(finished.join(TX, TX.c.lot_id == finished.c.id))
        # A literal (not a bound parameter), so the planner can use the partial shipments
        # index.
        .where(TX.c.kind == literal_column(f"'{TransactionKind.shipped.value}'"))
        .group_by(TX.c.consignee, TX.c.uom)
    )
    suspect = (
        select(*_part(RecallPart.suspect, RECALL_COLUMNS, material_code=MATERIAL.c.code))
        .select_from(lot_material)
        .where(LOT.c.id == start)
    )
    return union_all(lots, serials, loads, shipments, suspect)


def recall_settings_stmt() -> Select[Any]:
    """Transaction-local settings for the recall statement (PostgreSQL)."""
    return select(
        *(func.set_config(name, value, true()) for name, value in RECALL_SETTINGS.items())
    )


def recall_queries(dialect: str, start: uuid.UUID) -> list[Query]:
    """The statements of a recall impact: its settings on PostgreSQL, then :func:`recall_stmt`."""
    queries: list[Query] = [(recall_stmt(), {"start": start})]
    if dialect == "postgresql":
        queries.insert(0, (recall_settings_stmt(), {}))
    return queries


async def run(session: AsyncSession, queries: Sequence[Query]) -> Result[Any]:
    """Execute ``queries`` in order; the (buffered) result of the last one."""
    result: Result[Any] | None = None
    for stmt, params in queries:
        result = await session.execute(stmt, params)
    assert result is not None
    return result
