"""Recursive genealogy queries (SQLite and PostgreSQL).

A trace walks ``genealogy_edge`` from a start lot, one level per recursion step, with a depth
cap; ``UNION`` (not ``UNION ALL``) drops rows already produced, so revisits are not expanded
twice, and the cap bounds the walk even if an edge set were ever cyclic.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Integer, Select, String, Uuid, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import CTE

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
from mes.models.base import ExactDecimal, UTCDateTime

EDGE: Any = GenealogyEdge.__table__  # type: ignore[attr-defined]
LOT: Any = Lot.__table__  # type: ignore[attr-defined]
MATERIAL: Any = MaterialDefinition.__table__  # type: ignore[attr-defined]
TX: Any = MaterialTransaction.__table__  # type: ignore[attr-defined]
LOAD: Any = SterilizationLoad.__table__  # type: ignore[attr-defined]
LOAD_ITEM: Any = LoadItem.__table__  # type: ignore[attr-defined]


class Direction(StrEnum):
    backward = "backward"
    forward = "forward"


def trace_cte(start: uuid.UUID, direction: Direction, max_depth: int) -> CTE:
    """(lot_id, depth) for the start lot and every lot reached within ``max_depth`` steps."""
    if direction == Direction.backward:
        near, far = EDGE.c.child_lot_id, EDGE.c.parent_lot_id
    else:
        near, far = EDGE.c.parent_lot_id, EDGE.c.child_lot_id
    base = select(literal(start, Uuid()).label("lot_id"), literal(0).label("depth")).cte(
        "trace", recursive=True
    )
    step = (
        select(far.label("lot_id"), (base.c.depth + 1).label("depth"))
        .select_from(base.join(EDGE, near == base.c.lot_id))
        .where(base.c.depth < max_depth)
    )
    return base.union(step)


def trace_ids_stmt(start: uuid.UUID, direction: Direction, max_depth: int) -> Select[Any]:
    """The bare recursive query: each reached lot once with its shortest depth."""
    cte = trace_cte(start, direction, max_depth)
    return select(cte.c.lot_id, func.min(cte.c.depth).label("depth")).group_by(cte.c.lot_id)


@dataclass(frozen=True)
class NodeRow:
    lot_id: uuid.UUID
    depth: int
    lot_number: str
    material_code: str
    material_kind: str
    gtin: str | None
    status: str
    quantity: Decimal
    uom: str


@dataclass(frozen=True)
class EdgeRow:
    parent_lot_id: uuid.UUID
    child_lot_id: uuid.UUID
    kind: str
    quantity: Decimal
    uom: str
    execution_id: uuid.UUID


async def trace_nodes(
    session: AsyncSession,
    start: uuid.UUID,
    direction: Direction,
    max_depth: int,
    *,
    finished_only: bool = False,
) -> list[NodeRow]:
    """Reached lots with their material, in depth order (the start lot at depth 0)."""
    ids = trace_ids_stmt(start, direction, max_depth).subquery()
    stmt = (
        select(
            ids.c.lot_id,
            ids.c.depth,
            LOT.c.lot_number,
            MATERIAL.c.code,
            MATERIAL.c.kind,
            MATERIAL.c.gtin,
            LOT.c.status,
            LOT.c.remaining_qty,
            LOT.c.uom,
        )
        .select_from(
            ids.join(LOT, LOT.c.id == ids.c.lot_id).join(
                MATERIAL, MATERIAL.c.id == LOT.c.material_id
            )
        )
        .order_by(ids.c.depth, LOT.c.lot_number)
    )
    if finished_only:
        stmt = stmt.where(MATERIAL.c.gtin.is_not(None), ids.c.depth > 0)
    result = await session.execute(stmt)
    return [NodeRow(*row) for row in result.all()]


async def trace_edges(
    session: AsyncSession, start: uuid.UUID, direction: Direction, max_depth: int
) -> list[EdgeRow]:
    """The edges walked by the trace (each once)."""
    cte = trace_cte(start, direction, max_depth)
    near = EDGE.c.child_lot_id if direction == Direction.backward else EDGE.c.parent_lot_id
    walked = (
        select(EDGE.c.id)
        .select_from(cte.join(EDGE, near == cte.c.lot_id))
        .where(cte.c.depth < max_depth)
        .distinct()
        .subquery()
    )
    stmt = select(
        EDGE.c.parent_lot_id,
        EDGE.c.child_lot_id,
        EDGE.c.kind,
        EDGE.c.quantity,
        EDGE.c.uom,
        EDGE.c.execution_id,
    ).where(EDGE.c.id.in_(select(walked.c.id)))
    return [EdgeRow(*row) for row in (await session.execute(stmt)).all()]


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
    cte = trace_cte(start, direction, max_depth)
    stmt = select(cte.c.lot_id).where(cte.c.lot_id.in_(list(targets))).limit(1)
    return (await session.execute(stmt)).first() is not None


async def loads_of(
    session: AsyncSession, lot_ids: Sequence[uuid.UUID]
) -> list[tuple[str, uuid.UUID]]:
    """(load_no, lot_id) memberships of the given lots (TR-5)."""
    if not lot_ids:
        return []
    stmt = (
        select(LOAD.c.load_no, LOAD_ITEM.c.lot_id)
        .select_from(LOAD_ITEM.join(LOAD, LOAD.c.id == LOAD_ITEM.c.load_id))
        .where(LOAD_ITEM.c.lot_id.in_(list(lot_ids)))
        .order_by(LOAD.c.load_no)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def forward_loads(
    session: AsyncSession, start: uuid.UUID, max_depth: int
) -> list[tuple[str, uuid.UUID]]:
    ids = trace_ids_stmt(start, Direction.forward, max_depth).subquery()
    stmt = (
        select(LOAD.c.load_no, LOAD_ITEM.c.lot_id)
        .select_from(
            ids.join(LOAD_ITEM, LOAD_ITEM.c.lot_id == ids.c.lot_id).join(
                LOAD, LOAD.c.id == LOAD_ITEM.c.load_id
            )
        )
        .order_by(LOAD.c.load_no)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def shipments_of_trace(
    session: AsyncSession, start: uuid.UUID, max_depth: int
) -> list[tuple[uuid.UUID, str | None, Decimal, str, Any]]:
    """(lot_id, consignee, quantity, uom, at) of shipments of lots reached forward."""
    ids = trace_ids_stmt(start, Direction.forward, max_depth).subquery()
    stmt = (
        select(TX.c.lot_id, TX.c.consignee, TX.c.quantity, TX.c.uom, TX.c.at)
        .select_from(ids.join(TX, TX.c.lot_id == ids.c.lot_id))
        .where(TX.c.kind == TransactionKind.shipped.value)
        .order_by(TX.c.at)
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in (await session.execute(stmt)).all()]


async def serial_counts_of_trace(
    session: AsyncSession, start: uuid.UUID, max_depth: int
) -> dict[uuid.UUID, int]:
    serial: Any = SerialUnit.__table__  # type: ignore[attr-defined]
    ids = trace_ids_stmt(start, Direction.forward, max_depth).subquery()
    stmt = (
        select(serial.c.lot_id, func.count())
        .select_from(ids.join(serial, serial.c.lot_id == ids.c.lot_id))
        .group_by(serial.c.lot_id)
    )
    return {row[0]: int(row[1]) for row in (await session.execute(stmt)).all()}


# --- single-statement forms used by the service ---------------------------------------------


def walk_cte(start: uuid.UUID, direction: Direction, max_depth: int) -> CTE:
    """(lot_id, depth, edge_id): like ``trace_cte`` but remembering the edge that reached
    each row, so nodes and walked edges come from one statement."""
    if direction == Direction.backward:
        near, far = EDGE.c.child_lot_id, EDGE.c.parent_lot_id
    else:
        near, far = EDGE.c.parent_lot_id, EDGE.c.child_lot_id
    base = select(
        literal(start, Uuid()).label("lot_id"),
        literal(0).label("depth"),
        literal(None, Uuid()).label("edge_id"),
    ).cte("walk", recursive=True)
    step = (
        select(far.label("lot_id"), (base.c.depth + 1).label("depth"), EDGE.c.id.label("edge_id"))
        .select_from(base.join(EDGE, near == base.c.lot_id))
        .where(base.c.depth < max_depth)
    )
    return base.union(step)


@dataclass(frozen=True)
class WalkRow:
    lot_id: uuid.UUID
    depth: int
    lot_number: str
    material_code: str
    material_kind: str
    status: str
    quantity: Decimal
    uom: str
    parent_lot_id: uuid.UUID | None
    child_lot_id: uuid.UUID | None
    edge_kind: str | None
    edge_quantity: Decimal | None
    edge_uom: str | None
    execution_id: uuid.UUID | None
    load_no: str | None


async def walk(
    session: AsyncSession, start: uuid.UUID, direction: Direction, max_depth: int
) -> list[WalkRow]:
    """Every (lot, depth, reaching edge, load) row of a trace, in one statement."""
    w = walk_cte(start, direction, max_depth)
    stmt = select(
        w.c.lot_id,
        w.c.depth,
        LOT.c.lot_number,
        MATERIAL.c.code,
        MATERIAL.c.kind,
        LOT.c.status,
        LOT.c.remaining_qty,
        LOT.c.uom,
        EDGE.c.parent_lot_id,
        EDGE.c.child_lot_id,
        EDGE.c.kind,
        EDGE.c.quantity,
        EDGE.c.uom,
        EDGE.c.execution_id,
        LOAD.c.load_no,
    ).select_from(
        w.join(LOT, LOT.c.id == w.c.lot_id)
        .join(MATERIAL, MATERIAL.c.id == LOT.c.material_id)
        .outerjoin(EDGE, EDGE.c.id == w.c.edge_id)
        .outerjoin(LOAD_ITEM, LOAD_ITEM.c.lot_id == w.c.lot_id)
        .outerjoin(LOAD, LOAD.c.id == LOAD_ITEM.c.load_id)
    )
    return [WalkRow(*tuple(row)) for row in (await session.execute(stmt)).all()]


def reached_cte(start: uuid.UUID) -> CTE:
    """Every lot downstream of ``start`` (and itself), each once: ``UNION`` on ids is both the
    duplicate filter and the cycle guard, so no depth column is needed."""
    base = select(literal(start, Uuid()).label("lot_id")).cte("reached", recursive=True)
    step = select(EDGE.c.child_lot_id.label("lot_id")).select_from(
        base.join(EDGE, EDGE.c.parent_lot_id == base.c.lot_id)
    )
    return base.union(step)


def finished_downstream_stmt(start: uuid.UUID) -> Select[Any]:
    """The bare recall query: finished lots (material with a GTIN) downstream of ``start``."""
    reached = reached_cte(start)
    return (
        select(
            LOT.c.id,
            LOT.c.lot_number,
            MATERIAL.c.code,
            MATERIAL.c.gtin,
            LOT.c.status,
            LOT.c.remaining_qty,
            LOT.c.uom,
        )
        .select_from(
            reached.join(LOT, LOT.c.id == reached.c.lot_id).join(
                MATERIAL, MATERIAL.c.id == LOT.c.material_id
            )
        )
        .where(MATERIAL.c.gtin.is_not(None))
    )


@dataclass(frozen=True)
class RecallRow:
    """One row of the recall statement: a finished lot, a load membership or a shipment."""

    row_kind: str
    lot_id: uuid.UUID
    lot_number: str | None
    material_code: str | None
    gtin: str | None
    status: str | None
    quantity: Decimal | None
    uom: str | None
    serials: int | None
    load_no: str | None
    consignee: str | None
    at: Any


async def recall_rows(session: AsyncSession, start: uuid.UUID) -> list[RecallRow]:
    """Finished lots with serial counts, their loads and their shipments in one statement
    over one walk (the CTE is referenced three times and computed once)."""
    reached = reached_cte(start)
    serial: Any = SerialUnit.__table__  # type: ignore[attr-defined]
    finished = (
        select(
            LOT.c.id,
            LOT.c.lot_number,
            MATERIAL.c.code,
            MATERIAL.c.gtin,
            LOT.c.status,
            LOT.c.remaining_qty,
            LOT.c.uom,
        )
        .select_from(
            reached.join(LOT, LOT.c.id == reached.c.lot_id).join(
                MATERIAL, MATERIAL.c.id == LOT.c.material_id
            )
        )
        .where(MATERIAL.c.gtin.is_not(None))
        .cte("finished")
    )
    null_text = literal(None, String())
    serial_count = (
        select(func.count())
        .select_from(serial)
        .where(serial.c.lot_id == finished.c.id)
        .scalar_subquery()
    )
    lots_part = select(
        literal("lot").label("row_kind"),
        finished.c.id,
        finished.c.lot_number,
        finished.c.code,
        finished.c.gtin,
        finished.c.status,
        finished.c.remaining_qty,
        finished.c.uom,
        serial_count.label("serials"),
        null_text.label("load_no"),
        null_text.label("consignee"),
        literal(None, UTCDateTime()).label("at"),
    )
    loads_part = select(
        literal("load"),
        LOAD_ITEM.c.lot_id,
        null_text,
        null_text,
        null_text,
        null_text,
        literal(None, ExactDecimal()),
        null_text,
        literal(None, Integer()),
        LOAD.c.load_no,
        null_text,
        literal(None, UTCDateTime()),
    ).select_from(
        finished.join(LOAD_ITEM, LOAD_ITEM.c.lot_id == finished.c.id).join(
            LOAD, LOAD.c.id == LOAD_ITEM.c.load_id
        )
    )
    ships_part = (
        select(
            literal("ship"),
            TX.c.lot_id,
            null_text,
            null_text,
            null_text,
            null_text,
            TX.c.quantity,
            TX.c.uom,
            literal(None, Integer()),
            null_text,
            TX.c.consignee,
            TX.c.at,
        )
        .select_from(finished.join(TX, TX.c.lot_id == finished.c.id))
        .where(TX.c.kind == TransactionKind.shipped.value)
    )
    stmt = union_all(lots_part, loads_part, ships_part)
    return [RecallRow(*row) for row in (await session.execute(stmt)).all()]
