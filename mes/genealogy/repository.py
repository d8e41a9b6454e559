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

from sqlalchemy import (
    ARRAY,
    Select,
    Uuid,
    any_,
    bindparam,
    func,
    literal,
    literal_column,
    select,
)
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


# --- single-statement forms used by the service ---------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    lot_id: uuid.UUID
    depth: int
    lot_number: str
    material_code: str
    material_kind: str
    status: str
    quantity: Decimal
    uom: str
    load_no: str | None


@dataclass(frozen=True)
class EdgeRow:
    parent_lot_id: uuid.UUID
    child_lot_id: uuid.UUID
    kind: str
    quantity: Decimal
    uom: str
    execution_id: uuid.UUID


async def trace_nodes(
    session: AsyncSession, start: uuid.UUID, direction: Direction, max_depth: int
) -> list[NodeRow]:
    """Each reached lot once, at its shortest depth, with material and load memberships."""
    ids = trace_ids_stmt(start, direction, max_depth).subquery()
    stmt = select(
        ids.c.lot_id,
        ids.c.depth,
        LOT.c.lot_number,
        MATERIAL.c.code,
        MATERIAL.c.kind,
        LOT.c.status,
        LOT.c.remaining_qty,
        LOT.c.uom,
        LOAD.c.load_no,
    ).select_from(
        ids.join(LOT, LOT.c.id == ids.c.lot_id)
        .join(MATERIAL, MATERIAL.c.id == LOT.c.material_id)
        .outerjoin(LOAD_ITEM, LOAD_ITEM.c.lot_id == ids.c.lot_id)
        .outerjoin(LOAD, LOAD.c.id == LOAD_ITEM.c.load_id)
    )
    return [NodeRow(*tuple(row)) for row in (await session.execute(stmt)).all()]


async def edges_among(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[EdgeRow]:
    """Edges whose both ends are among ``ids`` (the edges of a traced node set)."""
    if not ids:
        return []
    stmt = select(
        EDGE.c.parent_lot_id,
        EDGE.c.child_lot_id,
        EDGE.c.kind,
        EDGE.c.quantity,
        EDGE.c.uom,
        EDGE.c.execution_id,
    )
    if session.get_bind().dialect.name == "postgresql":
        array = ARRAY(Uuid())
        stmt = stmt.where(
            EDGE.c.child_lot_id == any_(bindparam("children", list(ids), type_=array)),
            EDGE.c.parent_lot_id == any_(bindparam("parents", list(ids), type_=array)),
        )
        return [EdgeRow(*tuple(row)) for row in (await session.execute(stmt)).all()]
    wanted = set(ids)
    rows: list[EdgeRow] = []
    for i in range(0, len(ids), 900):
        chunk = stmt.where(EDGE.c.child_lot_id.in_(list(ids[i : i + 900])))
        rows.extend(
            EdgeRow(*tuple(row)) for row in (await session.execute(chunk)).all() if row[0] in wanted
        )
    return rows


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


def _any(column: Any, ids: Sequence[uuid.UUID], dialect: str) -> list[Any]:
    """``column IN ids`` as one array parameter on PostgreSQL, or chunks of bound parameters
    on SQLite (which caps the parameters of one statement)."""
    if dialect == "postgresql":
        return [column == any_(bindparam("ids", list(ids), type_=ARRAY(Uuid())))]
    return [column.in_(list(ids[i : i + 900])) for i in range(0, len(ids), 900)]


async def _rows_for(
    session: AsyncSession, stmt: Select[Any], column: Any, ids: Sequence[uuid.UUID]
) -> list[Any]:
    if not ids:
        return []
    rows: list[Any] = []
    for condition in _any(column, ids, session.get_bind().dialect.name):
        rows.extend((await session.execute(stmt.where(condition))).all())
    return rows


async def finished_downstream(session: AsyncSession, start: uuid.UUID) -> list[Any]:
    """(id, lot_number, code, gtin, status, remaining_qty, uom) of finished lots reached."""
    return list((await session.execute(finished_downstream_stmt(start))).all())


async def serial_counts(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    serial: Any = SerialUnit.__table__  # type: ignore[attr-defined]
    stmt = select(serial.c.lot_id, func.count()).group_by(serial.c.lot_id)
    return {row[0]: int(row[1]) for row in await _rows_for(session, stmt, serial.c.lot_id, ids)}


async def load_numbers(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[str]:
    stmt = (
        select(LOAD.c.load_no)
        .select_from(LOAD_ITEM.join(LOAD, LOAD.c.id == LOAD_ITEM.c.load_id))
        .distinct()
    )
    return {row[0] for row in await _rows_for(session, stmt, LOAD_ITEM.c.lot_id, ids)}


async def shipments(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Any]:
    """(lot_id, consignee, quantity, uom, at) of shipments of the given lots."""
    # A literal (not a bound parameter), so the planner can use the partial shipments index.
    stmt = select(TX.c.lot_id, TX.c.consignee, TX.c.quantity, TX.c.uom, TX.c.at).where(
        TX.c.kind == literal_column(f"'{TransactionKind.shipped.value}'")
    )
    return await _rows_for(session, stmt, TX.c.lot_id, ids)
