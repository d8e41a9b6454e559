"""Shop-floor execution of operations (DOMAIN 3.2): the operation lookups every action uses,
line clearance, start, pause, resume and release of a hold, and the e-signature of an
operation. Consumption and output are in ``materials``, completion and verification in
``completion``. Each action is one transaction with its audit entries."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from mes.audit import service as audit
from mes.context import AppContext
from mes.db import held
from mes.equipment import service as equipment
from mes.errors import Conflict, Forbidden, InvalidTransition, NotFound
from mes.ids import parse_uuid
from mes.models import (
    Equipment,
    EquipmentStatus,
    ESignature,
    Operation,
    OperationExecution,
    OperationStatus,
    Qualification,
    SignatureMeaning,
    WorkOrder,
    WorkOrderStatus,
)
from mes.principal import Principal
from mes.records import bump_version, check_version
from mes.signature import service as signatures
from mes.signature.schemas import SignatureInput
from mes.work import deviations, orders, rules
from mes.work.schemas import (
    LineClearance,
    StartRequest,
)

# The execution field a signature of this meaning fills in.
SIGNER_FIELD = {SignatureMeaning.performed: "performer", SignatureMeaning.verified: "verifier"}
ACTIVE_ORDER = frozenset({WorkOrderStatus.released, WorkOrderStatus.in_progress})


# --- lookups -------------------------------------------------------------------------------


# Every action on an operation starts here; built once (a statement object keeps its cache key).
_OPERATION = (
    select(Operation, WorkOrder, OperationExecution)
    .join(WorkOrder, col(WorkOrder.id) == Operation.work_order_id)
    .outerjoin(OperationExecution, col(OperationExecution.id) == Operation.execution_id)
    .where(col(Operation.id) == bindparam("op_id"))
)
_OPERATION_LOCKED = _OPERATION.with_for_update(of=[Operation, WorkOrder])


async def get(
    session: AsyncSession, ident: str, *, lock: bool = False
) -> tuple[Operation, WorkOrder]:
    """An operation by id, with its order; its execution, if it has one, is read along into
    the session (``execution_of``)."""
    op_id = parse_uuid(ident)
    if op_id is None:
        raise NotFound(f"operation {ident!r} does not exist; operations are addressed by id")
    stmt = _OPERATION_LOCKED if lock else _OPERATION
    row = (await session.execute(stmt, {"op_id": op_id})).first()
    if row is None:
        raise NotFound(f"operation {ident!r} does not exist")
    return row[0], row[1]


async def locked(
    session: AsyncSession, ident: str, expected_version: int | None
) -> tuple[Operation, WorkOrder]:
    """The operation and its order, row-locked, at the client's If-Match version."""
    op, order = await get(session, ident, lock=True)
    check_version(op, expected_version, f"operation {order.number}/{op.seq}")
    return op, order


async def public(session: AsyncSession, op: Operation, order: WorkOrder) -> Any:
    return (await orders.operations_public(session, [(op, order)]))[0]


async def execution_of(
    session: AsyncSession, op: Operation, *, current: bool = False
) -> OperationExecution:
    """The operation's execution. ``get`` reads it along with the operation, but a locked
    ``get`` that waited for the lock returns the locked rows as they are now and the execution
    as it was before the wait (PostgreSQL, READ COMMITTED): its id and the unit and start never
    change once set, the rest (pauses, performer, verifier) is read again with ``current``."""
    ex = (
        await session.get(OperationExecution, op.execution_id, populate_existing=current)
        if op.execution_id
        else None
    )
    if ex is None:  # pragma: no cover - running operations always have one
        raise InvalidTransition(f"operation {op.seq} has not started")
    return ex


def check_order_active(order: WorkOrder) -> None:
    status = WorkOrderStatus(order.status)
    if status not in ACTIVE_ORDER:
        raise InvalidTransition(
            f"work order {order.number} is {status}; no work can be done on it",
            current_status=str(status),
        )


def check_recording(op: Operation, order: WorkOrder, what: str) -> None:
    check_order_active(order)
    status = OperationStatus(op.status)
    if status not in rules.RECORDING:
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} is {status}; {what} only while running",
            current_status=str(status),
            rule="AC-3",
        )


@cache
def _units_stmt(by: str | None, one: bool, lock: bool) -> SelectOfScalar[Equipment]:
    """Units under the work center ``work_center_id``: ``by`` "codes" (the listed ones),
    "class" (of ``class_id``) or None (all); ``one``: only ``unit_code``, else in code order."""
    stmt = select(Equipment).where(col(Equipment.parent_id) == bindparam("work_center_id"))
    if by == "codes":
        stmt = stmt.where(col(Equipment.code).in_(bindparam("codes", expanding=True)))
    elif by == "class":
        stmt = stmt.where(col(Equipment.equipment_class_id) == bindparam("class_id"))
    if one:
        stmt = stmt.where(col(Equipment.code) == bindparam("unit_code"))
    else:
        stmt = stmt.order_by(col(Equipment.code))
    return stmt.with_for_update() if lock else stmt


