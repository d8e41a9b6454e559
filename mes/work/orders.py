"""Work orders (DOMAIN 3.1): created by planners from an approved work master version (or,
as a pilot batch, from a draft), released, held, resumed, cancelled, completed and closed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.db import held
from mes.equipment import service as equipment_service
from mes.errors import Conflict, Forbidden, InvalidTransition, NotFound
from mes.models import (
    CheckResult,
    Deviation,
    DeviationStatus,
    ESignature,
    MaterialDefinition,
    MaterialTransaction,
    Operation,
    OperationExecution,
    OperationStatus,
    ParameterValue,
    SignatureMeaning,
    WorkMaster,
    WorkMasterStatus,
    WorkOrder,
    WorkOrderStatus,
)
from mes.principal import Principal
from mes.records import bump_version, by_id_or_code, check_version, fetch_page
from mes.signature import service as signatures
from mes.work import deviations, rules
from mes.work.schemas import OperationPublic, SignedAction, WorkOrderPublic

ORDER_FIELDS = (
    "number",
    "status",
    "quantity",
    "uom",
    "lot_number",
    "priority",
    "release_at",
    "due_at",
    "is_pilot",
    "good_qty",
    "scrap_qty",
    "sampled_qty",
)


def view(order: WorkOrder) -> dict[str, Any]:
    """The canonical content of an order (what a close signature signs)."""
    return {
        "number": order.number,
        "work_master": f"{order.master_code}/{order.master_revision}",
        "status": str(order.status),
        "quantity": order.quantity,
        "uom": order.uom,
        "lot_number": order.lot_number,
        "priority": order.priority,
        "release_at": order.release_at,
        "due_at": order.due_at,
        "is_pilot": order.is_pilot,
        "good_qty": order.good_qty,
        "scrap_qty": order.scrap_qty,
        "sampled_qty": order.sampled_qty,
    }


def op_spec(order: WorkOrder, seq: int) -> dict[str, Any]:
    for spec in order.snapshot["operations"]:
        if spec["seq"] == seq:
            return dict(spec)
    raise KeyError(seq)  # pragma: no cover - operations are created from the snapshot


# --- lookups -------------------------------------------------------------------------------


async def get(session: AsyncSession, number: str, *, lock: bool = False) -> WorkOrder:
    stmt, params = by_id_or_code(WorkOrder, "number", number, lock=lock)
    found = (await session.execute(stmt, params)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"work order {number!r} does not exist")
    return found


async def locked(session: AsyncSession, number: str, expected_version: int) -> WorkOrder:
    """The order, row-locked, at the client's If-Match version (412 otherwise)."""
    order = await get(session, number, lock=True)
    check_version(order, expected_version, f"work order {order.number}")
    return order


_OPERATIONS = (
    select(Operation)
    .where(col(Operation.work_order_id) == bindparam("order_id"))
    .order_by(col(Operation.seq))
)
_OPERATIONS_LOCKED = _OPERATIONS.with_for_update()


async def operations_of(
    session: AsyncSession, order: WorkOrder, *, lock: bool = False
) -> list[Operation]:
    stmt = _OPERATIONS_LOCKED if lock else _OPERATIONS
    return list((await session.execute(stmt, {"order_id": order.id})).scalars())


_EXECUTIONS = select(OperationExecution).where(
    col(OperationExecution.id).in_(bindparam("ids", expanding=True))
)


async def operations_public(
    session: AsyncSession, pairs: Sequence[tuple[Operation, WorkOrder]]
) -> list[OperationPublic]:
    codes = await equipment_service.codes_of(
        session,
        [
            x
            for op, _ in pairs
            for x in (op.work_center_id, op.equipment_id, op.planned_equipment_id)
        ],
    )
    # Executions this session already holds (the one an action just worked on) are not read
    # again.
    executions: dict[uuid.UUID, OperationExecution] = {}
    missing: list[uuid.UUID] = []
    for op, _ in pairs:
        if op.execution_id is not None:
            ex = held(session, OperationExecution, op.execution_id)
            if ex is None:
                missing.append(op.execution_id)
            else:
                executions[op.execution_id] = ex
    if missing:
        rows = await session.execute(_EXECUTIONS, {"ids": missing})
        executions.update({e.id: e for e in rows.scalars()})
    out: list[OperationPublic] = []
    for op, order in pairs:
        spec = op_spec(order, op.seq)
        ex = executions.get(op.execution_id) if op.execution_id else None
        out.append(
            OperationPublic(
                id=op.id,
                work_order=order.number,
                seq=op.seq,
                name=op.name,
                status=OperationStatus(op.status),
                work_center_code=codes[op.work_center_id],
                equipment_code=codes.get(op.equipment_id) if op.equipment_id else None,
                planned_start=op.planned_start,
                planned_end=op.planned_end,
                planned_equipment_code=(
                    codes.get(op.planned_equipment_id) if op.planned_equipment_id else None
                ),
                needs_reschedule=op.needs_reschedule,
                reschedule_reason=op.reschedule_reason,
                is_pilot=order.is_pilot,
                priority=order.priority,
                due_at=order.due_at,
                requires_verification=bool(spec.get("requires_verification")),
                line_clearance_by=op.clearance_by,
                line_clearance_at=op.clearance_at,
                started_at=ex.started_at if ex else None,
                ended_at=ex.ended_at if ex else None,
                performer=ex.performer if ex else None,
                verifier=ex.verifier if ex else None,
                version=op.version,
            )
        )
    return out


