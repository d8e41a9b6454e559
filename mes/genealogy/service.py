"""Genealogy services. Edges are recorded when the work happens, in the same transaction as
the consumed and produced ledger rows of one execution (TR-1); outputs are always new lots,
so an edge can never close a cycle - and ``_assert_acyclic`` checks it anyway."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.context import AppContext
from mes.errors import Conflict, InvalidInput, NotFound
from mes.genealogy import repository as repo
from mes.genealogy.repository import Direction
from mes.genealogy.schemas import (
    BalanceLine,
    ExecutionBalance,
    ImpactedLot,
    MassBalance,
    MergeRequest,
    ProduceRequest,
    RecallImpact,
    Shipment,
    SplitRequest,
    Trace,
    TraceEdge,
    TraceNode,
)
from mes.ids import uuid7
from mes.lot import ledger
from mes.lot import service as lots
from mes.models import (
    EdgeKind,
    GenealogyEdge,
    Lot,
    LotOrigin,
    LotStatus,
    MaterialDefinition,
    MaterialTransaction,
    TransactionKind,
)
from mes.principal import Principal

MAX_DEPTH = 64
ModelT = TypeVar("ModelT", bound=BaseModel)


def _build(model: type[ModelT], **values: Any) -> ModelT:
    """A response model from values the database already typed; skipping re-validation keeps
    a 100k-lot recall in milliseconds of Python rather than seconds."""
    return model.model_construct(**values)


# Lots that can still be blended: not blocked by a quality decision.
BLENDABLE = frozenset({LotStatus.quarantine, LotStatus.under_test, LotStatus.released})
SPLITTABLE = frozenset(
    {
        LotStatus.quarantine,
        LotStatus.under_test,
        LotStatus.released,
        LotStatus.conditionally_released,
        LotStatus.on_hold,
    }
)


async def _assert_acyclic(
    session: AsyncSession, parents: list[uuid.UUID], child: uuid.UUID
) -> None:
    """An edge parent -> child closes a cycle iff child already reaches a parent forward."""
    if child in parents or await repo.reaches(
        session, child, Direction.forward, parents, MAX_DEPTH
    ):
        raise Conflict("this would make a lot its own ancestor", rule="TR-2")


async def _edge(
    session: AsyncSession,
    parent: Lot,
    child: Lot,
    kind: EdgeKind,
    quantity: Decimal,
    execution_id: uuid.UUID,
    at: datetime,
) -> None:
    await _assert_acyclic(session, [parent.id], child.id)
    session.add(
        GenealogyEdge(
            parent_lot_id=parent.id,
            child_lot_id=child.id,
            kind=kind,
            quantity=quantity,
            uom=parent.uom,
            execution_id=execution_id,
            at=at,
        )
    )


async def produce(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    data: ProduceRequest,
    *,
    allow_conditional: bool = False,
    kind: EdgeKind = EdgeKind.transform,
) -> tuple[uuid.UUID, list[Lot], Lot]:
    """One execution: consume the inputs, produce a new lot in quarantine, link them.

    The produced lot's expiry is its manufacture date plus the material's shelf life, but
    never later than the earliest input expiry (UDI-7; DOMAIN 7 blends)."""
    execution_id = data.execution_id or uuid7()
    m = await lots.active_material(session, data.material_code, "material_code")
    quantity = lots.convert_quantity(data.quantity, data.uom, m.base_uom, "uom")
    inputs: list[tuple[Lot, Decimal, str]] = []
    for i, ref in enumerate(data.inputs):
        try:
            lot = await lots.get_lot(session, ref.lot_number, ref.material_code, lock=True)
        except NotFound as exc:
            raise NotFound(exc.detail, field=f"inputs[{i}].lot_number") from exc
        if lot.id in {x[0].id for x in inputs}:
            raise InvalidInput(f"lot {lot.lot_number} is listed twice", field=f"inputs[{i}]")
        inputs.append((lot, ref.quantity, ref.uom))
    now = ctx.clock.now()
    expiry = lots.default_expiry(m, now)
    input_expiries = [lot.expires_at for lot, _, _ in inputs if lot.expires_at is not None]
    if input_expiries and (expiry is None or min(input_expiries) < expiry):
        expiry = min(input_expiries)
    output, _ = await lots.create_lot(
        ctx,
        session,
        principal,
        m=m,
        lot_number=data.lot_number,
        origin=LotOrigin.produced,
        status=LotStatus.quarantine,
        quantity=quantity,
        kind=TransactionKind.produced,
        reason=data.reason,
        execution_id=execution_id,
        entered=(data.quantity, data.uom),
        manufactured_at=now,
        expires_at=expiry,
    )
    for i, (lot, qty, uom) in enumerate(inputs):
        try:
            tx = await ledger.post(
                ctx,
                session,
                principal,
                lot,
                kind=TransactionKind.consumed,
                quantity=qty,
                uom=uom,
                reason=data.reason,
                execution_id=execution_id,
                allow_conditional=allow_conditional,
            )
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, field=f"inputs[{i}].{exc.field or 'uom'}") from exc
        await _edge(session, lot, output, kind, -tx.quantity, execution_id, now)
    await session.flush()
    return execution_id, [x[0] for x in inputs], output


async def split(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    parent: Lot,
    data: SplitRequest,
) -> tuple[uuid.UUID, list[Lot]]:
    """Split a lot into new lots whose disposition may diverge (DOMAIN 7). The children keep
    the parent's status, dates and supplier data; the parent is consumed by the split."""
    status = LotStatus(parent.status)
    if status not in SPLITTABLE:
        raise Conflict(
            f"lot {parent.lot_number} is {status} and cannot be split", current_status=str(status)
        )
    m = await lots.material_of(session, parent)
    execution_id = uuid7()
    now = ctx.clock.now()
    children: list[Lot] = []
    for i, part in enumerate(data.parts):
        qty = lots.convert_quantity(part.quantity, part.uom, parent.uom, f"parts[{i}].uom")
        await ledger.post(
            ctx,
            session,
            principal,
            parent,
            kind=TransactionKind.consumed,
            quantity=part.quantity,
            uom=part.uom,
            reason=data.reason,
            execution_id=execution_id,
            check_eligibility=False,
        )
        child, _ = await lots.create_lot(
            ctx,
            session,
            principal,
            m=m,
            lot_number=part.lot_number,
            origin=LotOrigin.produced,
            status=status if status != LotStatus.on_hold else LotStatus.on_hold,
            quantity=qty,
            kind=TransactionKind.produced,
            reason=data.reason,
            execution_id=execution_id,
            entered=(part.quantity, part.uom),
            supplier=parent.supplier,
            supplier_lot=parent.supplier_lot,
            coa_ref=parent.coa_ref,
            manufactured_at=parent.manufactured_at,
            expires_at=parent.expires_at,
            retest_at=parent.retest_at,
        )
        if status == LotStatus.on_hold:
            child.held_from_status = parent.held_from_status
        await _edge(session, parent, child, EdgeKind.lot_split, qty, execution_id, now)
        children.append(child)
    await session.flush()
    return execution_id, children