async def _eligible(
    session: AsyncSession, order: WorkOrder, op: Operation
) -> tuple[str | None, dict[str, Any]]:
    """How the operation's units are chosen (see ``_units_stmt``) and the parameters."""
    spec = orders.op_spec(order, op.seq)
    params: dict[str, Any] = {"work_center_id": op.work_center_id}
    if spec.get("eligible_equipment"):
        return "codes", params | {"codes": list(spec["eligible_equipment"])}
    if spec.get("equipment_class"):
        cls = await equipment.find_class(session, spec["equipment_class"])
        return "class", params | {"class_id": cls.id if cls else None}
    return None, params


async def eligible_units(session: AsyncSession, order: WorkOrder, op: Operation) -> list[Equipment]:
    """Units that may run the operation: the listed ones, else the units of the named class
    under the work center, else every unit of the work center."""
    by, params = await _eligible(session, order, op)
    return list((await session.execute(_units_stmt(by, False, False), params)).scalars())


async def _eligible_unit(
    ctx: AppContext,
    session: AsyncSession,
    order: WorkOrder,
    op: Operation,
    code: str,
    *,
    lock: bool = False,
) -> Equipment:
    """The unit ``code`` if it may run the operation (row-locked with ``lock``); 409 PROC-3
    naming the eligible units otherwise."""
    by, params = await _eligible(session, order, op)
    unit = (
        await session.execute(_units_stmt(by, True, lock), params | {"unit_code": code})
    ).scalar_one_or_none()
    if unit is None:
        eligible = sorted(u.code for u in await eligible_units(session, order, op))
        raise Conflict(
            f"{code} may not run operation {op.seq} ({op.name}); eligible: "
            + (", ".join(eligible) or "none"),
            rule="PROC-3",
            field="equipment_code",
        )
    if order.is_pilot:
        site = await session.get(Equipment, unit.site_id) if unit.site_id else None
        if site is None or site.code not in ctx.settings.pilot_sites:
            raise Conflict(
                f"pilot batch {order.number} may run only on pilot-center equipment; {code} "
                f"is at {site.code if site else 'no site'}",
                rule="PROC-3",
                field="equipment_code",
            )
    return unit


async def set_equipment_status(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    unit: Equipment,
    target: EquipmentStatus,
    reason: str,
) -> None:
    before = unit.status
    if before == target:
        return
    unit.status = target
    bump_version(unit, ctx.clock.now())
    session.add(unit)
    await audit.record(
        session,
        principal,
        action="status",
        entity_type="equipment",
        entity_id=unit.code,
        entity_version=unit.version,
        changes=[{"field": "status", "old": before, "new": str(target)}],
        reason=reason,
    )


# --- line clearance and start ----------------------------------------------------------------


async def line_clearance(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    data: LineClearance,
) -> tuple[Operation, WorkOrder]:
    """The operator confirms the line is clear of the previous product before starting."""
    op, order = await locked(session, ident, expected_version)
    check_order_active(order)
    if OperationStatus(op.status) not in (OperationStatus.waiting, OperationStatus.ready):
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} is {op.status}; line clearance comes before "
            "the start",
            current_status=str(op.status),
        )
    unit = await _eligible_unit(ctx, session, order, op, data.equipment_code)
    now = ctx.clock.now()
    op.clearance_equipment_id = unit.id
    op.clearance_by = principal.username
    op.clearance_at = now
    op.clearance_items = list(data.items)
    bump_version(op, now)
    session.add(op)
    await audit.record(
        session,
        principal,
        action="line_clearance",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=[
            {
                "field": "line_clearance",
                "old": None,
                "new": {"equipment": unit.code, "items": data.items},
            },
            {"field": "work_order", "old": None, "new": order.number},
        ],
        reason=f"line clearance of {unit.code} confirmed",
    )
    return op, order


async def _check_qualified(
    ctx: AppContext, session: AsyncSession, principal: Principal, spec: dict[str, Any]
) -> None:
    code = spec.get("required_qualification")
    if not code:
        return
    found = (
        await session.execute(
            select(Qualification).where(
                Qualification.username == principal.username, Qualification.code == code
            )
        )
    ).scalar_one_or_none()
    if found is None or found.valid_until <= ctx.clock.now():
        state = "expired" if found is not None else "missing"
        raise Forbidden(
            f"{principal.username} is not qualified for {code} ({state}); the operation needs it",
            rule="AC-7",
        )