async def public(session: AsyncSession, order: WorkOrder) -> WorkOrderPublic:
    ops = await operations_of(session, order)
    product = await session.get(MaterialDefinition, order.product_id)
    assert product is not None  # foreign key
    return WorkOrderPublic(
        number=order.number,
        product_code=product.code,
        work_master_code=order.master_code,
        work_master_version=order.master_revision,
        quantity=order.quantity,
        uom=order.uom,
        lot_number=order.lot_number,
        status=WorkOrderStatus(order.status),
        priority=order.priority,
        release_at=order.release_at,
        due_at=order.due_at,
        pilot=order.is_pilot,
        good_quantity=order.good_qty,
        scrap_quantity=order.scrap_qty,
        sampled_quantity=order.sampled_qty,
        started_at=order.started_at,
        completed_at=order.completed_at,
        closed_at=order.closed_at,
        operations=await operations_public(session, [(op, order) for op in ops]),
        version=order.version,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


async def list_orders(
    session: AsyncSession,
    *,
    status: WorkOrderStatus | None,
    product_code: str | None,
    pilot: bool | None,
    after: str | None,
    limit: int,
) -> tuple[list[WorkOrder], str | None]:
    stmt = select(WorkOrder).order_by(col(WorkOrder.number))
    if status is not None:
        stmt = stmt.where(WorkOrder.status == status)
    if pilot is not None:
        stmt = stmt.where(WorkOrder.is_pilot == pilot)
    if product_code is not None:
        stmt = stmt.join(MaterialDefinition, col(MaterialDefinition.id) == WorkOrder.product_id)
        stmt = stmt.where(MaterialDefinition.code == product_code)
    if after is not None:
        stmt = stmt.where(col(WorkOrder.number) > after)
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (rows[-1].number if more else None)


# --- audit helper --------------------------------------------------------------------------


def require_order_action(order: WorkOrder, action: str) -> WorkOrderStatus:
    """The state ``action`` leads to (DOMAIN 3.1); 409 naming the current state otherwise."""
    current = WorkOrderStatus(order.status)
    target = rules.order_target(action, current)
    if target is None:
        raise InvalidTransition(
            f"work order {order.number} is {current}; it cannot {action}",
            current_status=str(current),
        )
    return target


async def transition(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    order: WorkOrder,
    action: str,
    reason: str,
    **changes: Any,
) -> None:
    """Move an order by the DOMAIN 3.1 table (409 naming the current state otherwise)."""
    target = require_order_action(order, action)
    before = view(order)
    order.status = target
    for name, value in changes.items():
        setattr(order, name, value)
    bump_version(order, ctx.clock.now())
    session.add(order)
    await audit.record_change(
        session,
        principal,
        action=action,
        entity_type="work_order",
        entity_id=order.number,
        entity_version=order.version,
        old=before,
        new=view(order),
        fields=ORDER_FIELDS,
        reason=reason,
    )


async def set_operation_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    op: Operation,
    order: WorkOrder,
    action: str,
    reason: str,
) -> None:
    current = OperationStatus(op.status)
    target = await require_operation_action(session, principal, op, order, action)
    op.status = target
    bump_version(op, ctx.clock.now())
    session.add(op)
    await audit.record(
        session,
        principal,
        action=f"operation_{action}",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=[
            {"field": "status", "old": str(current), "new": str(target)},
            {"field": "work_order", "old": None, "new": order.number},
            {"field": "seq", "old": None, "new": op.seq},
        ],
        reason=reason,
    )