async def merge(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: MergeRequest
) -> tuple[uuid.UUID, list[Lot], Lot]:
    """Blend lots of one material into a new lot. The blend is released only when every
    input was released; the earliest input expiry wins (DOMAIN 7)."""
    inputs: list[Lot] = []
    for i, ref in enumerate(data.inputs):
        try:
            lot = await lots.get_lot(session, ref.lot_number, ref.material_code, lock=True)
        except NotFound as exc:
            raise NotFound(exc.detail, field=f"inputs[{i}].lot_number") from exc
        if lot.id in {x.id for x in inputs}:
            raise InvalidInput(f"lot {lot.lot_number} is listed twice", field=f"inputs[{i}]")
        if LotStatus(lot.status) not in BLENDABLE:
            raise Conflict(
                f"lot {lot.lot_number} is {lot.status} and cannot be blended",
                rule="ID-1",
                field=f"inputs[{i}]",
                current_status=str(lot.status),
            )
        if inputs and lot.material_id != inputs[0].material_id:
            raise InvalidInput(
                "a blend takes lots of one material; use production for others",
                field=f"inputs[{i}].lot_number",
            )
        if lot.remaining_qty <= 0:
            raise Conflict(f"lot {lot.lot_number} is empty", field=f"inputs[{i}]")
        inputs.append(lot)
    m = await lots.material_of(session, inputs[0])
    execution_id = uuid7()
    now = ctx.clock.now()
    total = sum((lot.remaining_qty for lot in inputs), Decimal(0))
    all_released = all(LotStatus(lot.status) == LotStatus.released for lot in inputs)
    expiries = [lot.expires_at for lot in inputs if lot.expires_at is not None]
    output, _ = await lots.create_lot(
        ctx,
        session,
        principal,
        m=m,
        lot_number=data.lot_number,
        origin=LotOrigin.produced,
        status=LotStatus.released if all_released else LotStatus.quarantine,
        quantity=total,
        kind=TransactionKind.produced,
        reason=data.reason,
        execution_id=execution_id,
        manufactured_at=now,
        expires_at=min(expiries) if expiries else None,
    )
    for lot in inputs:
        qty = lot.remaining_qty
        await ledger.post(
            ctx,
            session,
            principal,
            lot,
            kind=TransactionKind.consumed,
            quantity=qty,
            uom=lot.uom,
            reason=data.reason,
            execution_id=execution_id,
            check_eligibility=False,
        )
        await _edge(session, lot, output, EdgeKind.blend, qty, execution_id, now)
    await session.flush()
    return execution_id, inputs, output