async def start(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    data: StartRequest,
) -> tuple[Operation, WorkOrder]:
    """ready -> running (AC-3), refused on unusable, busy or ineligible equipment (PROC-3), an
    unconfirmed line clearance, or an operator without the qualification (AC-7)."""
    op, order = await locked(session, ident, expected_version)
    check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "start")
    spec = orders.op_spec(order, op.seq)
    await _check_qualified(ctx, session, principal, spec)
    unit = await _eligible_unit(ctx, session, order, op, data.equipment_code, lock=True)
    now = ctx.clock.now()
    problems = equipment.usability(unit, now)
    if problems:
        raise Conflict(f"{unit.code} cannot be used: {', '.join(problems)}", rule="PROC-3")
    if unit.status != EquipmentStatus.idle:
        raise Conflict(
            f"{unit.code} is {unit.status}; it must be idle to start",
            rule="PROC-3",
            current_status=str(unit.status),
        )
    if op.clearance_equipment_id != unit.id:
        raise Conflict(
            f"line clearance of {unit.code} is not confirmed for operation {op.seq}",
            field="equipment_code",
        )
    room_id = unit.room_id
    if data.room_code is not None:
        room = await equipment.find(session, data.room_code)
        if room is None or room.id != unit.room_id:
            raise Conflict(
                f"{unit.code} stands in another room than {data.room_code}", field="room_code"
            )
    ex = OperationExecution(
        operation_id=op.id,
        work_order_id=order.id,
        equipment_id=unit.id,
        room_id=room_id,
        terminal=principal.terminal,
        started_at=now,
        started_by=principal.username,
    )
    session.add(ex)
    await session.flush()
    op.execution_id = ex.id
    op.equipment_id = unit.id
    op.needs_reschedule = False
    op.reschedule_reason = None
    await orders.set_operation_status(
        ctx, session, principal, op, order, "start", f"started on {unit.code}"
    )
    await set_equipment_status(
        ctx,
        session,
        principal,
        unit,
        EquipmentStatus.running,
        f"operation {order.number}/{op.seq} started",
    )
    if WorkOrderStatus(order.status) == WorkOrderStatus.released:
        await orders.transition(
            ctx, session, principal, order, "start", "first operation started", started_at=now
        )
    return op, order


async def pause(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    reason: str,
) -> tuple[Operation, WorkOrder]:
    op, order = await locked(session, ident, expected_version)
    await orders.set_operation_status(ctx, session, principal, op, order, "pause", reason)
    ex = await execution_of(session, op, current=True)
    ex.paused_at = ctx.clock.now()
    session.add(ex)
    return op, order


async def resume(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
) -> tuple[Operation, WorkOrder]:
    op, order = await locked(session, ident, expected_version)
    check_order_active(order)
    await orders.set_operation_status(ctx, session, principal, op, order, "resume", "resumed")
    ex = await execution_of(session, op, current=True)
    now = ctx.clock.now()
    if ex.paused_at is not None:
        ex.paused_min += Decimal((now - ex.paused_at).total_seconds()) / Decimal(60)
        ex.paused_at = None
    session.add(ex)
    return op, order


async def release_hold(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """held -> running: QA signs once every deviation of the operation is dispositioned."""
    op, order = await locked(session, ident, expected_version)
    check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "release_hold")
    await deviations.require_none_open(session, order, op)
    ex = await execution_of(session, op, current=True)
    esig = await sign_operation(
        ctx, session, principal, op, order, ex, "running", signature, SignatureMeaning.approved
    )
    await orders.set_operation_status(
        ctx, session, principal, op, order, "release_hold", signature.comment or "hold released"
    )
    return op, order, esig


def operation_view(op: Operation, order: WorkOrder, ex: OperationExecution) -> dict[str, Any]:
    """The canonical content of an executed operation (what its signatures sign)."""
    return {
        "work_order": order.number,
        "seq": op.seq,
        "name": op.name,
        "status": str(op.status),
        "execution_id": str(ex.id),
        "equipment_id": str(ex.equipment_id),
        "started_at": ex.started_at,
        "started_by": ex.started_by,
        "performer": ex.performer,
        "verifier": ex.verifier,
    }


async def sign_operation(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    op: Operation,
    order: WorkOrder,
    ex: OperationExecution,
    target: str,
    signature: SignatureInput,
    meaning: SignatureMeaning,
) -> ESignature:
    content = dict(operation_view(op, order, ex), status=target)
    if meaning in SIGNER_FIELD:
        content[SIGNER_FIELD[meaning]] = principal.username
    return await signatures.sign(
        ctx,
        session,
        principal,
        record_type="operation",
        record_id=str(op.id),
        record_version=op.version + 1,
        current_version=op.version,
        content=content,
        signature=signature,
        allowed_meanings=frozenset({meaning}),
    )


async def _signable(session: AsyncSession, ident: str) -> tuple[int, dict[str, Any]] | None:
    op_id = parse_uuid(ident)
    op = held(session, Operation, op_id) if op_id is not None else None
    if op is not None:  # just signed in this session: no need to read it again
        order = await session.get(WorkOrder, op.work_order_id)
        assert order is not None  # foreign key
    else:
        try:
            op, order = await get(session, ident)
        except NotFound:
            return None
    if op.execution_id is None:
        return None
    ex = await execution_of(session, op)
    return op.version, operation_view(op, order, ex)


signatures.register_signable("operation", _signable)