async def require_operation_action(
    session: AsyncSession, principal: Principal, op: Operation, order: WorkOrder, action: str
) -> OperationStatus:
    """The state ``action`` leads to (DOMAIN 3.2); refused and logged otherwise (AC-3)."""
    target = rules.operation_target(action, OperationStatus(op.status))
    if target is None:
        await _refuse(session, principal, op, order, action)
    return target


async def _refuse(
    session: AsyncSession, principal: Principal, op: Operation, order: WorkOrder, action: str
) -> NoReturn:
    """AC-3: an out-of-sequence action is refused and logged. Callers check the state before
    they write anything, so the refusal's audit entry is all this request commits."""
    current = OperationStatus(op.status)
    await audit.record(
        session,
        principal,
        action="refused",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=[
            {"field": "action", "old": None, "new": action},
            {"field": "status", "old": str(current), "new": str(current)},
            {"field": "work_order", "old": None, "new": order.number},
        ],
        reason=f"{action} refused: operation {order.number}/{op.seq} is {current} (AC-3)",
    )
    raise InvalidTransition(
        f"operation {order.number}/{op.seq} is {current}; it cannot {action}",
        current_status=str(current),
        rule="AC-3",
        persist=True,
    )


async def advance(
    ctx: AppContext, session: AsyncSession, principal: Principal, order: WorkOrder
) -> None:
    """waiting -> ready for the next operation once every earlier one is done."""
    for op in await operations_of(session, order, lock=True):
        status = OperationStatus(op.status)
        spec = op_spec(order, op.seq)
        if rules.operation_done(status, bool(spec.get("requires_verification"))):
            continue
        if status == OperationStatus.waiting:
            await set_operation_status(
                ctx, session, principal, op, order, "ready", "previous operations done"
            )
        return


# --- actions -------------------------------------------------------------------------------


def check_master_usable(wm: WorkMaster, pilot: bool, field: str | None = None) -> None:
    """PROC-1: production orders run an approved version, pilot batches a draft."""
    status = WorkMasterStatus(wm.status)
    if pilot and status != WorkMasterStatus.draft:
        raise Conflict(
            f"work master {wm.code}/{wm.revision} is {status}; pilot batches run draft versions",
            rule="PROC-1",
            field=field,
        )
    if not pilot and status != WorkMasterStatus.approved:
        raise Conflict(
            f"work master {wm.code}/{wm.revision} is {status}; production orders need an "
            "approved version",
            rule="PROC-1",
            field=field,
        )


async def release(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    reason: str,
) -> WorkOrder:
    """draft -> released (PROC-1: an approved master, or a draft for a pilot batch).

    WO-REL: the first operation becomes ready at once only when the order has no release date
    or the date has come. An order released ahead of its ``release_at`` (a planner releasing
    next week's work today) is released - its snapshot frozen - but its first operation stays
    ``waiting``, so nobody can start it and it is in no work center's queue until the
    background job ``release-due-orders`` makes it ready on that date."""
    order = await locked(session, number, expected_version)
    wm = await session.get(WorkMaster, order.work_master_id)
    assert wm is not None  # foreign key
    if WorkOrderStatus(order.status) == WorkOrderStatus.draft:
        check_master_usable(wm, order.is_pilot)
    await transition(ctx, session, principal, order, "release", reason)
    if order.release_at is None or order.release_at <= ctx.clock.now():
        await advance(ctx, session, principal, order)
    return order


async def cancel(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    reason: str,
) -> WorkOrder:
    """draft/released -> cancelled while nothing has been executed."""
    order = await locked(session, number, expected_version)
    await transition(ctx, session, principal, order, "cancel", reason)
    # Released orders have not started (the first start moves them to in_progress).
    for op in await operations_of(session, order, lock=True):
        await set_operation_status(ctx, session, principal, op, order, "abort", reason)
    return order


async def hold(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    reason: str,
) -> WorkOrder:
    """in_progress -> held: no operation starts or records until QA resumes it."""
    order = await locked(session, number, expected_version)
    await transition(ctx, session, principal, order, "hold", reason)
    return order


async def resume(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    data: SignedAction,
) -> tuple[WorkOrder, ESignature]:
    """held -> in_progress: QA signs, once every deviation of the order is dispositioned."""
    order = await locked(session, number, expected_version)
    require_order_action(order, "resume")
    await deviations.require_none_open(session, order, rule="PROC-2")
    esig = await _sign(ctx, session, principal, order, WorkOrderStatus.in_progress, data)
    await transition(ctx, session, principal, order, "resume", data.reason)
    return order, esig


