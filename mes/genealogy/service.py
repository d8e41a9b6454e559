"""Genealogy services. Edges are recorded when the work happens, in the same transaction as
the consumed and produced ledger rows of one execution (TR-1), together with the pairs they add
to the closure ``lot_reach`` that recall impact reads; outputs are always new lots, so an edge
can never close a cycle - and ``_assert_acyclic`` checks it anyway."""

from __future__ import annotations

import gc
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from itertools import repeat
from operator import attrgetter, itemgetter, neg
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.context import AppContext
from mes.errors import Conflict, InvalidInput, NotFound
from mes.genealogy import repository as repo
from mes.genealogy.repository import Direction, RecallPart, TracePart
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


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cycle collector while a result is turned into objects. A recall makes a few
    hundred thousand small objects, none in a reference cycle, and the collector's repeated
    passes over everything alive would cost more than making them. Nothing awaits inside, so
    no other task runs meanwhile; reference counting frees as usual.

    On the way out the objects made meanwhile (all still in the youngest generation) are
    moved to the oldest one (``freeze`` then ``unfreeze``: two list splices) instead of being
    scanned by the young collection that re-enabling would trigger at the next allocation;
    they are freed by reference counting once the answer has been sent. (The process keeps
    no frozen objects of its own, which ``unfreeze`` would otherwise thaw.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def unvalidated(model: type[ModelT]) -> Callable[[dict[str, Any]], ModelT]:
    """A constructor of ``model`` from a dict of every one of its fields, with values the
    database already typed.

    It makes what ``model_construct`` makes (no validation; every field set), without the
    per-field handling of defaults and aliases that such models do not have - that handling
    costs more than the rest of a 100k-lot recall. Only for models whose fields are all
    required and unaliased, without private attributes or extra fields. As every field is
    set, all instances share one fields-set: an assignment re-adds a name already in it."""
    fields = model.model_fields
    if (
        any(not f.is_required() or f.alias is not None for f in fields.values())
        or model.__private_attributes__
        or model.model_config.get("extra") == "allow"
    ):
        raise TypeError(f"{model.__name__} needs model_construct")
    every_field = set(fields)
    new = model.__new__
    put = object.__setattr__

    def make(values: dict[str, Any]) -> ModelT:
        obj = new(model)
        put(obj, "__dict__", values)
        put(obj, "__pydantic_fields_set__", every_field)
        put(obj, "__pydantic_extra__", None)
        put(obj, "__pydantic_private__", None)
        return obj

    return make


_node = unvalidated(TraceNode)
_trace_edge = unvalidated(TraceEdge)


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
    """Record parent -> child and close ``lot_reach`` over it. The edge is flushed at once, so
    the cycle check and the closure of a later edge in the same transaction walk it too."""
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
    await session.flush()
    await repo.add_reach(session, parent.id, child.id)


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
    expiry = lots.produced_expiry(m, now, (lot.expires_at for lot, _, _ in inputs))
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
    """Backward (where from, TR-2) or forward (where used, TR-3) genealogy of a lot: every lot
    reached, at its shortest depth, with its loads, and the edges among them - from one
    statement. Walking one level past the cap tells whether the cap cut anything off."""
    result = await repo.run(session, repo.trace_queries(lot.id, direction, max_depth))
    with _no_cycle_collection():
        return _trace(result, lot, direction, max_depth)


def _trace(rows: Iterable[Any], lot: Lot, direction: Direction, max_depth: int) -> Trace:
    """The trace of ``lot`` from the rows of ``repository.trace_stmt``."""
    nodes: dict[Any, tuple[Any, ...]] = {}
    loads: dict[Any, list[str]] = defaultdict(list)
    edges: list[tuple[Any, ...]] = []
    for (
        part,
        lot_id,
        depth,
        number,
        code,
        kind,
        status,
        quantity,
        uom,
        load_no,
        parent_id,
        edge_kind,
        execution_id,
    ) in rows:
        if part == TracePart.node:
            nodes[lot_id] = (depth, number, code, kind, status, quantity, uom)
        elif part == TracePart.load:
            loads[lot_id].append(load_no)
        else:
            edges.append((parent_id, lot_id, edge_kind, quantity, uom, execution_id))
    limited = any(node[0] > max_depth for node in nodes.values())
    if limited:
        nodes = {key: node for key, node in nodes.items() if node[0] <= max_depth}
    numbers = {key: node[1] for key, node in nodes.items()}
    root = nodes[lot.id]
    return Trace.model_construct(
        lot_number=root[1],
        material_code=root[2],
        direction=direction,
        max_depth=max_depth,
        depth_limited=limited,
        nodes=[
            _node(
                {
                    "lot_number": number,
                    "material_code": code,
                    "material_kind": kind,
                    "status": status,
                    "quantity": quantity,
                    "uom": uom,
                    "depth": depth,
                    "loads": sorted(loads.get(key, ())),
                }
            )
            for key, (depth, number, code, kind, status, quantity, uom) in sorted(
                nodes.items(), key=lambda item: (item[1][0], item[1][1])
            )
        ],
        edges=sorted(
            (
                _trace_edge(
                    {
                        "parent": numbers[parent],
                        "child": numbers[child],
                        "kind": kind,
                        "quantity": quantity,
                        "uom": uom,
                        "execution_id": execution_id,
                    }
                )
                for parent, child, kind, quantity, uom, execution_id in edges
                if parent in numbers and child in numbers
            ),
            key=lambda e: (e.parent, e.child),
        ),
    )


async def recall_impact(session: AsyncSession, lot: Lot) -> RecallImpact:
    """TR-3: every finished lot (a material with a GTIN) downstream of (or being) a suspect lot,
    its serials, the sterilization loads it went through and its shipments known to the MES -
    from one statement over the closure ``lot_reach``."""
    dialect = session.get_bind().dialect.name
    result = await repo.run(session, repo.recall_queries(dialect, lot.id))
    with _no_cycle_collection():
        return _recall(result, lot)


def _recall(rows: Iterable[Any], lot: Lot) -> RecallImpact:
    """The recall impact of ``lot`` from the rows of ``repository.recall_stmt``. Each lot and
    shipment is made straight from the columns the database aggregated (no per-row dict)."""
    groups: list[tuple[Any, ...]] = []
    serials: dict[str, dict[str, int]] = {}  # material code -> lot number -> serial count
    loads: list[str] = []
    shipments: list[Shipment] = []
    material_code = ""
    for (
        part,
        code,
        gtin,
        status,
        uom,
        consignee,
        numbers,
        quantities,
        counts,
        ats,
        load_nos,
    ) in rows:
        if part == RecallPart.finished:
            groups.append((code, gtin, status, uom, numbers, quantities))
        elif part == RecallPart.serials:
            serials.setdefault(code, {}).update(zip(numbers, counts, strict=True))
        elif part == RecallPart.load:
            loads = sorted(load_nos or ())
        elif part == RecallPart.shipment:
            # The ledger has shipments as negative quantities.
            shipments += map(
                Shipment,
                numbers,
                repeat(consignee),
                map(neg, quantities),
                repeat(uom),
                ats,
            )
        else:
            material_code = code
    finished: list[ImpactedLot] = []
    # In material order, so that the stable sort by lot number below breaks its ties (one
    # number in two materials) by material.
    for code, gtin, status, uom, numbers, quantities in sorted(groups, key=itemgetter(0)):
        of_code = serials.get(code)
        counts = map(of_code.get, numbers, repeat(0)) if of_code else repeat(0)
        finished += map(
            ImpactedLot,
            numbers,
            repeat(code),
            repeat(gtin),
            repeat(status),
            quantities,
            repeat(uom),
            counts,
        )
    finished.sort(key=attrgetter("lot_number"))
    shipments.sort(key=attrgetter("at", "lot_number"))
    return RecallImpact.model_construct(
        suspect_lot=lot.lot_number,
        material_code=material_code,
        finished_lots=finished,
        finished_lot_count=len(finished),
        serial_count=sum(sum(of_code.values()) for of_code in serials.values()),
        loads=loads,
        shipments=shipments,
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