# --- traces ------------------------------------------------------------------------------------


async def trace(session: AsyncSession, lot: Lot, direction: Direction, max_depth: int) -> Trace:
    """Backward (where from, TR-2) or forward (where used, TR-3) genealogy of a lot: the
    reached lots from the recursive query, then the edges among them. Walking one level past
    the cap tells whether the cap cut anything off."""
    rows = await repo.trace_nodes(session, lot.id, direction, max_depth + 1)
    info: dict[uuid.UUID, repo.NodeRow] = {}
    loads: dict[uuid.UUID, set[str]] = defaultdict(set)
    limited = False
    for row in rows:
        if row.depth > max_depth:
            limited = True
            continue
        info[row.lot_id] = row
        if row.load_no is not None:
            loads[row.lot_id].add(row.load_no)
    edges = await repo.edges_among(session, list(info))
    ordered = sorted(info.values(), key=lambda r: (r.depth, r.lot_number))
    root = info[lot.id]
    return Trace.model_construct(
        lot_number=root.lot_number,
        material_code=root.material_code,
        direction=direction,
        max_depth=max_depth,
        depth_limited=limited,
        nodes=[
            _build(
                TraceNode,
                lot_number=n.lot_number,
                material_code=n.material_code,
                material_kind=n.material_kind,
                status=n.status,
                quantity=n.quantity,
                uom=n.uom,
                depth=n.depth,
                loads=sorted(loads.get(n.lot_id, ())),
            )
            for n in ordered
        ],
        edges=sorted(
            (
                _build(
                    TraceEdge,
                    parent=info[e.parent_lot_id].lot_number,
                    child=info[e.child_lot_id].lot_number,
                    kind=e.kind,
                    quantity=e.quantity,
                    uom=e.uom,
                    execution_id=e.execution_id,
                )
                for e in edges
            ),
            key=lambda e: (e.parent, e.child),
        ),
    )