async def complete(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    reason: str,
) -> WorkOrder:
    """in_progress -> completed when every operation is completed, verified or skipped."""
    order = await locked(session, number, expected_version)
    if WorkOrderStatus(order.status) == WorkOrderStatus.in_progress:
        for op in await operations_of(session, order):
            spec = op_spec(order, op.seq)
            if not rules.operation_done(
                OperationStatus(op.status), bool(spec.get("requires_verification"))
            ):
                raise InvalidTransition(
                    f"operation {op.seq} ({op.name}) is {op.status}; every operation must be "
                    "completed (and verified where required) first",
                    current_status=str(order.status),
                )
    await transition(
        ctx, session, principal, order, "complete", reason, completed_at=ctx.clock.now()
    )
    return order


async def close(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int,
    data: SignedAction,
) -> tuple[WorkOrder, ESignature]:
    """completed -> closed: PR-6 approval of the production record by QA who took no part in
    the work, with every deviation dispositioned and the quantities reconciled (PR-2)."""
    order = await locked(session, number, expected_version)
    require_order_action(order, "close")
    if principal.username in await participants(session, order):
        raise Forbidden(
            f"{principal.username} took part in work order {order.number} and cannot approve "
            "its record",
            rule="PR-6",
        )
    await deviations.require_none_open(session, order, rule="PR-6")
    wm = await session.get(WorkMaster, order.work_master_id)
    assert wm is not None  # foreign key
    problem = rules.reconciliation_problem(
        order.quantity,
        order.good_qty,
        order.scrap_qty,
        order.sampled_qty,
        wm.reconciliation_tolerance_pct,
    )
    if problem is not None and not await _reconciliation_dispositioned(session, order):
        await deviations.open_deviation(
            session,
            principal,
            kind="reconciliation",
            description=f"work order {order.number}: {problem}",
            now=ctx.clock.now(),
            work_order=order,
        )
        raise Conflict(
            f"quantities do not reconcile: {problem}; a deviation was opened",
            rule="PR-2",
            persist=True,
        )
    esig = await _sign(ctx, session, principal, order, WorkOrderStatus.closed, data)
    await transition(
        ctx,
        session,
        principal,
        order,
        "close",
        data.reason,
        closed_at=ctx.clock.now(),
        close_signature_id=esig.id,
    )
    return order, esig


async def participants(session: AsyncSession, order: WorkOrder) -> set[str]:
    """Everyone who did or recorded work on an order: started, performed, verified, cleared a
    line, consumed or produced material, recorded values or checks (PR-6, AC-2)."""
    people: set[str] = set()
    executions = list(
        (
            await session.execute(
                select(OperationExecution).where(OperationExecution.work_order_id == order.id)
            )
        ).scalars()
    )
    for ex in executions:
        people.update(n for n in (ex.started_by, ex.performer, ex.verifier) if n is not None)
    for op in await operations_of(session, order):
        if op.clearance_by is not None:
            people.add(op.clearance_by)
    for column, where in (
        (ParameterValue.username, ParameterValue.work_order_id == order.id),
        (CheckResult.username, CheckResult.work_order_id == order.id),
        (
            MaterialTransaction.username,
            col(MaterialTransaction.execution_id).in_([ex.id for ex in executions]),
        ),
    ):
        rows = await session.execute(select(column).where(where).distinct())
        people.update(rows.scalars())
    return people


async def _reconciliation_dispositioned(session: AsyncSession, order: WorkOrder) -> bool:
    found = await session.execute(
        select(Deviation.id).where(
            Deviation.work_order_id == order.id,
            Deviation.kind == "reconciliation",
            Deviation.status == DeviationStatus.closed,
        )
    )
    return found.first() is not None


async def _sign(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    order: WorkOrder,
    target: WorkOrderStatus,
    data: SignedAction,
) -> ESignature:
    after = dict(view(order), status=str(target))
    return await signatures.sign(
        ctx,
        session,
        principal,
        record_type="work_order",
        record_id=order.number,
        record_version=order.version + 1,
        current_version=order.version,
        content=after,
        signature=data.signature,
        allowed_meanings=frozenset({SignatureMeaning.approved}),
    )


async def _signable(session: AsyncSession, number: str) -> tuple[int, dict[str, Any]] | None:
    try:
        order = await get(session, number)
    except NotFound:
        return None
    return order.version, view(order)


signatures.register_signable("work_order", _signable)
