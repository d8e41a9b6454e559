"""Recording on a running operation: process-parameter values kept as measured and in-process
checks (PROC-2, AC-4, PR-3); excursions and failed checks open deviations."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import Forbidden, InvalidInput
from mes.lot import service as lots
from mes.models import (
    CheckResult,
    Deviation,
    Equipment,
    Operation,
    OperationExecution,
    ParameterValue,
    WorkOrder,
)
from mes.principal import Principal, PrincipalKind
from mes.work import deviations, orders, rules
from mes.work.execution import check_recording, execution_of, get
from mes.work.schemas import (
    CheckEntry,
    CheckResultPublic,
    ParameterEntry,
    ParameterValuePublic,
    RecordRequest,
)


async def record(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    ident: str,
    data: RecordRequest,
) -> tuple[Operation, WorkOrder, list[ParameterValue], list[CheckResult]]:
    """Values are kept as measured (PROC-2); outside the action limits a deviation opens and
    blocks completion, and a critical parameter also holds the operation."""
    op, order = await get(session, ident, lock=True)
    check_recording(op, order, "values are recorded")
    ex = await execution_of(session, op)
    spec = orders.op_spec(order, op.seq)
    params = {p["name"]: p for p in spec.get("parameters", [])}
    checks = {c["name"]: c for c in spec.get("checks", [])}
    now = ctx.clock.now()
    if any(entry.source == "auto" for entry in data.parameters):
        unit = await session.get(Equipment, ex.equipment_id)
        assert unit is not None  # foreign key
        problems = equipment.usability(unit, now)
        if problems:
            raise Forbidden(
                f"automatic values come only from usable equipment; {unit.code}: "
                + ", ".join(problems),
                rule="AC-4",
            )
    values: list[ParameterValue] = []
    hold_reasons: list[str] = []
    for i, entry in enumerate(data.parameters):
        p = params.get(entry.name)
        if p is None:
            raise InvalidInput(
                f"operation {op.seq} has no parameter {entry.name!r}; it has "
                + (", ".join(sorted(params)) or "none"),
                field=f"parameters[{i}].name",
            )
        value = _parameter_value(principal, p, entry, i)
        state = rules.limit_state(p, value)
        pv = ParameterValue(
            execution_id=ex.id,
            work_order_id=order.id,
            name=entry.name,
            value=value,
            uom=p["uom"],
            entered_value=entry.value,
            entered_uom=entry.uom,
            source=entry.source,
            instrument=entry.instrument,
            limit_state=state,
            at=now,
            username=principal.username,
            reason=entry.reason,
        )
        if state == "action":
            dev = await deviations.open_deviation(
                session,
                principal,
                kind="cpp" if p.get("critical") else "parameter",
                description=(
                    f"{order.number}/{op.seq} {entry.name} = {value} {p['uom']} outside the "
                    f"action limits [{p.get('action_low')}, {p.get('action_high')}]"
                ),
                now=now,
                work_order=order,
                operation=op,
            )
            pv.deviation_id = dev.id
            if p.get("critical"):
                hold_reasons.append(f"critical parameter {entry.name} out of limits ({dev.number})")
        session.add(pv)
        values.append(pv)
    results: list[CheckResult] = []
    for i, check in enumerate(data.checks):
        results.append(await _check(ctx, session, principal, op, order, ex, checks, check, i))
    await session.flush()
    await audit.record(
        session,
        principal,
        action="record",
        entity_type="operation",
        entity_id=op.id,
        entity_version=op.version,
        changes=[
            *(
                {
                    "field": f"parameter:{v.name}",
                    "old": None,
                    "new": f"{v.value} {v.uom} ({v.limit_state})",
                }
                for v in values
            ),
            *(
                {"field": f"check:{c.name}", "old": None, "new": "pass" if c.passed else "fail"}
                for c in results
            ),
        ],
        reason=f"values recorded for {order.number}/{op.seq}",
    )
    if hold_reasons:
        await orders.set_operation_status(
            ctx, session, principal, op, order, "hold", "; ".join(hold_reasons)
        )
    return op, order, values, results


def _parameter_value(
    principal: Principal, p: dict[str, Any], entry: ParameterEntry, i: int
) -> Decimal:
    if entry.source == "auto" and principal.kind != PrincipalKind.machine:
        raise Forbidden(
            "automatic values come only from registered equipment (API key)",
            rule="AC-4",
            field=f"parameters[{i}].source",
        )
    if p.get("capture") == "auto" and entry.source == "manual" and not entry.reason:
        raise InvalidInput(
            f"{entry.name} is captured automatically; a manual value needs a reason",
            rule="AC-4",
            field=f"parameters[{i}].reason",
        )
    if p.get("capture") == "lab":
        raise InvalidInput(
            f"{entry.name} is a laboratory result; it is entered in the lab, not on the floor",
            field=f"parameters[{i}].name",
        )
    return lots.convert_quantity(entry.value, entry.uom, p["uom"], f"parameters[{i}].uom")


async def _check(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    op: Operation,
    order: WorkOrder,
    ex: OperationExecution,
    checks: dict[str, Any],
    entry: CheckEntry,
    i: int,
) -> CheckResult:
    if entry.name not in checks:
        raise InvalidInput(
            f"operation {op.seq} has no check {entry.name!r}; it has "
            + (", ".join(sorted(checks)) or "none"),
            field=f"checks[{i}].name",
        )
    now = ctx.clock.now()
    result = CheckResult(
        execution_id=ex.id,
        work_order_id=order.id,
        name=entry.name,
        passed=entry.passed,
        note=entry.note,
        instrument=entry.instrument,
        at=now,
        username=principal.username,
    )
    if not entry.passed:
        dev = await deviations.open_deviation(
            session,
            principal,
            kind="check",
            description=f"{order.number}/{op.seq} check {entry.name} failed"
            + (f": {entry.note}" if entry.note else ""),
            now=now,
            work_order=order,
            operation=op,
        )
        result.deviation_id = dev.id
    session.add(result)
    return result


async def deviation_numbers(
    session: AsyncSession, ids: list[uuid.UUID | None]
) -> dict[uuid.UUID, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(Deviation.id, Deviation.number).where(col(Deviation.id).in_(wanted))
    )
    return {row.id: row.number for row in rows}


def value_public(v: ParameterValue, numbers: dict[uuid.UUID, str]) -> ParameterValuePublic:
    return ParameterValuePublic(
        id=v.id,
        name=v.name,
        value=v.value.quantize(Decimal("0.000001")),
        uom=v.uom,
        source=v.source,
        instrument=v.instrument,
        limit_state=v.limit_state,
        deviation=numbers.get(v.deviation_id) if v.deviation_id else None,
        at=v.at,
        username=v.username,
    )


def check_public(c: CheckResult, numbers: dict[uuid.UUID, str]) -> CheckResultPublic:
    return CheckResultPublic(
        name=c.name,
        passed=c.passed,
        note=c.note,
        instrument=c.instrument,
        deviation=numbers.get(c.deviation_id) if c.deviation_id else None,
        at=c.at,
        username=c.username,
    )