async def recall_impact(session: AsyncSession, lot: Lot) -> RecallImpact:
    """TR-3: every finished lot (a material with a GTIN) downstream of (or being) a suspect lot, its
    serials, the sterilization loads it went through and its shipments known to the MES -
    from one walk of the genealogy."""
    m = await lots.material_of(session, lot)
    if session.get_bind().dialect.name == "postgresql":
        # A recall walks and joins 100k+ rows: sort and hash in memory, not on disk.
        await session.execute(text("SET LOCAL work_mem = '64MB'"))
    finished = await repo.finished_downstream(session, lot.id)
    ids = [row[0] for row in finished]
    numbers = {row[0]: row[1] for row in finished}
    serials = await repo.serial_counts(session, ids)
    loads = await repo.load_numbers(session, ids)
    shipments = await repo.shipments(session, ids)
    return RecallImpact.model_construct(
        suspect_lot=lot.lot_number,
        material_code=m.code,
        finished_lots=[
            _build(
                ImpactedLot,
                lot_number=number,
                material_code=code,
                gtin=gtin,
                status=status,
                quantity=qty,
                uom=uom,
                serials=serials.get(ident, 0),
            )
            for ident, number, code, gtin, status, qty, uom in sorted(finished, key=lambda r: r[1])
        ],
        finished_lot_count=len(finished),
        serial_count=sum(serials.values()),
        loads=sorted(loads),
        shipments=[
            _build(
                Shipment,
                lot_number=numbers[lot_id],
                consignee=consignee,
                quantity=-qty,
                uom=uom,
                at=at,
            )
            for lot_id, consignee, qty, uom, at in sorted(shipments, key=lambda r: r[4])
        ],
    )


async def mass_balance(session: AsyncSession, lot: Lot) -> MassBalance:
    """Lot: remaining = in - consumed - sampled - scrapped - shipped +/- adjusted, never < 0;
    execution: inputs against outputs per unit (DOMAIN 7 mass balance)."""
    m = await lots.material_of(session, lot)
    rows = list(
        (
            await session.execute(
                select(MaterialTransaction).where(MaterialTransaction.lot_id == lot.id)
            )
        ).scalars()
    )
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for tx in rows:
        totals[str(tx.kind)] += tx.quantity
    executions = sorted(
        {tx.execution_id for tx in rows if tx.kind == TransactionKind.produced and tx.execution_id}
    )
    balances: list[ExecutionBalance] = []
    for execution_id in executions:
        members = list(
            (
                await session.execute(
                    select(MaterialTransaction, Lot, MaterialDefinition)
                    .join(Lot, col(Lot.id) == MaterialTransaction.lot_id)
                    .join(MaterialDefinition, col(MaterialDefinition.id) == Lot.material_id)
                    .where(MaterialTransaction.execution_id == execution_id)
                    .order_by(col(MaterialTransaction.seq))
                )
            ).all()
        )
        inputs = [
            BalanceLine(
                lot_number=lt.lot_number, material_code=md.code, quantity=-tx.quantity, uom=tx.uom
            )
            for tx, lt, md in members
            if tx.kind == TransactionKind.consumed
        ]
        outputs = [
            BalanceLine(
                lot_number=lt.lot_number, material_code=md.code, quantity=tx.quantity, uom=tx.uom
            )
            for tx, lt, md in members
            if tx.kind == TransactionKind.produced
        ]
        balances.append(
            ExecutionBalance(
                execution_id=execution_id,
                inputs=inputs,
                outputs=outputs,
                input_totals=_per_unit(inputs),
                output_totals=_per_unit(outputs),
            )
        )
    ledger_sum = sum(totals.values(), Decimal(0))
    return MassBalance(
        lot_number=lot.lot_number,
        material_code=m.code,
        uom=lot.uom,
        ledger=dict(sorted(totals.items())),
        remaining=lot.remaining_qty,
        balanced=ledger_sum == lot.remaining_qty and lot.remaining_qty >= 0,
        executions=balances,
    )


def _per_unit(lines: list[BalanceLine]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        out[line.uom] += line.quantity
    return dict(out)


async def record_edge(
    session: AsyncSession,
    parent: Lot,
    child: Lot,
    kind: EdgeKind,
    quantity: Decimal,
    execution_id: uuid.UUID,
    at: datetime,
) -> None:
    """An edge recorded by the execution of a work order, in its transaction (TR-1)."""
    await _edge(session, parent, child, kind, quantity, execution_id, at)
