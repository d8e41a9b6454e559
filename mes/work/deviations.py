"""Deviations: opened by the system when a value leaves its limits, a check fails or the
reconciliation does not balance (PROC-2, PR-2); closed by QA with a signed disposition."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import Conflict, InvalidTransition, NotFound
from mes.ids import uuid7
from mes.models import (
    Deviation,
    DeviationStatus,
    ESignature,
    Operation,
    SignatureMeaning,
    WorkOrder,
)
from mes.principal import Principal
from mes.records import bump_version, by_id_or_code, check_version, fetch_page
from mes.signature import service as signatures
from mes.work.schemas import DeviationClose, DeviationPublic

FIELDS = ("number", "kind", "status", "description", "disposition", "closed_by")


def view(dev: Deviation) -> dict[str, Any]:
    return {
        "number": dev.number,
        "kind": dev.kind,
        "status": str(dev.status),
        "work_order_id": dev.work_order_id,
        "operation_id": dev.operation_id,
        "description": dev.description,
        "disposition": dev.disposition,
        "closed_by": dev.closed_by,
    }


async def open_deviation(
    session: AsyncSession,
    principal: Principal,
    *,
    kind: str,
    description: str,
    now: datetime,
    work_order: WorkOrder | None,
    operation: Operation | None = None,
) -> Deviation:
    """A new open deviation, audited in the caller's transaction."""
    ident = uuid7()
    dev = Deviation(
        id=ident,
        number=f"DEV-{now:%y%m%d}-{ident.hex[-6:].upper()}",
        kind=kind,
        status=DeviationStatus.open,
        work_order_id=work_order.id if work_order else None,
        operation_id=operation.id if operation else None,
        description=description[:2000],
        opened_at=now,
        opened_by=principal.username,
        created_at=now,
        updated_at=now,
    )
    session.add(dev)
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="open",
        entity_type="deviation",
        entity_id=dev.number,
        entity_version=dev.version,
        old=None,
        new=view(dev),
        fields=FIELDS,
        reason=description[:1000],
    )
    return dev


_OPEN = select(Deviation).where(
    col(Deviation.work_order_id) == bindparam("order_id"), Deviation.status == DeviationStatus.open
)
_OPEN_OF_ORDER = _OPEN.order_by(col(Deviation.number))
_OPEN_OF_OPERATION = _OPEN.where(col(Deviation.operation_id) == bindparam("operation_id")).order_by(
    col(Deviation.number)
)


async def open_deviations(
    session: AsyncSession, work_order_id: uuid.UUID, operation_id: uuid.UUID | None = None
) -> list[Deviation]:
    if operation_id is None:
        rows = await session.execute(_OPEN_OF_ORDER, {"order_id": work_order_id})
    else:
        rows = await session.execute(
            _OPEN_OF_OPERATION, {"order_id": work_order_id, "operation_id": operation_id}
        )
    return list(rows.scalars())


async def require_none_open(
    session: AsyncSession, order: WorkOrder, op: Operation | None = None, rule: str = "PROC-2"
) -> None:
    """409 naming the open deviations of the order (or of one of its operations), if any."""
    found = await open_deviations(session, order.id, op.id if op is not None else None)
    if found:
        what = (
            f"operation {order.number}/{op.seq}" if op is not None else f"work order {order.number}"
        )
        raise Conflict(
            f"{what} has open deviations: " + ", ".join(d.number for d in found), rule=rule
        )


async def get(session: AsyncSession, number: str, *, lock: bool = False) -> Deviation:
    stmt, params = by_id_or_code(Deviation, "number", number, lock=lock)
    found = (await session.execute(stmt, params)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"deviation {number!r} does not exist")
    return found


def view_public(
    dev: Deviation, work_order: str | None, operation_seq: int | None
) -> DeviationPublic:
    return DeviationPublic(
        number=dev.number,
        kind=dev.kind,
        status=DeviationStatus(dev.status),
        work_order=work_order,
        operation_seq=operation_seq,
        description=dev.description,
        opened_at=dev.opened_at,
        opened_by=dev.opened_by,
        disposition=dev.disposition,
        closed_at=dev.closed_at,
        closed_by=dev.closed_by,
        version=dev.version,
    )


async def public(session: AsyncSession, dev: Deviation) -> DeviationPublic:
    order = await session.get(WorkOrder, dev.work_order_id) if dev.work_order_id else None
    op = await session.get(Operation, dev.operation_id) if dev.operation_id else None
    return view_public(dev, order.number if order else None, op.seq if op else None)


async def list_deviations(
    session: AsyncSession,
    *,
    status: DeviationStatus | None,
    work_order: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[Deviation], str | None]:
    stmt = select(Deviation).order_by(col(Deviation.id))
    if status is not None:
        stmt = stmt.where(Deviation.status == status)
    if work_order is not None:
        stmt = stmt.join(WorkOrder, col(WorkOrder.id) == Deviation.work_order_id).where(
            WorkOrder.number == work_order
        )
    if after is not None:
        stmt = stmt.where(col(Deviation.id) > uuid.UUID(after))
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (str(rows[-1].id) if more else None)


async def close(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    number: str,
    expected_version: int | None,
    data: DeviationClose,
) -> tuple[Deviation, ESignature]:
    """QA dispositions a deviation and signs the closure (DOMAIN 3.4)."""
    dev = await get(session, number, lock=True)
    check_version(dev, expected_version, f"deviation {dev.number}")
    if DeviationStatus(dev.status) != DeviationStatus.open:
        raise InvalidTransition(
            f"deviation {dev.number} is {dev.status}", current_status=str(dev.status)
        )
    before = view(dev)
    after = dict(
        before,
        status=str(DeviationStatus.closed),
        disposition=data.disposition,
        closed_by=principal.username,
    )
    esig = await signatures.sign(
        ctx,
        session,
        principal,
        record_type="deviation",
        record_id=dev.number,
        record_version=dev.version + 1,
        current_version=dev.version,
        content=after,
        signature=data.signature,
        allowed_meanings=frozenset({SignatureMeaning.approved}),
    )
    now = ctx.clock.now()
    dev.status = DeviationStatus.closed
    dev.disposition = data.disposition
    dev.closed_at = now
    dev.closed_by = principal.username
    dev.close_signature_id = esig.id
    bump_version(dev, now)
    session.add(dev)
    await audit.record_change(
        session,
        principal,
        action="close",
        entity_type="deviation",
        entity_id=dev.number,
        entity_version=dev.version,
        old=before,
        new=view(dev),
        fields=FIELDS,
        reason=data.disposition,
    )
    return dev, esig


async def _signable(session: AsyncSession, number: str) -> tuple[int, dict[str, Any]] | None:
    try:
        dev = await get(session, number)
    except NotFound:
        return None
    return dev.version, view(dev)


signatures.register_signable("deviation", _signable)
