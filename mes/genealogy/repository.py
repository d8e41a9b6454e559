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

from sqlalchemy import Select, Uuid, func, literal, select
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
