"""Completion of an operation with the performer's e-signature (TR-1 completeness, PROC-2 no
open deviation) and its second-person verification (AC-2, ES-5)."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, literal, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.context import AppContext
from mes.errors import Conflict, Forbidden, InvalidTransition
from mes.lot import service as lots
from mes.models import (
    CheckResult,
    Equipment,
    EquipmentStatus,
    ESignature,
    MaterialTransaction,
    Operation,
    OperationExecution,
    ParameterValue,
    SignatureMeaning,
    TransactionKind,
    WorkOrder,
)
from mes.principal import Principal
from mes.signature.schemas import SignatureInput
from mes.work import deviations, orders, rules
from mes.work.execution import (
    check_order_active,
    execution_of,
    locked,
    set_equipment_status,
    sign_operation,
)
from mes.work.materials import consumed_rows, net_quantity, plain


async def _completion_problems(
    session: AsyncSession, op: Operation, order: WorkOrder, ex: OperationExecution
) -> list[str]:
    spec = orders.op_spec(order, op.seq)
    problems: list[str] = []
    done = await _execution_facts(session, ex.id)
    for p in spec.get("parameters", []):
        if p.get("capture") != "lab" and ("parameter", p["name"]) not in done:
            problems.append(f"parameter {p['name']} not recorded")
    for c in spec.get("checks", []):
        if ("check", c["name"]) not in done:
            problems.append(f"check {c['name']} not done")
    bom = spec.get("bom", [])
    if bom:
        materials = await lots.active_materials(session, [b["material_code"] for b in bom], "bom")
        rows = await consumed_rows(session, order, execution_id=ex.id)
        for line in bom:
            m = materials[line["material_code"]]
            consumed = net_quantity([r for r in rows if r[1].material_id == m.id], line["uom"])
            _, low, high = rules.bom_window(line, order.quantity)
            if not low <= consumed <= high:
                problems.append(
                    f"{m.code}: {plain(consumed)} {line['uom']} consumed, BOM needs "
                    f"{plain(low)}..{plain(high)}"
                )
    if spec.get("reports_output") and ("output", "") not in done:
        problems.append("no output reported")
    return problems


_FACTS = union(
    select(literal("parameter"), col(ParameterValue.name)).where(
        col(ParameterValue.execution_id) == bindparam("execution_id")
    ),
    select(literal("check"), col(CheckResult.name)).where(
        col(CheckResult.execution_id) == bindparam("execution_id")
    ),
    select(literal("output"), literal("")).where(
        col(MaterialTransaction.execution_id) == bindparam("execution_id"),
        MaterialTransaction.kind == TransactionKind.produced,
    ),
)


async def _execution_facts(session: AsyncSession, execution_id: uuid.UUID) -> set[tuple[str, str]]:
    """What an execution has, in one statement: ("parameter", name) for each parameter with a
    value, ("check", name) for each check done, and ("output", "") once output is reported."""
    return {
        (kind, name) for kind, name in await session.execute(_FACTS, {"execution_id": execution_id})
    }


async def complete(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """running -> completed with the performer's e-signature: values present, checks done, BOM
    consumed within tolerance and output reported (TR-1), no open deviation (PROC-2)."""
    op, order = await locked(session, ident, expected_version)
    check_order_active(order)
    await orders.require_operation_action(session, principal, op, order, "complete")
    ex = await execution_of(session, op)
    problems = await _completion_problems(session, op, order, ex)
    if problems:
        raise Conflict(
            f"operation {order.number}/{op.seq} cannot complete: " + "; ".join(problems),
            rule="TR-1",
            problems=problems,
        )
    await deviations.require_none_open(session, order, op)
    now = ctx.clock.now()
    esig = await sign_operation(
        ctx, session, principal, op, order, ex, "completed", signature, SignatureMeaning.performed
    )
    ex.performer = principal.username
    ex.ended_at = now
    ex.completion_signature_id = esig.id
    session.add(ex)
    await orders.set_operation_status(
        ctx, session, principal, op, order, "complete", signature.comment or "completed"
    )
    unit = await session.get(Equipment, ex.equipment_id, with_for_update=True)
    assert unit is not None  # foreign key
    if unit.status == EquipmentStatus.running:  # a unit reported down meanwhile stays down
        await set_equipment_status(
            ctx,
            session,
            principal,
            unit,
            EquipmentStatus.idle,
            f"operation {order.number}/{op.seq} completed",
        )
    await orders.advance(ctx, session, principal, order)
    return op, order, esig


async def verify(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    expected_version: int | None,
    signature: SignatureInput,
) -> tuple[Operation, WorkOrder, ESignature]:
    """completed -> verified by a second person (AC-2, ES-5), where the work master asks."""
    op, order = await locked(session, ident, expected_version)
    spec = orders.op_spec(order, op.seq)
    if not spec.get("requires_verification"):
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} does not need a second-person verification",
            current_status=str(op.status),
        )
    await orders.require_operation_action(session, principal, op, order, "verify")
    ex = await execution_of(session, op, current=True)
    if principal.username in (ex.performer, ex.started_by):
        raise Forbidden("the verifier must be a different person from the performer", rule="AC-2")
    esig = await sign_operation(
        ctx, session, principal, op, order, ex, "verified", signature, SignatureMeaning.verified
    )
    ex.verifier = principal.username
    ex.verification_signature_id = esig.id
    session.add(ex)
    await orders.set_operation_status(
        ctx, session, principal, op, order, "verify", signature.comment or "verified"
    )
    await orders.advance(ctx, session, principal, order)
    return op, order, esig
